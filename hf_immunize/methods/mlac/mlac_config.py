"""Configuration of :class:`~hf_immunize.methods.mlac.MLACTrainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_immunize.utils import check_precision

__all__ = ["MLACConfig", "META_GRADIENTS"]

META_GRADIENTS = ("second_order", "first_order", "truncated")
_INNER_OPTIMIZERS = ("sgd", "adam")
_ADVERSARY_PARAMS = ("all", "head", "lora")
_BOUNDS = ("clamp", "entropy", "none")
_TASKS = ("auto", "classification", "causal_lm")


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _finite(name: str, value, minimum: float = 0.0, strict: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise ValueError(f"`{name}` must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}.")


def _range(name: str, value, low_limit: float = 0.0) -> tuple[float, float]:
    values = list(value) if isinstance(value, list | tuple) else None
    if (
        values is None
        or len(values) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        or not low_limit < values[0] <= values[1]
    ):
        raise ValueError(f"`{name}` must be [low, high] with {low_limit} < low <= high, got {value!r}.")
    return float(values[0]), float(values[1])


@dataclass
class MLACConfig(TrainingArguments):
    r"""
    Configuration for [`MLACTrainer`]: every [`~transformers.TrainingArguments`] field, plus MLAC's own.

    MLAC (Henderson, Mitchell et al., "Self-Destructing Models", arXiv 2211.14946) trains the desired task while a
    simulated adversary, started from the current weights with a fresh random head, fine-tunes for K steps on the
    blocked task; the outer update makes that adversary fail. Defaults are the released bios setup
    (`reference/mlac.md` §3–5: `bios.yaml`, main "MLAC" run); [code] marks values read in the official source.

    Parameters:
        inner_steps (`int`, *optional*, defaults to `16`):
            K, the adversary's steps per episode (`max_adapt_steps` of `bios.yaml` [code]; ablations use 0, 4, 16).
            `0` is plain adversarial censoring: the adversary is only the fresh head at θ.
        inner_optimizer (`str`, *optional*, defaults to `"adam"`):
            `"adam"` (torch's Adam update, differentiable; the release uses `higher`'s Adam [code]) or `"sgd"`.
        inner_learning_rate (`float`, *optional*, defaults to `3e-4`):
            Start value of the learned inner learning rate [code]. Unused when `learn_inner_learning_rate=False`.
        learn_inner_learning_rate (`bool`, *optional*, defaults to `True`):
            Learn the inner learning rate to *help* the adversary: its own Adam minimises the adapted harmful loss
            (gradient clipped at 10, value clamped to `inner_learning_rate_bounds` after each update) [code]. The
            outer loss never trains it. Needs a differentiated inner step (not `first_order`). `False` samples it
            log-uniformly from `inner_learning_rate_range` per episode.
        inner_learning_rate_lr (`float`, *optional*, defaults to `1e-4`):
            Adam learning rate of the learned inner learning rate [code].
        inner_learning_rate_bounds (`list[float]`, *optional*, defaults to `[1e-6, 1e-2]`):
            Clamp of the learned inner learning rate [code].
        inner_learning_rate_range (`list[float]`, *optional*, defaults to `[1e-4, 1e-2]`):
            Log-uniform range of the sampled inner learning rate (`inner_loop_learn_lr=False` [code]).
        inner_batch_sizes (`list[int]`, *optional*, defaults to `[12, 24, 48]`):
            The adversary's batch size is drawn from this set once per episode (`bios.yaml` [code]).
        inner_max_grad_norm (`float`, *optional*, defaults to `100.0`):
            Inner gradients with a larger global norm are rescaled to it (the norm detached) [code].
        adversary_params (`str`, *optional*, defaults to `"all"`):
            What the adversary adapts, besides its head: `"all"` every weight of the model (frozen base weights of a
            LoRA model included) [code]; `"head"` only the head (a linear probe); `"lora"` only the LoRA adapters
            (needs `peft_config` or a `PeftModel`).
        reset_adversary_head (`bool` or `None`, *optional*, defaults to `None`):
            Give the adversary a fresh, seeded, bias-free random linear head every episode (always so in the
            release [code]). `None` = on for classifiers; causal LMs have no separate head to reset (their head is
            the vocabulary), and `True` is refused for them.
        adversary_num_labels (`int` or `None`, *optional*, defaults to `None`):
            Outputs of the fresh head = classes of the blocked task. `None` = `max(label) + 1` of `harmful_dataset`.
        harmful_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Harmful examples in the outer batch that every point of the trajectory is scored on. `None` =
            `per_device_train_batch_size × gradient_accumulation_steps`, so the episode does not depend on how the
            batch is split (the release: 20, the outer batch size [code]).
        meta_gradient (`str`, *optional*, defaults to `"second_order"`):
            `"second_order"`: exact, differentiates through all K inner steps (memory linear in K) [code];
            `"truncated"`: differentiates through the last `truncation_steps` steps only, earlier updates are
            constants added to θ; `"first_order"`: every update is a constant (memory flat in K).
        truncation_steps (`int` or `None`, *optional*, defaults to `None`):
            k of `"truncated"` (0 <= k <= K; k = K is second order, k = 0 first order). Required for `"truncated"`.
        desired_loss_weight (`float`, *optional*, defaults to `1.0`):
            a: weight of the desired-task loss [code].
        adapted_loss_weight (`float` or `None`, *optional*, defaults to `None`):
            c: weight of the (bounded) harmful loss at θ_0 … θ_K, averaged over the trajectory and *maximised*.
            `None` = 0 for classifiers (the paper's main MLAC run [code]) and 1 for causal LMs (where the
            head-adjusted loss has no analogue).
        grad_norm_weight (`float`, *optional*, defaults to `0.0`):
            d: weight of the mean inner gradient norm (K inner norms plus the final one at θ_K), which flattens the
            harmful loss. 1 in `bios.yaml` as shipped, 0 in the main run [code]. Needs a differentiated step.
        head_adjusted_loss_weight (`float` or `None`, *optional*, defaults to `None`):
            e: weight of "LinAdv", the harmful cross-entropy after the best re-mapping of the adversary's logits by
            a matrix in `[-b, b]^{C×C}`, averaged over the trajectory and maximised [code]. Classifiers only.
            `None` = 1 for classifiers (main run [code]), 0 for causal LMs.
        head_adjustment_bound (`float`, *optional*, defaults to `1.0`):
            b: the box of the re-mapping matrix [code].
        harmful_loss_bound (`str`, *optional*, defaults to `"clamp"`):
            How the maximised harmful loss is bounded: `"clamp"` per example/token at log C (log |V| for a causal
            LM); `"entropy"` maximises the prediction's entropy instead (also ≤ log C); `"none"` raw (can diverge).
        task (`str`, *optional*, defaults to `"auto"`):
            `"classification"` (sequence classifier; desired and blocked tasks are labels) or `"causal_lm"`
            (next-token loss on completions); `"auto"` decides from the model class.
        max_length (`int`, *optional*, defaults to `200`):
            Truncation length when the trainer tokenizes text datasets itself (the release truncates bios at 200
            [code]).
        learning_rate (`float`, *optional*, defaults to `1e-5`):
            Outer Adam learning rate (`bios.yaml` [code]).
        max_grad_norm (`float`, *optional*, defaults to `10.0`):
            Outer gradient clipping [code].

    >>> args = MLACConfig(output_dir="out", inner_steps=4, meta_gradient="truncated", truncation_steps=2)
    >>> args.inner_steps, args.num_differentiated_steps, args.max_grad_norm
    (4, 2, 10.0)
    """

    inner_steps: int = field(default=16, metadata={"help": "K: adversary steps per episode (paper: 16)."})
    inner_optimizer: str = field(default="adam", metadata={"help": "Inner optimizer: 'adam' or 'sgd'."})
    inner_learning_rate: float = field(default=3e-4, metadata={"help": "Start value of the learned inner lr."})
    learn_inner_learning_rate: bool = field(
        default=True, metadata={"help": "Learn the inner lr to help the adversary (else sample it per episode)."}
    )
    inner_learning_rate_lr: float = field(default=1e-4, metadata={"help": "Adam lr of the learned inner lr."})
    inner_learning_rate_bounds: list[float] = field(
        default_factory=lambda: [1e-6, 1e-2], metadata={"help": "Clamp [low, high] of the learned inner lr."}
    )
    inner_learning_rate_range: list[float] = field(
        default_factory=lambda: [1e-4, 1e-2], metadata={"help": "Log-uniform [low, high] of the sampled inner lr."}
    )
    inner_batch_sizes: list[int] = field(
        default_factory=lambda: [12, 24, 48], metadata={"help": "Adversary batch sizes, one drawn per episode."}
    )
    inner_max_grad_norm: float = field(default=100.0, metadata={"help": "Inner gradient clipping (global norm)."})
    adversary_params: str = field(
        default="all", metadata={"help": "What the adversary adapts besides its head: 'all', 'head' or 'lora'."}
    )
    reset_adversary_head: bool | None = field(
        default=None, metadata={"help": "Fresh random head per episode; None = on for classifiers."}
    )
    adversary_num_labels: int | None = field(
        default=None, metadata={"help": "Classes of the blocked task; None = max label of harmful_dataset + 1."}
    )
    harmful_batch_size: int | None = field(
        default=None, metadata={"help": "Outer harmful batch; None = per-device batch x accumulation steps."}
    )
    meta_gradient: str = field(
        default="second_order", metadata={"help": "'second_order', 'first_order' or 'truncated'."}
    )
    truncation_steps: int | None = field(
        default=None, metadata={"help": "k for meta_gradient='truncated': differentiate the last k inner steps."}
    )
    desired_loss_weight: float = field(default=1.0, metadata={"help": "a: weight of the desired-task loss."})
    adapted_loss_weight: float | None = field(
        default=None,
        metadata={"help": "c: weight of the maximised adapted harmful loss; None = 0 (classifier), 1 (causal LM)."},
    )
    grad_norm_weight: float = field(default=0.0, metadata={"help": "d: weight of the inner gradient-norm penalty."})
    head_adjusted_loss_weight: float | None = field(
        default=None,
        metadata={"help": "e: weight of the maximised head-adjusted loss; None = 1 (classifier), 0 (causal LM)."},
    )
    head_adjustment_bound: float = field(default=1.0, metadata={"help": "b: box of the re-mapping matrix."})
    harmful_loss_bound: str = field(
        default="clamp", metadata={"help": "Bound of the maximised harmful loss: 'clamp', 'entropy' or 'none'."}
    )
    task: str = field(default="auto", metadata={"help": "'auto', 'classification' or 'causal_lm'."})
    max_length: int = field(default=200, metadata={"help": "Truncation length for text datasets (paper: 200)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Outer Adam learning rate (paper: 1e-5)."})
    max_grad_norm: float = field(default=10.0, metadata={"help": "Outer gradient clipping (paper: 10)."})

    def __post_init__(self):
        check_precision(self)
        super().__post_init__()
        _positive_int("inner_steps", self.inner_steps, 0)
        if self.inner_optimizer not in _INNER_OPTIMIZERS:
            raise ValueError(f"`inner_optimizer` must be one of {_INNER_OPTIMIZERS}, got {self.inner_optimizer!r}.")
        _finite("inner_learning_rate", self.inner_learning_rate, 0.0, strict=True)
        _finite("inner_learning_rate_lr", self.inner_learning_rate_lr, 0.0)
        self.inner_learning_rate_bounds = list(_range("inner_learning_rate_bounds", self.inner_learning_rate_bounds))
        self.inner_learning_rate_range = list(_range("inner_learning_rate_range", self.inner_learning_rate_range))
        if self.learn_inner_learning_rate:
            low, high = self.inner_learning_rate_bounds
            if not low <= self.inner_learning_rate <= high:
                raise ValueError(
                    f"`inner_learning_rate` ({self.inner_learning_rate!r}) must lie within "
                    f"`inner_learning_rate_bounds` {self.inner_learning_rate_bounds!r}."
                )
        sizes = self.inner_batch_sizes
        if not isinstance(sizes, list | tuple) or not sizes:
            raise ValueError(f"`inner_batch_sizes` must be a non-empty list of integers >= 1, got {sizes!r}.")
        for size in sizes:
            _positive_int("inner_batch_sizes entry", size)
        self.inner_batch_sizes = list(sizes)
        _finite("inner_max_grad_norm", self.inner_max_grad_norm, 0.0, strict=True)
        if self.adversary_params not in _ADVERSARY_PARAMS:
            raise ValueError(f"`adversary_params` must be one of {_ADVERSARY_PARAMS}, got {self.adversary_params!r}.")
        if self.reset_adversary_head is not None and not isinstance(self.reset_adversary_head, bool):
            raise ValueError(f"`reset_adversary_head` must be True, False or None, got {self.reset_adversary_head!r}.")
        if self.adversary_num_labels is not None:
            _positive_int("adversary_num_labels", self.adversary_num_labels, 2)
        if self.harmful_batch_size is not None:
            _positive_int("harmful_batch_size", self.harmful_batch_size)
        if self.meta_gradient not in META_GRADIENTS:
            raise ValueError(f"`meta_gradient` must be one of {META_GRADIENTS}, got {self.meta_gradient!r}.")
        if self.meta_gradient == "truncated":
            if self.truncation_steps is None:
                raise ValueError("`truncation_steps` is required with meta_gradient='truncated' (got None).")
            _positive_int("truncation_steps", self.truncation_steps, 0)
            if self.truncation_steps > self.inner_steps:
                raise ValueError(
                    f"`truncation_steps` ({self.truncation_steps}) must be <= `inner_steps` ({self.inner_steps})."
                )
        elif self.truncation_steps is not None:
            raise ValueError(
                f"`truncation_steps` ({self.truncation_steps!r}) is only used with meta_gradient='truncated', "
                f"got meta_gradient={self.meta_gradient!r}."
            )
        _finite("desired_loss_weight", self.desired_loss_weight)
        for name in ("adapted_loss_weight", "head_adjusted_loss_weight"):
            if getattr(self, name) is not None:
                _finite(name, getattr(self, name))
        _finite("grad_norm_weight", self.grad_norm_weight)
        _finite("head_adjustment_bound", self.head_adjustment_bound, 0.0, strict=True)
        if self.harmful_loss_bound not in _BOUNDS:
            raise ValueError(f"`harmful_loss_bound` must be one of {_BOUNDS}, got {self.harmful_loss_bound!r}.")
        if self.task not in _TASKS:
            raise ValueError(f"`task` must be one of {_TASKS}, got {self.task!r}.")
        _positive_int("max_length", self.max_length)
        no_path = self.num_differentiated_steps == 0 and self.inner_steps > 0
        if no_path and self.learn_inner_learning_rate:
            raise ValueError(
                f"`learn_inner_learning_rate=True` has no gradient with meta_gradient={self.meta_gradient!r}"
                + (f" and truncation_steps={self.truncation_steps}" if self.meta_gradient == "truncated" else "")
                + ": no inner update is differentiated. Set learn_inner_learning_rate=False (sampled lr) or "
                "differentiate at least one step."
            )
        if no_path and self.grad_norm_weight:
            raise ValueError(
                f"`grad_norm_weight` ({self.grad_norm_weight}) needs a differentiated inner step; with "
                f"meta_gradient={self.meta_gradient!r} the inner gradient norms have no path to the weights."
            )
        if self.fp16:
            raise ValueError("`fp16=True` is not supported: loss scaling does not cover the inner loop's gradients.")

    @property
    def num_differentiated_steps(self) -> int:
        """How many of the last inner steps the meta-gradient differentiates (K, k or 0)."""
        if self.meta_gradient == "second_order":
            return self.inner_steps
        if self.meta_gradient == "first_order":
            return 0
        return self.truncation_steps
