"""Sweeps shared through Optuna's storage: many workers on one study, each trial once, a killed sweep continues, and
the aggregates are those of a single-process run over the same trials."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset
from sweep_worker import BUDGET, SPACE, tiny_attack, toy_sets

import hf_immunize.evaluation.sweep as sweep_module
from hf_immunize.evaluation import AttackConfig, AttackResult, sweep_attacks
from hf_immunize.evaluation.sweep import aggregate_trials, plan_grid
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

optuna = pytest.importorskip("optuna")
WORKER = Path(__file__).resolve().parent / "sweep_worker.py"


def _start(*args, barrier: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, **({"SWEEP_BARRIER": f"{barrier}:2"} if barrier else {})}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen, timeout: int = 600) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def _log(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _study(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url)


def test_two_workers_share_one_sqlite_study_and_match_a_single_process_run(tmp_path):
    """Two processes, one SQLite study, real attacks on the tiny model: N trials complete in total, each setting is
    attacked exactly once, both workers return the whole study's aggregates, and those equal a run of the same
    trials in one process without any storage."""
    model_dir = tmp_path / "model"
    tiny_causal_lm(save_dir=model_dir)
    url, log = f"sqlite:///{tmp_path / 'sweep.db'}", tmp_path / "attacks.log"
    (tmp_path / "barrier").mkdir()
    workers = [
        _start("real", model_dir, url, "tiny", log, tmp_path / f"out{i}.json", barrier=tmp_path / "barrier")
        for i in range(2)
    ]
    for proc in workers:
        _finish(proc)

    plan, _ = plan_grid(SPACE, BUDGET, 0)
    attacked = _log(log)
    assert {pid for pid, _ in attacked} == {proc.pid for proc in workers}  # both took a share
    assert sorted(json.dumps(o, sort_keys=True) for _, o in attacked) == sorted(
        json.dumps(o, sort_keys=True) for o in plan
    )  # every setting once, none twice
    trials = _study(url, "tiny").trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == BUDGET and sorted(t.user_attrs["plan_index"] for t in complete) == list(range(BUDGET))
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in trials if t not in complete)  # lost claims only

    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    single = sweep_attacks(str(model_dir), tiny_tokenizer(), tiny_attack(), *toy_sets(), space=SPACE, budget=BUDGET)
    for shared in results:
        assert shared["study"] == {"study_name": "tiny", "storage": "sqlite"}
        assert [t["overrides"] for t in shared["trials"]] == [t["overrides"] for t in single.trials]
        for ours, theirs in zip(shared["trials"], single.trials):
            for key, value in theirs.items():
                assert ours[key] == (pytest.approx(value) if isinstance(value, float) else value), key
        for key in ("worst", "worst_within_utility"):
            assert shared[key]["trial"] == getattr(single, key)["trial"], key
        assert shared["top_n_mean"] == pytest.approx(single.top_n_mean)
        assert shared["top_n_mean_within_utility"] == pytest.approx(single.top_n_mean_within_utility)


def test_a_killed_sweep_continues_where_it_stopped(tmp_path):
    """A worker killed in the middle of a trial leaves it RUNNING; its heartbeat stops, and the next run takes it
    over after the grace period and finishes the study. Finished trials are not attacked again."""
    url, log = f"sqlite:///{tmp_path / 'sweep.db'}", tmp_path / "attacks.log"
    first = _start("fake", "-", url, "resume", log, tmp_path / "out0.json", 2.0)
    deadline = time.time() + 120
    while (not log.exists() or len(_log(log)) < 2) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    first.kill()  # SIGKILL: no clean-up of any kind
    first.communicate()
    killed_pid = first.pid
    before = _log(log)
    assert len(before) >= 2 and all(pid == killed_pid for pid, _ in before)
    states = [t.state for t in _study(url, "resume").trials]
    assert optuna.trial.TrialState.RUNNING in states  # the trial it was in the middle of

    second = _start("fake", "-", url, "resume", log, tmp_path / "out1.json", 0.05)
    _finish(second)
    after = _log(log)[len(before) :]
    done_first = [o for o in before[:-1]]  # all but the interrupted one finished before the kill
    assert not any(o in done_first for _, o in after), "a finished trial ran again"
    assert before[-1][1] in [o for _, o in after]  # the interrupted one ran again
    trials = _study(url, "resume").trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["plan_index"] for t in complete) == list(range(BUDGET))
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in trials) == 1  # the killed trial, failed as stale
    result = json.loads((tmp_path / "out1.json").read_text())
    assert len(result["trials"]) == BUDGET and result["worst"]["harmful_score_after"] == 1000 * 3e-3 + 2


def test_tpe_workers_never_complete_more_than_the_budget(tmp_path):
    url, log = f"sqlite:///{tmp_path / 'sweep.db'}", tmp_path / "attacks.log"
    (tmp_path / "barrier").mkdir()
    workers = [
        _start("fake", "-", url, "tpe", log, tmp_path / f"out{i}.json", 0.3, "tpe", barrier=tmp_path / "barrier")
        for i in range(2)
    ]
    for proc in workers:
        _finish(proc)
    trials = _study(url, "tpe").trials
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == BUDGET == len(_log(log))
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert results[0]["trials"] == results[1]["trials"] and results[0]["sampler"] == "optuna-tpe"


# ---- aggregates and bad input ------------------------------------------------------------------------------------


def _scripted(monkeypatch, outcomes):
    def fake_attack(model, tok, config, *args, **kwargs):
        harmful, task = outcomes[config.learning_rate]
        return AttackResult(
            config={},
            before={"harmful_score": 0.0, "task_accuracy": 80.0},
            after={"harmful_score": harmful, "task_accuracy": task},
            curve=[],
        )

    monkeypatch.setattr(sweep_module, "run_attack", fake_attack)


def test_aggregates_worst_bounded_and_top_n(monkeypatch):
    outcomes = {1e-4: (40.0, 80.0), 3e-4: (60.0, 70.0), 1e-3: (90.0, 50.0), 3e-3: (55.0, 75.0)}
    _scripted(monkeypatch, outcomes)
    data = Dataset.from_list([{"prompt": "x"}])
    res = sweep_attacks(
        None, None, AttackConfig(), data, data, data, space={"learning_rate": list(outcomes)}, budget=10, top_n=2
    )
    assert res.worst["harmful_score_after"] == 90.0
    assert res.worst_within_utility["harmful_score_after"] == 55.0  # 75 >= 0.9 * 80; 70 and 50 are not
    assert res.top_n_mean == pytest.approx((90 + 60) / 2) and res.top_n_mean_within_utility == pytest.approx(47.5)
    assert res.scored_by.startswith("`refusal_keyword`") and res.sampler == "grid"
    wide = aggregate_trials(res.trials, utility_drop=0.5, top_n=10)
    assert wide["worst_within_utility"]["harmful_score_after"] == 90.0 and wide["top_n_mean"] == pytest.approx(61.25)
    nan = [{**res.trials[0], "harmful_score_after": math.nan}] + res.trials[1:]
    assert aggregate_trials(nan, 0.1, 10)["top_n_mean"] == pytest.approx((60 + 90 + 55) / 3)


def test_tpe_in_one_process_runs_the_budget(monkeypatch):
    _scripted(monkeypatch, {1e-4: (10.0, 80.0), 1e-3: (20.0, 80.0), 3e-3: (30.0, 80.0)})
    data = Dataset.from_list([{"prompt": "x"}])
    res = sweep_attacks(
        None,
        None,
        AttackConfig(),
        data,
        data,
        data,
        space={"learning_rate": [1e-4, 1e-3, 3e-3]},
        budget=4,
        sampler="tpe",
    )
    assert res.sampler == "optuna-tpe" and len(res.trials) == 4 and res.study is None
    assert res.worst["harmful_score_after"] == max(t["harmful_score_after"] for t in res.trials)


@pytest.mark.parametrize("bound", [0.0, 1.0, 1.5, -0.1])
def test_a_utility_bound_outside_0_1_is_refused(bound, monkeypatch):
    _scripted(monkeypatch, {})
    data = Dataset.from_list([{"prompt": "x"}])
    with pytest.raises(ValueError, match=r"`utility_drop` must be in \(0, 1\)"):
        sweep_attacks(None, None, AttackConfig(), data, data, data, utility_drop=bound)


@pytest.mark.parametrize(
    "url,message",
    [
        ("not a url", "must be a database URL"),
        ("sqlite:////no/such/folder/sweep.db", "does not exist or is not writable"),
        ("sqlite:///:memory:", "needs a database file"),
        ("nosuchdb://host/x", "could not open the Optuna storage 'nosuchdb://host/x'"),
    ],
)
def test_a_storage_that_cannot_be_opened_fails_before_any_attack(url, message, monkeypatch):
    def no_attack(*args, **kwargs):
        raise AssertionError("an attack ran")

    monkeypatch.setattr(sweep_module, "run_attack", no_attack)
    data = Dataset.from_list([{"prompt": "x"}])
    with pytest.raises(ValueError, match=message):
        sweep_attacks(None, None, AttackConfig(), data, data, data, storage=url, study_name="s")


def test_workers_with_other_settings_are_refused_by_the_study(tmp_path, monkeypatch):
    _scripted(monkeypatch, {1e-4: (1.0, 80.0), 1e-3: (2.0, 80.0)})
    data = Dataset.from_list([{"prompt": "x"}])
    url = f"sqlite:///{tmp_path / 's.db'}"
    kwargs = dict(space={"learning_rate": [1e-4, 1e-3]}, storage=url, study_name="s")
    first = sweep_attacks(None, None, AttackConfig(), data, data, data, budget=2, **kwargs)
    assert len(first.trials) == 2 and first.study == {"study_name": "s", "storage": "sqlite"}
    again = sweep_attacks(None, None, AttackConfig(), data, data, data, budget=2, **kwargs)  # all done: no new trial
    assert again.trials == first.trials and len(_study(url, "s").trials) == 2
    with pytest.raises(ValueError, match=r"was created for another sweep \(different \['budget', 'plan'\]\)"):
        sweep_attacks(None, None, AttackConfig(), data, data, data, budget=1, **kwargs)
    with pytest.raises(ValueError, match="`storage` and `study_name` go together"):
        sweep_attacks(None, None, AttackConfig(), data, data, data, storage=url)
