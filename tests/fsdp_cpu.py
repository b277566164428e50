"""Runs accelerate's own FSDP2 preparation on CPU processes (gloo), for the sharded tests.

accelerate 1.15 decides the distributed type from the device family it finds: on a machine without an accelerator a
launched process becomes `MULTI_CPU` (plain DDP), and only the GPU-like types are turned into `FSDP` by an FSDP config
(`AcceleratorState`, "FSDP" branch). :func:`enable` overrides that one choice: a launched process on a CPU-only
machine is treated as `MULTI_GPU` with the gloo backend, and `ACCELERATE_TORCH_DEVICE=cpu` (accelerate's own variable)
keeps its device on the CPU. Everything after it is accelerate's and transformers' real code: `fsdp2_prepare_model`
(`fully_shard` per decoder layer, then the input embedding, the final norm with the output head, and the root; the
rank-0 weights broadcast by `fsdp_cpu_ram_efficient_loading`), the Trainer's FSDP gradient accumulation, clipping
and sharded checkpoints.

Import this module and call :func:`enable` before transformers creates any `TrainingArguments`.
"""

from __future__ import annotations

import os


def enable() -> None:
    import accelerate.state
    from accelerate.utils import DistributedType

    original = accelerate.state.PartialState._prepare_backend
    if getattr(original, "_hf_immunize_cpu_fsdp", False):
        return

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        chosen_backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
        if launched and not cpu and distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU):
            return "gloo", DistributedType.MULTI_GPU
        return chosen_backend, distributed_type

    prepare_backend._hf_immunize_cpu_fsdp = True
    accelerate.state.PartialState._prepare_backend = prepare_backend
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
