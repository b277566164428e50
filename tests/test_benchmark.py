"""The efficacy benchmark's pipeline and result file, on a miniature setting (the real run is `hf-immunize bench`)."""

import json
from pathlib import Path

import pytest

from hf_immunize import benchmark
from hf_immunize.evaluation import AttackConfig


@pytest.fixture
def tiny_settings():
    return benchmark.BenchSettings(
        seeds=[0],
        arms=["pretrained", "sft"],
        hidden_size=32,
        pretrain_steps=2,
        align_steps=2,
        batch_size=4,
        attack=AttackConfig(n_samples=8, harmful_ratio=0.5, max_steps=1, batch_size=4, max_new_tokens=3),
        sweep_space={"learning_rate": [1e-4, 1e-3]},
        sweep_budget=2,
    )


def test_benchmark_writes_summary_keys_and_merges_arms(tiny_settings, tmp_path, monkeypatch):
    import hf_immunize.data.toy as toy

    small = toy.make_safety_world(seed=0, n_weapons=8, n_reverse=10, n_capitals=3, n_dishes=4)
    monkeypatch.setattr(toy, "make_safety_world", lambda seed=0, **kw: small)
    results = benchmark.run_safety_benchmark(tiny_settings, tmp_path / "work", log=lambda *_: None)
    out = tmp_path / "efficacy.json"
    benchmark.write_efficacy("safety", results, out)
    data = json.loads(out.read_text())
    for arm in ("pretrained", "sft"):
        entry = data["summary"]["safety"][arm]
        for key in (
            "harmful_score_before",
            "harmful_score_after",
            "harmful_score_after_worst",
            "task_accuracy_before",
            "task_accuracy_after",
        ):
            assert isinstance(entry[key], float) and 0.0 <= entry[key] <= 100.0, (arm, key)
        sweep = data["per_seed"]["safety"]["0"][arm]["sweep"]
        assert entry["harmful_score_after_worst"] == max(t["harmful_score_after"] for t in sweep["trials"])
    assert data["seeds"]["safety"] == [0]

    # A later run of one arm keeps the other arm's entries.
    only_sft = {**results, "summary": {"sft": {"harmful_score_after": 1.0}}, "per_seed": {"0": {}}}
    benchmark.write_efficacy("safety", only_sft, out)
    data = json.loads(out.read_text())
    assert data["summary"]["safety"]["sft"] == {"harmful_score_after": 1.0}
    assert "pretrained" in data["summary"]["safety"] and "pretrained" in data["per_seed"]["safety"]["0"]
    assert "| sft |" in benchmark.safety_table(data["summary"]["safety"])


def test_unknown_arm_is_rejected_before_any_training(tiny_settings, tmp_path):
    tiny_settings.arms = ["sft", "vaccine"]
    with pytest.raises(ValueError, match="vaccine"):
        benchmark.run_safety_benchmark(tiny_settings, tmp_path)
    assert not any(tmp_path.iterdir())


def test_bench_world_bios_dispatches_to_the_mlac_benchmark(tmp_path):
    """`hf-immunize bench --world bios` is MLAC's bios benchmark: here it re-summarises the committed results."""
    import shutil

    from hf_immunize.benchmark import main

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "efficacy.json"
    output, table = tmp_path / "efficacy.json", tmp_path / "bios.md"
    shutil.copy(results, output)
    main(["--world", "bios", "--from_json", "--output", str(output), "--table", str(table)])
    text = table.read_text()
    for arm in ("pretrained", "random_init", "mlac", "mlac_k0"):
        assert f"| {arm} |" in text


def _bios_dump(seed, arms, steps=(150, 600)):
    attacker = {"200": {"mean": 0.8, "std": 0.0, "trials": [{"best_accuracy": 0.85}], "majority_rate": 0.5}}
    return {
        "settings": {"seeds": [seed], "arms": arms, "attack_steps": list(steps), "seconds": 10, "command": "c"},
        "per_seed": {str(seed): {arm: {"desired_accuracy": 99.0, "attacker": attacker} for arm in arms}},
    }


def test_bios_dumps_of_parallel_runs_merge_into_one_result():
    from hf_immunize.benchmark_bios import merge_dumps

    merged = merge_dumps([_bios_dump(0, ["pretrained"]), _bios_dump(0, ["mlac"]), _bios_dump(1, ["pretrained"])])
    assert merged["seeds"] == [0, 1] and set(merged["per_seed"]["0"]) == {"pretrained", "mlac"}
    assert merged["summary"]["pretrained"]["n_seeds"] == 2 and merged["summary"]["mlac"]["n_seeds"] == 1
    assert merged["summary"]["pretrained"]["attacker_accuracy"] == 80.0
    with pytest.raises(ValueError, match="attack_steps"):
        merge_dumps([_bios_dump(0, ["pretrained"]), _bios_dump(1, ["pretrained"], steps=(150,))])
