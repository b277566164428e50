"""The efficacy result file shared by every world: atomic merges, explorations, the command line that wrote them.

Layout of `benchmarks/results/efficacy.json` (each world merges its own keys and keeps everything else):

- `summary.<world>.<arm>`: means over seeds (the numbers the README and docs quote), `settings.<world>`,
  `seeds.<world>`, `per_seed.<world>.<seed>.<arm>`: the full per-seed results;
- `exploration.<world>.<tag>`: other settings tried, kept whatever they showed, each with its command;
- `goals.<world>`: the goal check of the world's headline arm.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

__all__ = [
    "DEFAULT_OUTPUT",
    "RESULTS_DIR",
    "command_line",
    "load",
    "locked",
    "mean_std",
    "quiet_and_deterministic",
    "record_exploration",
    "save",
    "write_efficacy",
]

RESULTS_DIR = Path("benchmarks") / "results"
DEFAULT_OUTPUT = RESULTS_DIR / "efficacy.json"
# Settings that a run over other seeds or arms may change without making its results incomparable.
_RUN_KEYS = frozenset({"seeds", "arms", "seconds", "command"})


def mean_std(values) -> dict:
    """`{"mean", "std"}` over the values that are not None (population std; None when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def command_line(world: str, argv: list[str] | None) -> str:
    """The `hf-immunize bench` command that reproduces a run (recorded next to its numbers)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["hf-immunize bench --world", world, *map(shlex.quote, args)])


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """Holds an exclusive lock beside `path` while a run reads, merges and writes it: runs of other worlds or seeds
    that finish at the same moment then merge one after the other instead of losing each other's keys."""
    import hashlib
    import tempfile

    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"hf_immunize_bench_{key}.lock"  # outside the repository
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() and path.read_text().strip() else {}


def save(data: dict, path: str | os.PathLike) -> dict:
    """Writes `data` to `path` atomically (a crash leaves the previous file, never half of a new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return data


def comparable(old: dict, new: dict, _prefix: str = "") -> list[str]:
    """The settings (other than seeds, arms, time and command) that both runs record and set differently; a
    setting only one of them records (a field added since) is not compared, at any depth of nested settings."""
    changed = []
    for key in sorted((old.keys() & new.keys()) - (_RUN_KEYS if not _prefix else set())):
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            changed += comparable(a, b, f"{_prefix}{key}.")
        elif a != b:
            changed.append(f"{_prefix}{key}")
    return changed


def write_efficacy(world: str, results: dict, path: str | os.PathLike, summarise=None, finish=None) -> dict:
    """Merges one world's run into the efficacy JSON and returns the file's content.

    Per-seed results are merged arm by arm (a run of one arm or one seed keeps the others). With `summarise`
    (`per_seed -> summary`), the world's summary is recomputed from every stored seed, so `--seeds 0` after a
    three-seed run refreshes seed 0 without turning the table into a one-seed table; otherwise the run's own summary
    replaces the arms it holds. `finish(data)` may add derived keys (a goal check) before the file is written. A run
    whose settings differ from the stored ones is refused: record it as an exploration, or replace the world's
    results whole.
    """
    with locked(path):
        data = load(path)
        stored = data.get("settings", {}).get(world)
        if stored is not None:
            changed = comparable(stored, json.loads(json.dumps(results["settings"])))  # tuples read back as lists
            if changed:
                raise ValueError(
                    f"the run's settings differ from the stored `{world}` results in {changed}; record it with "
                    "`--exploration_tag NAME`, or pass `--replace` to make it the world's result (the stored one "
                    "is then kept as an exploration under the tag given with `--replaced_tag`)."
                )
        per_seed = data.setdefault("per_seed", {}).setdefault(world, {})
        for seed, arms in results["per_seed"].items():
            per_seed.setdefault(str(seed), {}).update(arms)
        data.setdefault("settings", {})[world] = {**(stored or {}), **results["settings"]}
        seeds = data.setdefault("seeds", {}).get(world, [])
        data["seeds"][world] = sorted({*map(int, seeds), *map(int, results["seeds"])})
        summary = data.setdefault("summary", {}).setdefault(world, {})
        if summarise is not None:
            summary.update(summarise(per_seed))
        else:
            summary.update(results["summary"])
        if finish is not None:
            finish(data)
        return save(data, path)


def replace_world(world: str, path: str | os.PathLike, replaced_tag: str | None) -> dict:
    """Drops the world's stored result (keeping it under `exploration.<world>.<replaced_tag>`) before a new one."""
    with locked(path):
        data = load(path)
        if world in data.get("summary", {}):
            if not replaced_tag:
                raise ValueError(f"`--replaced_tag` must name the `{world}` result that `--replace` retires.")
            record = {"settings": data["settings"].get(world, {}), "summary": data["summary"][world]}
            data.setdefault("exploration", {}).setdefault(world, {})[replaced_tag] = record
            for key in ("summary", "settings", "seeds", "per_seed", "goals"):
                data.get(key, {}).pop(world, None)
            save(data, path)
        return data


def record_exploration(world: str, tag: str, run: dict, path: str | os.PathLike) -> dict:
    """Stores one exploration run (its settings, command and summary, plus any extra keys) under
    `exploration.<world>.<tag>`; every other key of the file is kept."""
    with locked(path):
        data = load(path)
        data.setdefault("exploration", {}).setdefault(world, {})[tag] = run
        return save(data, path)


def quiet_and_deterministic() -> None:
    """One CPU thread (results must not depend on the thread count) and no progress bars."""
    import datasets
    import torch
    import transformers

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
