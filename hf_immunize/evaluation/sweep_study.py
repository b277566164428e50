"""A sweep shared by many workers through Optuna's own storage (any RDB URL Optuna takes: SQLite, PostgreSQL, MySQL).

Run the same sweep command on every machine with the same `--storage` and `--study_name`; each worker takes trials
no other worker has taken, and each returns the aggregates over the whole study.

How trials are shared (the grid): the plan (the list of settings) is fixed by the sweep's space, budget and seed and
recorded in the study; a worker claims plan entry `i` by creating a running trial that names `i` (one insert, which
every database serialises and numbers). Of several claims on one entry the lowest-numbered live one wins; the others
are pruned before any compute. A trial that finishes is COMPLETE with its summary; one that raises is FAIL (the
error stops that worker, and the entry is retried by the next). A killed worker leaves its trial RUNNING: its
heartbeat stops, and after the grace period any worker marks it FAIL and runs the entry again, so a killed sweep
continues where it stopped. With TPE the settings are Optuna's choice; the trial numbers ration the budget, so the
study never completes more than `budget` trials.

SQLite: Optuna reads then writes a trial's state in two statements, which SQLite's default deferred transactions do
not make atomic between processes; every transaction here therefore starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's
documented pysqlite recipe), so a claim and a state change are atomic across processes too.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

__all__ = ["SweepStudy", "open_storage"]

_META_KEY = "hf_immunize_sweep"
_POLL_SECONDS = 2.0


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("a shared sweep needs Optuna: pip install 'hf_immunize[optuna]' (or optuna).") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even parseable: shown as given (it carries no password sqlalchemy could find)
        return url


def open_storage(url: str, heartbeat_interval: int = 60, grace_period: int | None = None):
    """An Optuna RDBStorage for `url`, with heartbeats; a URL that cannot be opened is a ValueError, raised before any
    model is loaded."""
    optuna = _optuna()
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"`storage` must be a database URL such as 'sqlite:///sweep.db' or 'postgresql://user@host/db'; got "
            f"{url!r}."
        )
    if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        raise ValueError(f"`heartbeat_interval` must be an integer >= 1 (seconds), got {heartbeat_interval!r}.")
    if grace_period is not None and (not isinstance(grace_period, int) or grace_period <= heartbeat_interval):
        raise ValueError(f"`grace_period` must be an integer > heartbeat_interval (seconds), got {grace_period!r}.")
    sqlite = url.startswith("sqlite")
    engine_kwargs = {}
    if sqlite:
        path = url.split(":///", 1)[-1] if ":///" in url else ""
        if not path or path == ":memory:":
            raise ValueError(f"`storage` {url!r}: a shared sweep needs a database file, e.g. 'sqlite:///sweep.db'.")
        folder = Path(path).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ValueError(f"`storage` {url!r}: the folder {str(folder)!r} does not exist or is not writable.")
        # Autocommit at the driver; transactions are opened explicitly (BEGIN IMMEDIATE, below).
        engine_kwargs = {"connect_args": {"isolation_level": None, "timeout": 60}}
    last = None
    for attempt in range(3):  # workers that start together on a fresh database race to create its tables
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what a resume needs
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                )
            break
        except Exception as err:  # sqlalchemy/driver errors: a wrong URL, an unreachable server, a missing driver
            last = err
            time.sleep(0.5 * (attempt + 1))
    else:
        raise ValueError(f"could not open the Optuna storage {_shown(url)!r}: {type(last).__name__}: {last}") from None
    if sqlite:
        from sqlalchemy import event

        event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


class _Heartbeat:
    """Records the trial's heartbeat every `interval` seconds while the trial runs."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


