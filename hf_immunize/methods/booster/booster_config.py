"""Configuration of :class:`~hf_immunize.methods.booster.BoosterTrainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

from hf_immunize.utils import bf16_supported, check_precision

__all__ = ["BoosterConfig"]


@dataclass
class BoosterConfig(SFTConfig):
    r"""
    Configuration for [`BoosterTrainer`]: every [`~trl.SFTConfig`] field, plus Booster's own.

    Booster (Huang et al., arXiv 2409.01586, ICLR 2025) minimises `f(w) + λ·[h(w) − h(w − α·∇h(w)/‖∇h(w)‖)]`: the
    alignment loss plus λ times how much the harmful loss drops after one normalized harmful step. Defaults are the
    paper's (official scripts `script/alignment/smooth_align.sh`: `--lamb 5 --alpha 0.1`; note that the official
    argparse default of λ is 0.001, a trap the scripts override).

    Parameters:
        regularizer_weight (`float`, *optional*, defaults to `5.0`):
            λ in the paper: weight of the harmful-loss drop. `0` trains exactly like [`~trl.SFTTrainer`]. The
            official GSM8K runs (Tables 10–15) used 25 with batch 10.
        perturbation_step_size (`float`, *optional*, defaults to `0.1`):
            α in the paper: length of the simulated harmful step `w − α·g/(‖g‖ + 1e-7)`, one global L2 norm over all
            trainable tensors. `0` makes the regularizer exactly zero.
        harmful_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Harmful examples per micro-batch and per process. `None` uses `per_device_train_batch_size` (the paper:
            10 and 10). Each optimizer step draws `gradient_accumulation_steps` harmful micro-batches.
        perturbation_refresh_steps (`int`, *optional*, defaults to `1`):
            `1` is the exact method (3 forward+backward passes per step). `k > 1` is the fast variant: the harmful
            draw, `g`, the direction `g/‖g‖` and `g'` are computed every k-th optimizer step, and the correction
            `g − g'` of that step is added again on the k − 1 steps that follow (3 passes on a refresh step, 1 on
            the others: `1 + 2/k` on average). An approximation, not the paper's method; see `docs/booster.md`.
        perturbation_eps (`float`, *optional*, defaults to `1e-7`):
            Added to the gradient norm (outside the square root), as in the official code.
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            `None` turns bf16 mixed precision on only when a CUDA device with bf16 support is present. (TRL's
            default, bf16 on, raises on a machine without GPU and runs ~13× slower under CPU autocast.)

    The harmful loss `h` is the token-mean negative log-likelihood of the harmful answers, normalised by the harmful
    label tokens of the whole accumulation window over all processes, like the alignment loss with
    `num_items_in_batch`. FSDP2 is supported (the harmful passes work on the local shards); fp16 (loss scaling),
    FSDP1, FSDP2 with offloaded parameters and DeepSpeed are refused.

    >>> args = BoosterConfig(output_dir="out", regularizer_weight=5.0, perturbation_step_size=0.1, use_cpu=True)
    >>> args.regularizer_weight, args.perturbation_step_size, args.perturbation_refresh_steps
    (5.0, 0.1, 1)
    """

    regularizer_weight: float = field(
        default=5.0,
        metadata={"help": "λ: weight of the harmful-loss drop h(w) − h(w'). Paper default 5 (GSM8K preset: 25)."},
    )
    perturbation_step_size: float = field(
        default=0.1,
        metadata={"help": "α: length of the simulated normalized harmful step w' = w − α·g/‖g‖. Paper default 0.1."},
    )
    harmful_batch_size: int | None = field(
        default=None,
        metadata={"help": "Harmful examples per micro-batch and process; None uses per_device_train_batch_size."},
    )
    perturbation_refresh_steps: int = field(
        default=1,
        metadata={
            "help": "1 = exact Booster. k > 1 = fast variant: compute the correction g − g' every k-th optimizer "
            "step and add it again on the steps in between (1 + 2/k passes per step instead of 3)."
        },
    )
    perturbation_eps: float = field(
        default=1e-7,
        metadata={"help": "Epsilon added to the global gradient norm (outside the square root)."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. None = on only when a CUDA device with bf16 support is present "
            "(TRL's default True fails on CPU-only machines)."
        },
    )

    def __post_init__(self):
        # Checked before `TrainingArguments` validates them, which fails with less useful messages on some machines.
        if self.fp16:
            raise ValueError(
                "`fp16=True` is not supported by Booster: fp16 loss scaling would have to be applied to the extra "
                "harmful passes and to the regularizer as well. Use `bf16=True` or full precision."
            )
        # FSDP is checked by the trainer, on accelerate's resolved plugin (FSDP2 supported; FSDP1 and offloaded
        # parameters refused), which also covers `accelerate launch --config_file recipes/accelerate/fsdp.yaml`.
        if self.deepspeed:
            raise ValueError(
                f"`deepspeed`={self.deepspeed!r} is not supported by Booster (ZeRO's flattened, partitioned "
                "parameters break the weight perturbation and the global gradient norm). To shard a model that does "
                "not fit one device use FSDP2 (recipes/accelerate/fsdp.yaml, `fsdp_version: 2`); otherwise DDP, with "
                "LoRA/QLoRA for large models."
            )
        check_precision(self)
        if self.bf16 is None:
            self.bf16 = bf16_supported() and not self.use_cpu
        super().__post_init__()
        sharding = getattr(self, "fsdp_plugin_args", None) or {}
        if self.fsdp and sharding.get("fsdp_version", 2) != 2:
            raise ValueError(
                f"`fsdp_config` version {sharding['fsdp_version']} (FSDP1) is not supported by Booster: it flattens "
                "the parameters. Use FSDP2: `fsdp_config={'version': 2}` (transformers' default)."
            )
        if self.fsdp and sharding.get("cpu_offload"):
            raise ValueError(
                "`fsdp` offloads the parameters to the CPU (`offload` / `fsdp_config['cpu_offload']`), which Booster "
                "does not support (it moves and restores the parameter shards between its passes). Drop the offload "
                "and shard over more GPUs, or train LoRA/QLoRA adapters."
            )

        if not _is_finite_number(self.regularizer_weight) or self.regularizer_weight < 0:
            raise ValueError(
                f"`regularizer_weight` (λ) must be a finite number >= 0, got {self.regularizer_weight!r}."
            )
        if not _is_finite_number(self.perturbation_step_size) or self.perturbation_step_size < 0:
            raise ValueError(
                f"`perturbation_step_size` (α) must be a finite number >= 0, got {self.perturbation_step_size!r}."
            )
        if self.harmful_batch_size is not None and (
            not isinstance(self.harmful_batch_size, int) or self.harmful_batch_size < 1
        ):
            raise ValueError(
                f"`harmful_batch_size` must be an integer >= 1, or None to use `per_device_train_batch_size`, got "
                f"{self.harmful_batch_size!r}."
            )
        if not isinstance(self.perturbation_refresh_steps, int) or self.perturbation_refresh_steps < 1:
            raise ValueError(
                f"`perturbation_refresh_steps` must be an integer >= 1 (1 = exact Booster), got "
                f"{self.perturbation_refresh_steps!r}."
            )
        if not _is_finite_number(self.perturbation_eps) or self.perturbation_eps <= 0:
            raise ValueError(f"`perturbation_eps` must be a finite number > 0, got {self.perturbation_eps!r}.")
        # `gradient_checkpointing*` are mirrored onto `activation_checkpointing*` by `TrainingArguments`.
        if self.activation_checkpointing and (self.activation_checkpointing_kwargs or {}).get("use_reentrant"):
            raise ValueError(
                "`activation_checkpointing_kwargs` (or `gradient_checkpointing_kwargs`) with `use_reentrant=True` is "
                "not supported by Booster: the harmful gradients are taken with `torch.autograd.grad`, which "
                "reentrant checkpointing does not allow. Leave `use_reentrant` unset or False."
            )


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
