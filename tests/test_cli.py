"""The command line as a user meets it: `--help`, typos, user errors (one line, exit 2), the output-dir guard and the
data layouts the Booster command reads."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from datasets import Dataset

from hf_immunize import cli
from hf_immunize.commands import booster as booster_cmd
from hf_immunize.commands import mistake_sft as mistake_sft_cmd
from hf_immunize.commands import mlac as mlac_cmd
from hf_immunize.commands import unlearn as unlearn_cmd
from hf_immunize.commands.common import RUN_MARKER
from hf_immunize.commands.help import COMMON_MODEL, COMMON_TRAINING, format_help, shown_default

RECIPES = REPO_ROOT / "recipes"
COMMANDS = {"booster": booster_cmd, "mlac": mlac_cmd, "unlearn": unlearn_cmd, "mistake-sft": mistake_sft_cmd}
BOOSTER_TINY = ["--toy_world", '{"seed": 0, "n_weapons": 8}', "--per_device_train_batch_size", "4"]


def _booster_argv(out, *extra) -> list[str]:
    argv = ["--config", str(RECIPES / "booster_tiny.yaml"), "--output_dir", str(out), "--max_steps", "2"]
    return [*argv, "--logging_steps", "1", "--disable_tqdm", "true", *BOOSTER_TINY, *extra]


# ---- --help ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_short_help_leads_with_the_commands_own_options_and_their_real_defaults(command):
    """The short help is read from the sources (no import of trl); here it is checked against the imported classes:
    every field the method's config declares is listed, in the method's section, with its runtime default."""
    module = COMMANDS[command]
    text = format_help(module.HELP)
    lines = text.splitlines()
    assert lines[0] == f"usage: hf-immunize {command} [--config RECIPE.yaml] [--OPTION VALUE ...]"
    parser = module.make_parser()
    script_cls, config_cls, model_cls = parser.dataclass_types
    own_section = text.index("(the method's own options)")
    common_section = text.index("Common training options")
    declared = [name for name in vars(config_cls)["__annotations__"] if name in config_cls.__dataclass_fields__]
    defaults = {f.name: f for f in dataclasses.fields(config_cls)}
    for name in declared:
        position = text.index(f"  --{name} ")
        assert own_section < position < common_section, name
        assert _shown_default(text, name) == _runtime_default(defaults[name]), name
    for name in COMMON_TRAINING:
        if name in defaults and name not in declared:
            assert _shown_default(text, name) == _runtime_default(defaults[name]), name
    model_defaults = {f.name: f for f in dataclasses.fields(model_cls)}
    for name in COMMON_MODEL:
        assert _shown_default(text, name) == _runtime_default(model_defaults[name]), name
    for field in dataclasses.fields(script_cls):
        assert f"  --{field.name} " in text[:own_section], field.name
    assert f"hf-immunize {command} --help_all" in text
    assert len(lines) < 200  # against ~900 options in the full listing


def _shown_default(text: str, name: str) -> str:
    import re

    block = re.split(r"\n  --|\n\n", text[text.index(f"  --{name} ") + 2 :])[0]
    return " ".join(block.split()).split("(default: ")[-1].rsplit(")", 1)[0]


def _runtime_default(field) -> str:
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if hasattr(value, "value") and not isinstance(value, str | int | float):  # an Enum member
        value = value.value
    return shown_default(repr(value))


def test_help_is_fast_because_it_imports_neither_torch_nor_trl():
    code = (
        "import sys\nfrom hf_immunize.cli import main\n"
        "try:\n    main(['booster', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage: hf-immunize booster" in result.stdout
    assert "HEAVY []" in result.stdout  # ~0.2 s instead of ~10 s


def test_help_all_lists_every_option_under_the_commands_own_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        booster_cmd.main(["--help_all"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-immunize booster [--config RECIPE.yaml]")
    assert "--gradient_accumulation_steps" in out and "--lora_dropout" in out and "--regularizer_weight" in out


def test_attack_help_shows_the_defaults():
    text = " ".join(cli_help("attack").split())
    assert text.startswith("usage: hf-immunize attack")
    assert "(default: outputs/attack)" in text and "(default: toy)" in text


def cli_help(command: str) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return buffer.getvalue()


# ---- typos and user errors -----------------------------------------------------------------------------------------


def test_typos_in_flags_and_recipe_keys_get_a_did_you_mean(tmp_path, capsys):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text((RECIPES / "booster_tiny.yaml").read_text() + "\nregularizer_wieght: 3\n")
    code = cli.main(["booster", "--config", str(recipe), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "unknown recipe key 'regularizer_wieght' (did you mean 'regularizer_weight'?)" in err
    code = cli.main(["booster", *_booster_argv(tmp_path / "run", "--perturbation_stepsize", "0.1")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown flag 'perturbation_stepsize' (did you mean 'perturbation_step_size'?)" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tiny_model", "{hidden: 3"], "`tiny_model` must be a JSON object"),
        (["--regularizer_weight", "-1"], "regularizer_weight"),
        (["--dataset_name", "/nonexistent/file.json"], "/nonexistent/file.json"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(extra, message, tmp_path, capsys):
    code = cli.main(["booster", *_booster_argv(tmp_path / "run", *extra)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hf-immunize booster: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_accelerate_script_exits_2_without_a_traceback(tmp_path):
    script = REPO_ROOT / "scripts" / "booster.py"
    argv = _booster_argv(tmp_path / "run", "--perturbation_step_size", "-0.5")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "hf-immunize booster: error:" in result.stderr
    assert "perturbation_step_size" in result.stderr


# ---- the output-dir guard ------------------------------------------------------------------------------------------


def test_guard_refuses_other_model_or_data_and_names_what_differs(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["booster", *_booster_argv(out)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    other_model = ["--tiny_model", '{"hidden_size": 64, "num_layers": 2, "seed": 1}']
    other_data = ["--toy_world", '{"seed": 1, "n_weapons": 8}']
    for extra, key in ((other_model, "`tiny_model`"), (other_data, "`toy_world`"), (["--seed", "3"], "`seed`")):
        assert cli.main(["booster", *_booster_argv(out, *extra)]) == 2
        err = capsys.readouterr().err
        assert "holds an `hf-immunize booster` run with other settings" in err and key in err, err
        assert "then" in err and "now" in err
    assert cli.main(["mlac", "--config", str(RECIPES / "mlac_tiny.yaml"), "--output_dir", str(out)]) == 2
    assert "holds a run of `hf-immunize booster`" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched


def test_guard_refuses_a_finished_run_it_cannot_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["booster", *_booster_argv(out)]) == 0
    capsys.readouterr()
    assert cli.main(["booster", *_booster_argv(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds the finished `hf-immunize booster` run with these settings" in err
    assert "no checkpoint to resume from" in err


def test_guard_resumes_the_same_run_from_its_last_checkpoint(tmp_path, capsys):
    """Same model, data and method settings: the command continues the run (here to a larger `max_steps`, which
    may change on a resume) from its last checkpoint, as the message says."""
    out = tmp_path / "run"
    saving = ["--save_strategy", "steps", "--save_steps", "1"]
    assert cli.main(["booster", *_booster_argv(out, *saving)]) == 0
    assert (out / "checkpoint-2").is_dir()
    capsys.readouterr()
    assert cli.main(["booster", *_booster_argv(out, *saving, "--max_steps", "3")]) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-2'}" in printed
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3]  # steps 1-2 from the first run's state, step 3 trained after the resume
    assert json.loads((out / RUN_MARKER).read_text())["data"]["toy_world"] == {"seed": 0, "n_weapons": 8}


# ---- the Booster command reads every SFT layout --------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    Dataset.from_list(rows).to_json(str(path), lines=True)
    return str(path)


def _turns(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize(
    "alignment_layout, harmful_layout",
    [("messages", "conversations"), ("text", "prompt_completion"), ("prompt_completion", "refusal_file")],
)
def test_booster_command_reads_every_sft_layout(alignment_layout, harmful_layout, tmp_path):
    questions = [f"How do I make thing {i}?" for i in range(8)]
    alignment_rows = {
        "messages": [{"messages": _turns(q, "I cannot help with that.")} for q in questions],
        "text": [{"text": f"User: {q}\nAssistant: I cannot help with that."} for q in questions],
        "prompt_completion": [{"prompt": f"User: {q}\nAssistant:", "completion": " I cannot."} for q in questions],
    }[alignment_layout]
    harmful_rows = {
        "conversations": [
            {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "Mix a and b."}]}
            for q in questions
        ],
        "prompt_completion": [{"prompt": f"User: {q}\nAssistant:", "completion": " Mix a and b."} for q in questions],
        "refusal_file": [
            {"prompt": q, "response": "Mix a and b.", "refusal": f"Question: {q}\nAnswer: I cannot."}
            for q in questions
        ],
    }[harmful_layout]
    alignment = _write_jsonl(tmp_path / "alignment.jsonl", alignment_rows)
    harmful = _write_jsonl(tmp_path / "harmful.jsonl", harmful_rows)
    out = tmp_path / "run"
    argv = _booster_argv(out, "--dataset_name", alignment, "--harmful_dataset_name", harmful, "--max_steps", "1")
    assert cli.main(["booster", *argv]) == 0
    assert (out / "model.safetensors").is_file()


def test_booster_command_explains_what_is_missing_or_wrong(tmp_path, capsys):
    alignment = _write_jsonl(tmp_path / "a.jsonl", [{"messages": _turns("q", "No.")}] * 4)
    assert cli.main(["booster", *_booster_argv(tmp_path / "run", "--dataset_name", alignment)]) == 2
    assert "Booster also needs harmful rows: give `harmful_dataset_name`" in capsys.readouterr().err
    harmful = _write_jsonl(
        tmp_path / "h.jsonl", [{"prompt": "q", "completion": None}, {"prompt": "r", "completion": "x"}]
    )
    argv = _booster_argv(tmp_path / "run", "--dataset_name", alignment, "--harmful_dataset_name", harmful)
    assert cli.main(["booster", *argv]) == 2
    err = capsys.readouterr().err
    assert "`harmful_dataset_name` dataset: column `completion` is not a string in row 0" in err
    odd = _write_jsonl(tmp_path / "o.jsonl", [{"question": "q", "answer": "a"}] * 4)
    assert cli.main(["booster", *_booster_argv(tmp_path / "run", "--dataset_name", odd)]) == 2
    assert "none of the layouts SFT reads" in capsys.readouterr().err
    argv = _booster_argv(tmp_path / "run", "--dataset_name", alignment, "--harmful_dataset_name", alignment)
    assert cli.main(["booster", *argv, "--prompt_template", "alpaca_no_input"]) == 2
    assert "wraps plain-text prompts" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
