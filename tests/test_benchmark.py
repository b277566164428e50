"""The efficacy benchmarks' pipelines and result file, on miniature settings (the real runs: `hf-immunize bench`)."""

import json
from pathlib import Path

import pytest

from hf_immunize.bench import results as bench_results
from hf_immunize.bench import safety as benchmark
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
    bench_results.write_efficacy("safety", results, out, summarise=benchmark.summarise_safety)
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

    # A later run of one arm on another seed keeps the other arm's entries, and the summary covers every seed.
    sft_seed1 = {**results, "seeds": [1], "summary": {}, "per_seed": {"1": {"sft": results["per_seed"]["0"]["sft"]}}}
    bench_results.write_efficacy("safety", sft_seed1, out, summarise=benchmark.summarise_safety)
    data = json.loads(out.read_text())
    assert data["summary"]["safety"]["sft"]["n_seeds"] == 2 and data["summary"]["safety"]["pretrained"]["n_seeds"] == 1
    assert data["seeds"]["safety"] == [0, 1] and "pretrained" in data["per_seed"]["safety"]["0"]
    assert "| sft |" in benchmark.safety_table(data["summary"]["safety"])

    # A run with other settings is refused (it would mix incomparable numbers), and the file is left as it was.
    other = {**results, "settings": {**results["settings"], "align_steps": 3}}
    with pytest.raises(ValueError, match="align_steps"):
        bench_results.write_efficacy("safety", other, out, summarise=benchmark.summarise_safety)
    assert json.loads(out.read_text()) == data


def test_unknown_arm_is_rejected_before_any_training(tiny_settings, tmp_path):
    tiny_settings.arms = ["sft", "vaccine"]
    with pytest.raises(ValueError, match="vaccine"):
        benchmark.run_safety_benchmark(tiny_settings, tmp_path)
    assert not any(tmp_path.iterdir())


def test_bench_world_bios_dispatches_to_the_mlac_benchmark(tmp_path):
    """`hf-immunize bench --world bios` is MLAC's bios benchmark: here it re-summarises the committed results."""
    import shutil

    from hf_immunize.bench.cli import main

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
    from hf_immunize.bench.bios_report import merge_dumps

    merged = merge_dumps([_bios_dump(0, ["pretrained"]), _bios_dump(0, ["mlac"]), _bios_dump(1, ["pretrained"])])
    assert merged["seeds"] == [0, 1] and set(merged["per_seed"]["0"]) == {"pretrained", "mlac"}
    assert merged["summary"]["pretrained"]["n_seeds"] == 2 and merged["summary"]["mlac"]["n_seeds"] == 1
    assert merged["summary"]["pretrained"]["attacker_accuracy"] == 80.0
    with pytest.raises(ValueError, match="attack_steps"):
        merge_dumps([_bios_dump(0, ["pretrained"]), _bios_dump(1, ["pretrained"], steps=(150,))])


def test_fast_booster_arms_report_the_same_keys_as_exact_booster(tiny_settings, tmp_path, monkeypatch):
    """`booster_fast_k2` is Booster with one harmful refresh every 2 steps, summarised under the same keys."""
    import hf_immunize.data.toy as toy
    from hf_immunize.bench import safety_arms

    small = toy.make_safety_world(seed=0, n_weapons=8, n_reverse=10, n_capitals=3, n_dishes=4)
    monkeypatch.setattr(toy, "make_safety_world", lambda seed=0, **kw: small)
    refresh = []
    real_align = safety_arms.booster_align

    def spy(*args, refresh_steps=1, **kwargs):
        refresh.append(refresh_steps)
        return real_align(*args, refresh_steps=refresh_steps, **kwargs)

    monkeypatch.setitem(benchmark.ARMS, "booster", spy)
    monkeypatch.setitem(benchmark.ARMS, "booster_fast_k2", lambda *a, **k: spy(*a, refresh_steps=2, **k))
    tiny_settings.arms, tiny_settings.sweep = ["booster", "booster_fast_k2"], False
    summary = benchmark.run_safety_benchmark(tiny_settings, tmp_path / "work", log=lambda *_: None)["summary"]
    assert refresh == [1, 2]
    assert set(summary["booster_fast_k2"]) == set(summary["booster"])
    assert {"harmful_score_after", "harmful_score_after_std", "task_accuracy_after"} <= set(summary["booster"])


