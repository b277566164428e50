"""Small helpers shared across the package (no method-specific code)."""

from __future__ import annotations

import os

__all__ = [
    "CPU_TRAINING_DEFAULTS",
    "OFFLINE_ENV",
    "atomic_write",
    "detached_copy",
    "set_offline_env",
    "sft_config",
    "staged_write",
]

# Hub offline, no telemetry, one CPU thread: for tests and benchmarks. Must be set before any HF library is imported
# (`HF_ENDPOINT` and the offline flags are read at import time), so this module imports nothing heavy.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def set_offline_env(override: bool = True) -> None:
    """Exports :data:`OFFLINE_ENV` (`override=False` keeps values the caller already set)."""
    for key, value in OFFLINE_ENV.items():
        if override:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


# Settings of every short run in the demo, the benchmark and the attack harness: no checkpoints, no logging, a
# constant schedule without weight decay unless asked (`gradient_checkpointing` is deprecated in transformers 5).
CPU_TRAINING_DEFAULTS = dict(
    activation_checkpointing=False,
    report_to="none",
    save_strategy="no",
    disable_tqdm=True,
    logging_strategy="no",
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
)


def sft_config(output_dir: str | os.PathLike, **overrides):
    """An `SFTConfig` for the CPU runs of the demo and benchmark: fp32, no checkpointing, no saving, quiet."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        output_dir=str(output_dir),
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        packing=False,
        **CPU_TRAINING_DEFAULTS,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def detached_copy(model):
    """A deep copy of `model` that shares nothing with it, even after TRL has patched it.

    TRL's `SFTTrainer` replaces `model.forward` with a fused-LM-head wrapper whose closure holds the *original* bound
    forward. `copy.deepcopy` copies that closure by reference, so the copy's plain forward (used by `generate`) would
    still run the original model's weights while training updates the copy's. We drop such instance-level wrappers
    from the copy; a trainer that needs the fused head adds it again to the copy itself.
    """
    import copy

    clone = copy.deepcopy(model)
    for module in clone.modules():
        forward = module.__dict__.get("forward")
        code = getattr(getattr(forward, "__func__", forward), "__code__", None)  # `functools.wraps` renames it
        if code is not None and code.co_name == "_fused_forward":
            del module.__dict__["forward"]
    return clone


def atomic_write(path, write) -> None:
    """Calls `write(tmp_path)` on a temporary file beside `path` and moves it onto `path`: never a half-written file.

    The temporary name keeps `path`'s suffix (writers such as matplotlib pick the format from it).
    """
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a published file is world-readable like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def staged_write(directory, writers: dict) -> None:
    """Writes several files of `directory` as one step: `writers[name](tmp_path)` fills a temporary file per name,
    and only when all of them succeeded are they moved into place (a failure removes the temporaries and leaves every
    existing file untouched)."""
    import tempfile
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in writers.items():
            target = directory / name
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=directory)
            os.close(fd)
            staged.append((Path(tmp), target))
            write(Path(tmp))
            os.chmod(tmp, 0o644)
        for name, (_tmp, target) in zip(writers, staged):
            if target.is_dir():
                raise IsADirectoryError(f"cannot write {name}: {str(target)!r} is a directory.")
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()


def bf16_supported() -> bool:
    """Whether a CUDA device with bf16 support is present (the only bf16 setting our configs pick by themselves)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def check_precision(args) -> None:
    """Refuses `bf16=True` / `fp16=True` when no GPU can run it, naming the field and value, before any compute.

    CPU autocast in bf16 is ~13x slower than fp32 for these models and fp16 fails on CPU; TrainingArguments' own
    message ("doesn't support bf16/gpu") names neither the field nor the fix. Call it first in a config's
    `__post_init__`; `None` (our default) picks bf16 only on a CUDA device that supports it.
    """
    import torch

    on_cpu = getattr(args, "use_cpu", False) or not torch.cuda.is_available()
    if getattr(args, "bf16", None) is True and (on_cpu or not bf16_supported()):
        raise ValueError(
            f"`bf16`={args.bf16!r} but this run has no GPU with bf16 support (use_cpu={args.use_cpu!r}, CUDA "
            f"available: {torch.cuda.is_available()}). Set `bf16=False` (or leave it unset: the hf_immunize configs "
            "switch bf16 on only where a CUDA device supports it)."
        )
    if getattr(args, "fp16", False) and on_cpu:
        raise ValueError(f"`fp16`={args.fp16!r} needs a CUDA GPU; this run is on the CPU. Set `fp16=False`.")
