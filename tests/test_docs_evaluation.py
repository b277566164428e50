"""docs/evaluation.md runs as written, with visible substitutions: Hub ids become tiny local models, public data files
the shared samples, and the attacks are cut to a few steps. The Python blocks run in order in one namespace (as in
a notebook); the YAML block is the lm-eval task the second Python block runs; the shell blocks run `hf-immunize`."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_lm_eval import write_toy_task

from hf_immunize.testing import tiny_causal_lm, tiny_encoder_classifier

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
TINY_FLAGS = "--max_steps 2 --n_samples 10 --max_eval_samples 4 --max_new_tokens 4 --no_progress"


def _blocks(lang: str) -> list[str]:
    parts = DOC.read_text().split(f"```{lang}\n")[1:]
    return [p.split("```", 1)[0] for p in parts]


def block(lang: str, index: int) -> str:
    """The text of the `index`-th ```lang block of docs/evaluation.md, as this module runs it (tests/test_docs.py
    checks that this is the snippet on the page)."""
    return _blocks(lang)[index]


def _substituted(code: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        assert code.count(old) == 1, f"docs/evaluation.md no longer contains {old!r}: update the substitutions"
        code = code.replace(old, new)
    return code


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs_eval")
    tiny_causal_lm(save_dir=root / "llama-booster")
    tiny_causal_lm(seed=3, save_dir=root / "judge")
    tiny_encoder_classifier(num_labels=14, save_dir=root / "beaver-dam")
    return root


JUDGE_SUBSTITUTIONS = {
    'GenerativeJudge.from_preset("llama-guard-3-8b", dtype="bfloat16")': (
        'GenerativeJudge.from_preset("llama-guard-3-8b", JUDGE, max_new_tokens=4)'
    ),
    'GenerativeJudge("Qwen/Qwen2.5-7B-Instruct", protocol="rubric", dtype="bfloat16")': (
        'GenerativeJudge(JUDGE, protocol="rubric", max_new_tokens=8)'
    ),
    'ClassifierScorer.from_preset("beaver-dam-7b")': 'ClassifierScorer.from_preset("beaver-dam-7b", CLASSIFIER)',
}
MEASURE_SUBSTITUTIONS = {
    '"llama-booster"': "MODEL",
    'attack_preset("paper")': 'dataclasses.replace(attack_preset("paper"), **TINY)',
    'LmEvalConfig(tasks=["arc_easy", "hellaswag"], limit=500)': 'LmEvalConfig(tasks=["toy_add"], include_path=TASKS)',
}


def test_python_and_yaml_blocks_run_as_written(local, tmp_path, capsys):
    from hf_immunize.data.toy import make_safety_world
    from hf_immunize.testing import tiny_tokenizer

    python, yaml_blocks = _blocks("python"), _blocks("yaml")
    assert len(python) == 2 and len(yaml_blocks) == 1
    # The YAML block, its data file where the block says, is the task the second Python block runs.
    tasks = tmp_path / "tasks"
    write_toy_task(tasks)
    (tasks / "toy_add.yaml").write_text(
        yaml_blocks[0].replace("/data/tasks/toy_add.jsonl", str(tasks / "toy_add.jsonl"))
    )
    world = make_safety_world(n_weapons=8, n_reverse=20, n_capitals=5, n_dishes=4)
    namespace = {
        "dataclasses": dataclasses,
        "JUDGE": str(local / "judge"),
        "CLASSIFIER": str(local / "beaver-dam"),
        "MODEL": str(local / "llama-booster"),
        "TASKS": str(tasks),
        "TINY": {"n_samples": 10, "max_steps": 2, "batch_size": 5, "max_new_tokens": 4, "max_eval_samples": 4},
        "tokenizer": tiny_tokenizer(),
        "attack_harmful": world.attack_harmful,
        "attack_benign": world.attack_benign,
        "eval_harmful": world.eval_harmful,
        "eval_task": world.eval_benign,
    }
    exec(_substituted(block("python", 0), JUDGE_SUBSTITUTIONS), namespace)
    out = capsys.readouterr().out
    assert "GenerativeJudge('meta-llama/Llama-Guard-3-8B', protocol='guard')" in out
    assert "ClassifierScorer('PKU-Alignment/beaver-dam-7b'" in out and "'unparseable':" in out
    exec(_substituted(block("python", 1), MEASURE_SUBSTITUTIONS), namespace)
    out = capsys.readouterr().out
    assert "scored by: `guard_judge` (GenerativeJudge('meta-llama/Llama-Guard-3-8B', protocol='guard'))" in out
    assert "tasks `toy_add`" in out and "| defended | toy_add | acc |" in out


def test_shell_blocks_run_as_written(local, shared_data, tmp_path):
    evaluate_block, sweep_block = block("bash", 0), block("bash", 1)
    assert len(_blocks("bash")) == 2
    model = tmp_path / "llama-booster"
    shutil.copytree(local / "llama-booster", model)
    evaluate_cmd = _substituted(
        evaluate_block,
        {
            "beavertails_with_refusals_train.json": str(
                shared_data / "repnoise/decoding_trust_with_refusals_train.json"
            ),
            "alpaca_data.json": str(shared_data / "benign_instructions/alpaca_data_safety_only.json"),
            "advbench.csv": str(shared_data / "advbench/advbench.csv"),
            "--judge_dtype bfloat16": f"--judge_model {local / 'judge'} --judge_max_new_tokens 4 {TINY_FLAGS}",
        },
    )
    sweep_cmd = _substituted(
        sweep_block,
        {"outputs/booster-tiny": str(model), "--output_dir outputs/sweep": f"--output_dir sweep-out {TINY_FLAGS}"},
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-e", "-c", evaluate_cmd + "\n" + sweep_cmd],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    card = (model / "README.md").read_text()
    assert "GenerativeJudge('meta-llama/Llama-Guard-3-8B', protocol='guard')" in card
    assert (tmp_path / "booster-sweep.db").is_file() and (tmp_path / "sweep-out" / "sweep.json").is_file()
    assert "worst within the utility bound" in proc.stdout
