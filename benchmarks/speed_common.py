"""Measurement helpers shared by the speed benchmarks (`booster_speed.py`, `mlac_speed.py`)."""

from __future__ import annotations

import gc
import json
import os
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

__all__ = ["StepMemory", "StepTimer", "live_tensor_bytes", "merge_into"]


class StepTimer(TrainerCallback):
    """CPU time and wall time of every optimizer step (from `on_step_begin` to `on_step_end`).

    With one thread, the process's CPU time is the work of the step: unlike wall time, it does not grow when other
    processes take turns on the same cores (our development machines are shared).
    """

    def __init__(self):
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._start = (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.process_time(), time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.cpu.append(time.process_time() - self._start[0])
        self.wall.append(time.perf_counter() - self._start[1])


class StepMemory(TrainerCallback):
    """Peak bytes of one step: live tensors at its start + the peak of what it allocates (profiler events)."""

    def __init__(self, step: int):
        self.step = step
        self.peak_bytes = None
        self._profiler = None
        self._baseline = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            gc.collect()
            self._baseline = live_tensor_bytes()
            self._profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
            self._profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self._profiler is None or self.peak_bytes is not None:
            return
        self._profiler.stop()
        events = [e for e in self._profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
        current = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            current += event.nbytes()
            peak = max(peak, current)
        self.peak_bytes = self._baseline + peak
        self._profiler = None


def live_tensor_bytes() -> int:
    storages = {}
    with warnings.catch_warnings():  # `isinstance` on some deprecated torch aliases warns
        warnings.simplefilter("ignore")
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in objects:
        try:
            if obj.device.type == "cpu":
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        except Exception:  # objects that fail on inspection (e.g. half-built ones) are not our tensors
            continue
    return sum(storages.values())


def merge_into(path: Path, results: dict) -> None:
    """Updates our keys in the JSON file at `path`, keeping everything else; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.is_file() and path.read_text().strip() else {}
    existing.update(results)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