class SweepStudy:
    """One worker's handle on a shared sweep (see the module docstring); an in-memory study when `storage` is None."""

    def __init__(self, study, storage, meta: dict, heartbeat_interval: int):
        self.study, self.storage, self.meta = study, storage, meta
        self.heartbeat_interval = heartbeat_interval
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.shared = meta.pop("_shared")
        self.beats = hasattr(storage, "record_heartbeat")  # RDB storages; the in-memory one has no dead workers

    @classmethod
    def open(cls, url, study_name, *, sampler, space, budget, seed, plan, settings, heartbeat_interval, grace_period):
        optuna = _optuna()
        meta = {"sampler": sampler, "space": space, "budget": budget, "seed": seed, "plan": plan, **settings}
        if url is not None:
            if not isinstance(study_name, str) or not study_name.strip():
                raise ValueError(f"`study_name` must be a non-empty string, got {study_name!r}.")
            for key, values in space.items():
                bad = [v for v in values if v is not None and not isinstance(v, bool | int | float | str)]
                if bad:
                    raise ValueError(f"sweep space: {key!r} has values an Optuna study cannot record: {bad!r}.")
            storage = open_storage(url, heartbeat_interval, grace_period)
        else:  # TPE in this process only
            storage = optuna.storages.InMemoryStorage()
            study_name = f"hf-immunize-sweep-{uuid.uuid4().hex[:8]}"
        # Workers of a shared study seed their samplers apart, or they would all propose the same first settings.
        tpe = optuna.samplers.TPESampler(seed=seed if url is None else seed + os.getpid() + uuid.uuid4().int % 10**6)
        study = optuna.create_study(
            storage=storage, study_name=study_name, direction="maximize", sampler=tpe, load_if_exists=True
        )
        recorded = study.user_attrs.get(_META_KEY)
        if recorded is None:
            study.set_user_attr(_META_KEY, _jsonable(meta))
        elif recorded != _jsonable(meta):
            differ = sorted(k for k in set(recorded) | set(meta) if recorded.get(k) != _jsonable(meta).get(k))
            raise ValueError(
                f"study {study_name!r} in {_shown(url)!r} was created for another sweep (different {differ}); run "
                "every worker with the same settings, or use another --study_name."
            )
        return cls(study, storage, {**meta, "_shared": url is not None, "url": url}, heartbeat_interval)

    def describe(self) -> dict | None:
        if not self.shared:
            return None
        from sqlalchemy.engine import make_url

        return {"study_name": self.study.study_name, "storage": make_url(self.meta["url"]).get_backend_name()}

    # ---- trials -------------------------------------------------------------------------------------------------

    def _trials(self):
        return self.storage.get_all_trials(self.study_id, deepcopy=False)

    def _beat_once(self, trial_id: int) -> None:
        if self.beats:  # a claim is alive from its first moment
            self.storage.record_heartbeat(trial_id)

    def _fail_stale(self) -> None:
        optuna = _optuna()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _finish(self, trial_id: int, run, *args) -> dict:
        from optuna.trial import TrialState

        try:
            if self.beats:
                with _Heartbeat(self.storage, trial_id, self.heartbeat_interval):
                    summary = run(*args)
            else:
                summary = run(*args)
        except BaseException as err:
            self.storage.set_trial_user_attr(trial_id, "error", f"{type(err).__name__}: {err}"[:500])
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            raise
        self.storage.set_trial_user_attr(trial_id, "summary", _jsonable(summary))
        harm = summary["harmful_score_after"]
        self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[_finite(harm)])
        return summary

    def run(self, attack, *, wait: bool = True) -> list[dict]:
        """Runs this worker's share of the trials; returns the finished trials of the whole study."""
        return self._run_grid(attack, wait) if self.meta["sampler"] == "grid" else self._run_tpe(attack, wait)

    def _run_grid(self, attack, wait: bool) -> list[dict]:
        from optuna.distributions import CategoricalDistribution
        from optuna.trial import TrialState, create_trial

        plan, space = self.meta["plan"], self.meta["space"]
        distributions = {k: CategoricalDistribution(list(v)) for k, v in space.items()}
        while True:
            self._fail_stale()
            done, live = set(), set()
            for t in self._trials():
                index = t.user_attrs.get("plan_index")
                if t.state == TrialState.COMPLETE:
                    done.add(index)
                elif t.state == TrialState.RUNNING:
                    live.add(index)
            todo = [i for i in range(len(plan)) if i not in done and i not in live]
            if not todo:
                if len(done) == len(plan) or not wait:
                    break
                time.sleep(_POLL_SECONDS)
                continue
            index = todo[0]
            claim = create_trial(
                state=TrialState.RUNNING,
                params=plan[index],
                distributions={k: distributions[k] for k in plan[index]},
                user_attrs={"plan_index": index, "worker": self.worker},
            )
            trial_id = self.storage.create_new_trial(self.study_id, template_trial=claim)
            self._beat_once(trial_id)
            mine = self.storage.get_trial(trial_id).number
            rivals = [
                t.number
                for t in self._trials()
                if t.user_attrs.get("plan_index") == index
                and t.number < mine
                and t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.WAITING)
            ]
            if rivals:
                self.storage.set_trial_user_attr(trial_id, "outcome", f"lost the claim to trial {min(rivals)}")
                self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
                continue
            self._finish(trial_id, attack, index, dict(plan[index]))
        finished = {}
        for t in sorted(self._trials(), key=lambda t: t.number):
            if t.state == TrialState.COMPLETE:
                finished.setdefault(t.user_attrs["plan_index"], t.user_attrs["summary"])
        return [finished[i] for i in sorted(finished)]

    def _run_tpe(self, attack, wait: bool) -> list[dict]:
        from optuna.trial import TrialState

        budget, space = self.meta["budget"], self.meta["space"]
        while True:
            self._fail_stale()
            trials = self._trials()
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if complete >= budget or (complete + running >= budget and not wait):
                break
            if complete + running >= budget:
                time.sleep(_POLL_SECONDS)
                continue
            with warnings.catch_warnings():  # our own heartbeat thread runs the trial, not Study.optimize's
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            self._beat_once(trial_id)
            earlier = [
                t
                for t in self._trials()
                if t.number < trial.number and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
            ]
            if len(earlier) >= budget:  # another worker took the last place first
                self.storage.set_trial_user_attr(trial_id, "outcome", "over budget")
                self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
                continue
            overrides = {k: trial.suggest_categorical(k, list(v)) for k, v in space.items()}
            self._finish(trial_id, attack, trial.number, overrides)
        done = [t for t in sorted(self._trials(), key=lambda t: t.number) if t.state == TrialState.COMPLETE]
        return [t.user_attrs["summary"] for t in done[:budget]]


def _finite(value) -> float:
    import math

    return value if value is not None and math.isfinite(value) else float("-inf")


def _jsonable(value):
    """`value` as the study records it (JSON round trip: tuples become lists)."""
    import json

    return json.loads(json.dumps(value))
