"""Configuration of :class:`~hf_immunize.methods.unlearn.UnlearnTrainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

__all__ = ["UNLEARNING_LOSSES", "UnlearnConfig"]

UNLEARNING_LOSSES = ("whp", "grad_ascent", "grad_diff", "npo")
_NEEDS_RETAIN = ("grad_diff", "npo")


@dataclass
class UnlearnConfig(SFTConfig):
    r"""
    Configuration for [`UnlearnTrainer`]: every [`~trl.SFTConfig`] field, plus the unlearning ones.

    `unlearning_loss="whp"` (Eldan & Russinovich, arXiv 2310.02238) is SFT's own token loss on the generic labels
    built by :func:`~hf_immunize.methods.unlearn.build_generic_labels`, so TRL's `loss_type` ("nll" or "dft") applies
    to it as in `SFTTrainer`; the other three are the usual baselines and replace SFT's loss (they need
    `loss_type="nll"`, the default). The label settings (`whp_alpha`, `whp_extra_alphas`, `block_size`,
    `forbid_value`, `anchor_seed`) are read by the pipeline (:func:`~hf_immunize.methods.unlearn.run_whp_pipeline`,
    the `unlearn` command), not by the trainer.

    Parameters:
        unlearning_loss (`str`, *optional*, defaults to `"whp"`):
            `"whp"`: CE on generic labels (no retain set, as the reference code). `"grad_ascent"`: `−NLL(f)` (Jang et
            al., arXiv 2210.01504). `"grad_diff"`: `γ·(−NLL(f)) + λ_r·NLL(r)` (Liu et al., arXiv 2203.12817).
            `"npo"`: `−(2/β)·mean_f log σ(−β·[log π_θ(y|x) − log π_ref(y|x)]) + λ_r·NLL(r)` (Zhang et al., arXiv
            2404.05868).
        whp_alpha (`float`, *optional*, defaults to `5.0`):
            α of `argmax(v_B − α·ReLU(v_R − v_B))` (reference code's "bootstrap coefficient").
        whp_extra_alphas (`list[float]`, *optional*, defaults to `[2.5, 10.0]`):
            Extra label sets stored as `labels_alpha_<a>` columns (the reference stores 0.5α and 2α).
        block_size (`int`, *optional*, defaults to `512`):
            Tokens per forget block (reference: 512, non-overlapping, tail dropped).
        forbid_value (`str`, *optional*, defaults to `"mean"`):
            Value given to B's logit of a forbidden token: `"mean"` of its row (faithful) or `"-inf"`; `"none"`
            forbids nothing (an ablation, not the reference method).
        anchor_seed (`int`, *optional*, defaults to `0`):
            Seed of the substitute drawn per key and block.
        npo_beta (`float`, *optional*, defaults to `0.1`):
            β of NPO (open-unlearning's default).
        forget_weight (`float`, *optional*, defaults to `1.0`):
            γ: weight of the forget term of grad_diff and npo.
        retain_weight (`float`, *optional*, defaults to `1.0`):
            λ_r: weight of the retain NLL of grad_diff and npo; needs a `retain_dataset` when > 0.
        retain_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Retain examples per micro-batch and process; `None` uses `per_device_train_batch_size`.
        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            `None` turns bf16 on only when a CUDA device with bf16 support is present (TRL's True fails on CPU).

    Normalisation (gradient accumulation exact for every loss): token sums over the label tokens of the whole
    accumulation window (forget and retain counted apart), NPO's per-sequence terms over the window's forget
    sequences. The reference WHP script averages per micro-batch instead; the two agree when micro-batches hold equal
    label counts.

    >>> args = UnlearnConfig(output_dir="out", unlearning_loss="npo", use_cpu=True)
    >>> args.unlearning_loss, args.loss_type, args.npo_beta, args.whp_alpha
    ('npo', 'nll', 0.1, 5.0)
    """

    unlearning_loss: str = field(
        default="whp", metadata={"help": "Unlearning loss: whp (default), grad_ascent, grad_diff or npo."}
    )
    whp_alpha: float = field(default=5.0, metadata={"help": "α of argmax(v_B − α·ReLU(v_R − v_B)). Reference: 5."})
    whp_extra_alphas: list[float] = field(
        default_factory=lambda: [2.5, 10.0],
        metadata={"help": "Extra α label sets stored as labels_alpha_<a> columns (reference: 2.5 and 10)."},
    )
    block_size: int = field(default=512, metadata={"help": "Tokens per forget block (reference: 512)."})
    forbid_value: str = field(
        default="mean",
        metadata={
            "help": "B's logit of a forbidden token: 'mean' of its row (faithful), '-inf', or 'none' (ablation)."
        },
    )
    anchor_seed: int = field(default=0, metadata={"help": "Seed of the substitute drawn per key and block."})
    npo_beta: float = field(default=0.1, metadata={"help": "β of NPO (open-unlearning default 0.1)."})
    forget_weight: float = field(default=1.0, metadata={"help": "γ: weight of the forget term (grad_diff, npo)."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain NLL (grad_diff, npo)."})
    retain_batch_size: int | None = field(
        default=None, metadata={"help": "Retain examples per micro-batch and process; None = per-device batch."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. None = on only with a bf16-capable CUDA device (TRL's True fails on CPU)."
        },
    )

    def __post_init__(self):
        # Our own fields first: a bad value fails before anything else is set up.
        if self.loss_type in UNLEARNING_LOSSES:
            raise ValueError(
                f"`loss_type` is TRL's SFT loss ('nll' or 'dft'), got {self.loss_type!r}: the unlearning loss is "
                f"`unlearning_loss` (set unlearning_loss={self.loss_type!r})."
            )
        if self.unlearning_loss not in UNLEARNING_LOSSES:
            raise ValueError(
                f"`unlearning_loss` must be one of {list(UNLEARNING_LOSSES)}, got {self.unlearning_loss!r}."
            )
        # SFTConfig maps its deprecated "chunked_nll" to "nll" after this check.
        if self.unlearning_loss != "whp" and self.loss_type not in ("nll", "chunked_nll"):
            raise ValueError(
                f"`loss_type`={self.loss_type!r} reweights SFT's token loss, which unlearning_loss="
                f"{self.unlearning_loss!r} replaces by its own; use loss_type='nll' (or unlearning_loss='whp', which "
                "trains with SFT's loss)."
            )
        if not _finite(self.whp_alpha) or self.whp_alpha <= 0:
            raise ValueError(f"`whp_alpha` (α) must be a finite number > 0, got {self.whp_alpha!r}.")
        if not isinstance(self.whp_extra_alphas, list | tuple) or not all(
            _finite(a) and a > 0 for a in self.whp_extra_alphas
        ):
            raise ValueError(
                f"`whp_extra_alphas` must be a list of finite numbers > 0, got {self.whp_extra_alphas!r}."
            )
        self.whp_extra_alphas = [float(a) for a in self.whp_extra_alphas]
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 2:
            raise ValueError(f"`block_size` must be an integer >= 2, got {self.block_size!r}.")
        if self.forbid_value not in ("mean", "-inf", "none"):
            raise ValueError(f"`forbid_value` must be 'mean', '-inf' or 'none', got {self.forbid_value!r}.")
        if not _finite(self.npo_beta) or self.npo_beta <= 0:
            raise ValueError(f"`npo_beta` (β) must be a finite number > 0, got {self.npo_beta!r}.")
        for name in ("forget_weight", "retain_weight"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if self.retain_batch_size is not None and (
            not isinstance(self.retain_batch_size, int) or self.retain_batch_size < 1
        ):
            raise ValueError(f"`retain_batch_size` must be an integer >= 1 or None, got {self.retain_batch_size!r}.")
        if self.unlearning_loss == "npo" and (self.packing or self.padding_free):
            raise ValueError(
                "unlearning_loss='npo' scores whole sequences, which packing / padding-free batches merge; got "
                f"packing={self.packing!r}, padding_free={self.padding_free!r}. Set both to False."
            )
        if self.label_smoothing_factor:
            raise ValueError(
                f"`label_smoothing_factor` must be 0 for the unlearning losses, got {self.label_smoothing_factor!r}."
            )
        if self.bf16 is None:
            self.bf16 = _cuda_bf16_available() and not self.use_cpu
        super().__post_init__()

    @property
    def needs_retain(self) -> bool:
        """Whether the loss has a retain term (grad_diff / npo with `retain_weight` > 0)."""
        return self.unlearning_loss in _NEEDS_RETAIN and self.retain_weight > 0


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _cuda_bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
