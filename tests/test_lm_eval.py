"""Utility through lm-evaluation-harness, offline: a custom task (YAML + a local JSON Lines file) on the tiny model,
through our evaluation step (before and after the attack), onto the report and card with the lm-eval version."""

import json
from pathlib import Path

import pytest
import torch

from hf_immunize.data.toy import make_safety_world
from hf_immunize.evaluation import AttackConfig, LmEvalConfig, SafetyEvalData, measure_attack, run_lm_eval
from hf_immunize.evaluation.lm_eval_utility import check_lm_eval
from hf_immunize.evaluation.protocols import measure_saved_model

lm_eval = pytest.importorskip("lm_eval")

TASK_YAML = """task: toy_add
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "User: What is {{{{a}}}} plus {{{{b}}}}?\\nAssistant:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_toy_task(folder: Path) -> Path:
    """A multiple-choice addition task in lm-eval's YAML format, reading a local file (no download)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for a in range(4):
        for b in range(3):
            correct, k = str(a + b), (a + b) % 3
            choices = [correct, str(a + b + 2), str(a * b + 7)]
            choices = choices[k:] + choices[:k]  # the right answer at every position
            rows.append({"a": a, "b": b, "choices": choices, "label": choices.index(correct)})
    (folder / "toy_add.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "toy_add.yaml").write_text(TASK_YAML.format(data=folder / "toy_add.jsonl"))
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_toy_task(tmp_path_factory.mktemp("lm_eval_tasks"))


def _our_accuracy(model, tok, folder: Path) -> float:
    """The task's accuracy computed here: the choice with the highest summed log-probability of its tokens after the
    question (lm-eval's multiple-choice rule, continuation = " " + choice)."""
    rows = [json.loads(line) for line in (folder / "toy_add.jsonl").read_text().splitlines()]
    hits = 0
    with torch.no_grad():
        for r in rows:
            context = f"User: What is {r['a']} plus {r['b']}?\nAssistant:"
            context_ids = tok(context)["input_ids"]
            scores = []
            for choice in r["choices"]:
                whole = tok(context + " " + choice)["input_ids"]
                logits = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)  # (T, V)
                scores.append(sum(logits[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole))))
            hits += max(range(len(scores)), key=scores.__getitem__) == r["label"]
    return hits / len(rows)


def test_a_local_task_runs_offline_on_the_tiny_model(task_dir, tiny_lm, tiny_tokenizer):
    config = LmEvalConfig(tasks=["toy_add"], include_path=str(task_dir), batch_size=4)
    results = run_lm_eval(tiny_lm, tiny_tokenizer, config)
    assert set(results) == {"toy_add"} and set(results["toy_add"]) == {"acc", "acc_stderr"}
    assert results["toy_add"]["acc"] == pytest.approx(_our_accuracy(tiny_lm, tiny_tokenizer, task_dir))
    assert not tiny_lm.training
    limited = run_lm_eval(
        tiny_lm, tiny_tokenizer, LmEvalConfig(tasks=["toy_add"], include_path=str(task_dir), limit=3)
    )
    assert limited["toy_add"]["acc"] in (0.0, 1 / 3, 2 / 3, 1.0)
    described = config.describe()
    assert described["version"] == lm_eval.__version__ and described["include_path"] == task_dir.name


def test_lm_eval_runs_before_and_after_the_attack_and_reaches_the_card(task_dir, tiny_lm, tiny_tokenizer):
    world = make_safety_world(seed=0, n_weapons=8, n_reverse=20, n_capitals=5, n_dishes=4)
    data = SafetyEvalData(world.attack_harmful, world.attack_benign, world.eval_harmful, world.eval_benign)
    config = AttackConfig(
        n_samples=10, max_steps=3, learning_rate=3e-3, batch_size=5, max_new_tokens=4, max_eval_samples=4
    )
    lm = LmEvalConfig(tasks=["toy_add"], include_path=str(task_dir))
    report = measure_attack(tiny_lm, tiny_tokenizer, data, config, progress=False, lm_eval=lm)
    run = report.defended[0]
    expected_before = run_lm_eval(tiny_lm, tiny_tokenizer, lm)["toy_add"]["acc"]  # the defended model itself
    assert run["before"]["lm_eval"]["toy_add"]["acc"] == pytest.approx(expected_before)
    assert 0.0 <= run["after"]["lm_eval"]["toy_add"]["acc"] <= 1.0
    assert report.evaluation["lm_eval"]["tasks"] == ["toy_add"]
    assert report.evaluation["lm_eval"]["version"] == lm_eval.__version__
    markdown = report.to_markdown()
    assert f"utility: lm-evaluation-harness {lm_eval.__version__}, tasks `toy_add`" in markdown
    assert "**Utility (lm-evaluation-harness).**" in markdown
    assert f"| defended | toy_add | acc | {expected_before:.3f} |" in markdown


def test_unknown_tasks_and_bad_settings_fail_before_compute(task_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\).*'toy_ad' \(close: \['toy_add'\]\)"):
        check_lm_eval(LmEvalConfig(tasks=["toy_ad"], include_path=str(task_dir)))
    with pytest.raises(ValueError, match="`include_path` .* is not a folder"):
        LmEvalConfig(tasks=["toy_add"], include_path=str(tmp_path / "none"))
    for bad in (
        {"tasks": []},
        {"tasks": "toy_add"},
        {"tasks": ["a"], "limit": 0},
        {"tasks": ["a"], "num_fewshot": -1},
    ):
        with pytest.raises(ValueError, match="LmEvalConfig"):
            LmEvalConfig(**bad)
    (tmp_path / "m").mkdir()
    with pytest.raises(
        ValueError, match="lm-eval tasks run beside the fine-tuning attack .* not with method 'unlearn'"
    ):
        measure_saved_model(tmp_path / "m", "unlearn", lm_eval=["toy_add"])