def test_bench_cli_names_the_worlds_and_rejects_an_unknown_one(capsys):
    from hf_immunize.bench.cli import main

    main(["--help"])
    out = capsys.readouterr().out
    assert all(world in out for world in ("safety", "bios", "book"))
    with pytest.raises(SystemExit):
        main(["--world", "moon"])
    with pytest.raises(SystemExit):
        main(["--world", "book", "--help"])
    assert "--style" in capsys.readouterr().out


def test_book_bench_writes_relative_drops_and_the_relearning_result(tmp_path, monkeypatch):
    """`summary.book.<arm>` holds familiarity_drop_rel, retain_ppl_rise_rel and the relearning attack's result; a run
    on the legacy world goes to `exploration.book.<tag>` and leaves the summary alone."""
    import copy

    from hf_immunize.bench import book

    settings = copy.deepcopy(book.SETTINGS)
    settings["pretrain"]["max_steps"] = 3
    settings["whp"]["reinforce"]["max_steps"] = 2
    settings["whp"]["finetune"]["num_train_epochs"] = 1
    settings["baselines"]["max_steps"] = 2
    monkeypatch.setattr(book, "SETTINGS", settings)
    out, table = tmp_path / "efficacy.json", tmp_path / "book.md"
    common = ["--seeds", "0", "--no_search", "--output", str(out), "--table", str(table)]
    book.main([*common, "--arms", "original", "whp", "npo", "--work_dir", str(tmp_path / "work")])
    data = json.loads(out.read_text())
    for arm in ("whp", "npo"):
        entry = data["summary"]["book"][arm]
        assert {"familiarity_drop_rel", "retain_ppl_rise_rel", "meets_goal_all_seeds"} <= set(entry)
        assert 0.0 <= entry["relearning"]["familiarity"] <= 5.0
        curve = data["per_seed"]["book"]["0"][arm]["relearning"]["curve"]
        assert [p["step"] for p in curve] == [0, 5, 10, 15, 20]  # relearn_preset("toy"): 20 steps, a point every 5
    assert data["settings"]["book"]["style"] == "fair" and "hf-immunize bench --world book" in table.read_text()

    book.main([*common, "--arms", "original", "npo", "--style", "legacy", "--exploration_tag", "old"])
    data = json.loads(out.read_text())
    assert data["exploration"]["book"]["old"]["settings"]["style"] == "legacy"
    assert data["settings"]["book"]["style"] == "fair" and "Exploration `old`" in table.read_text()


def test_spread_study_replays_the_attackers_search_exactly():
    """`--study spread` reads each grid point's result off the longest run's curve and replays the grid search: the
    trials, where it stops and what it picks must be those of `search_classifier_attack` itself."""
    from hf_immunize.bench.bios_arms import Settings
    from hf_immunize.bench.bios_spread import grid_curves, replay_search
    from hf_immunize.data.toy import BiosWorld, make_bios_world
    from hf_immunize.evaluation.classifier_attack import (
        ClassifierAttackConfig,
        ClassifierSearchSpace,
        search_classifier_attack,
    )
    from hf_immunize.testing import tiny_encoder_classifier, tiny_tokenizer

    world = make_bios_world(seed=0, n=200, scrub_pronouns=True)
    settings = Settings(attack_steps=[50, 100], attack_lr_grid=2, attack_budget=8, attack_patience=2, max_length=64)
    model, tok = tiny_encoder_classifier(num_labels=8, hidden_size=32), tiny_tokenizer()
    curves = grid_curves(model, tok, world, settings, seed=1, n=20)
    space = ClassifierSearchSpace(learning_rate=(1e-5, 1e-2), steps=(50, 100), batch_sizes=(24,), lr_grid_size=2)
    for patience in (2, 8):
        replay = replay_search(curves, settings, seed=1, patience=patience)
        search = search_classifier_attack(
            model,
            tok,
            BiosWorld.with_label(world.val1, "gender"),
            BiosWorld.with_label(world.val2, "gender"),
            n_examples=20,
            space=space,
            budget=8,
            patience=patience,
            repeats=1,
            seed=1,
            sampler="grid",
            base_config=ClassifierAttackConfig(max_length=64),
        )
        keys = ("learning_rate", "steps", "mode")
        assert [tuple(t[k] for k in keys) + (t["best_accuracy"],) for t in replay["trials"]] == [
            tuple(c[k] for k in keys) + (a,) for c, a in search.trials
        ]
        assert replay["stop_reason"] == search.stop_reason
        assert all(replay["best"][k] == search.best_config[k] for k in keys)
