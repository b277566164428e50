"""Booster: alignment that attenuates harmful perturbation (Huang et al., arXiv 2409.01586, ICLR 2025).

Per optimizer step, after the Trainer's own alignment backward over the whole accumulation window:

1. draw G harmful micro-batches (G = the window's micro-batches) from the harmful stream;
2. `g = ∇h(w)`: harmful token-sum loss / harmful label tokens of the window over all processes, summed in fp32;
3. `w' = w − α·g/(‖g‖ + 1e-7)` with one global L2 norm; `g' = ∇h(w')` on the same micro-batches, first order (`w'`
   is a constant); the weights are then restored bit-exactly from a saved copy;
4. `.grad += λ·(g − g')`; the Trainer then clips the combined gradient and steps the optimizer.

The harmful passes run on the unwrapped model with `torch.autograd.grad`: they never touch `.grad` (no zero_grad in
the middle of an accumulation window) and never trigger DDP's gradient all-reduce; `g` and `g'` are each reduced in
one explicit collective instead. They run on a fork of the global RNG, so λ = 0 trains bit-identically to SFT.

Under FSDP2 (`fsdp_version: 2`) the parameters are shards and `torch.autograd.grad` cannot reach them: the harmful
passes use `backward()` while the window's alignment gradient is stashed, and the norm, perturbation and restore act
on the local shards (:mod:`hf_immunize.core.sharding`); no process gathers a full weight or gradient.

Fast variant (`perturbation_refresh_steps=k > 1`): steps 1–4 run every k-th step, and the k − 1 steps after it add
the same `λ·(g − g')` again without any harmful pass.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, fields

import torch
from transformers import TrainingArguments
from trl import SFTTrainer

from hf_immunize.core.paired import build_paired_stream
from hf_immunize.core.perturbation import GradientBuffer, perturbed, preserved_rng
from hf_immunize.core.sharding import (
    backward_into,
    is_sharded,
    local_tensors,
    reshard,
    sharded_norm,
    stashed_grads,
)
from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin
from hf_immunize.methods.booster.booster_config import BoosterConfig

__all__ = ["BoosterTrainer"]

_CITATION = """@inproceedings{huang2025booster,
  title     = {Booster: Tackling Harmful Fine-tuning for Large Language Models via Attenuating Harmful Perturbation},
  author    = {Huang, Tiansheng and Hu, Sihao and Ilhan, Fatih and Tekin, Selim Furkan and Liu, Ling},
  booktitle = {International Conference on Learning Representations},
  year      = {2025},
  url       = {https://arxiv.org/abs/2409.01586}
}"""


@dataclass
class _HarmfulBatch:
    """The harmful micro-batches of one optimizer step (the same ones feed ∇h(w) and ∇h(w'))."""

    indices: list[list[int]]  # per micro-batch, rows of this process's harmful stream
    batches: list[dict]
    num_tokens: torch.Tensor  # harmful label tokens over all micro-batches and processes


@dataclass
class _ReusedCorrection:
    """Fast variant: `g − g'` of the last refresh step, applied again until it has served k steps."""

    difference: GradientBuffer  # g − g', fp32
    age: int = 0  # optimizer steps that have applied it


class BoosterTrainer(ImmunizeTrainerMixin, SFTTrainer):
    """`trl.SFTTrainer` on the alignment data plus Booster's harmful-perturbation regularizer.

    Takes every argument of `SFTTrainer` (any SFT dataset format, `peft_config`, `quantization_config`, a model id
    string), plus:

    Args:
        harmful_dataset (`datasets.Dataset`):
            Harmful examples (e.g. the alignment prompts with harmful answers), in any format SFT accepts; prepared
            exactly like `train_dataset`.
        harmful_data_collator (*optional*):
            Collator of the harmful batches; defaults to the trainer's `data_collator`.

    Logged metrics (averaged over each logging window): `booster/alignment_loss`, `booster/harmful_loss` (h(w)),
    `booster/harmful_loss_perturbed` (h(w')), `booster/harmful_loss_drop` (h(w) − h(w')), `booster/harmful_grad_norm`
    (‖∇h(w)‖); the harmful ones only on refresh steps in the fast variant. `grad_norm` is the norm of the combined
    gradient that the Trainer clips.

    >>> from hf_immunize import BoosterConfig, BoosterTrainer
    >>> from hf_immunize.data.toy import make_safety_world
    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> world = make_safety_world(n_weapons=8)
    >>> harmful = world.alignment_harmful.map(
    ...     lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    ... )
    >>> args = BoosterConfig(
    ...     output_dir="/tmp/booster-doctest", max_steps=2, per_device_train_batch_size=4, use_cpu=True,
    ...     activation_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1,
    ... )
    >>> trainer = BoosterTrainer(
    ...     model=tiny_causal_lm(), args=args, train_dataset=world.alignment, harmful_dataset=harmful,
    ...     processing_class=tiny_tokenizer(),
    ... )
    >>> _ = trainer.train()  # doctest: +ELLIPSIS
    {'loss': ...}
    >>> [key for key in trainer.state.log_history[0] if key.startswith("booster/")]  # doctest: +NORMALIZE_WHITESPACE
    ['booster/alignment_loss', 'booster/harmful_loss', 'booster/harmful_grad_norm', 'booster/harmful_loss_perturbed',
     'booster/harmful_loss_drop']
    """

    _tag_names = ["trl", "sft", "hf-immunize", "booster"]  # TRL's own tags kept: users filter the Hub by them
    _name = "Booster"
    _paper = {
        "title": (
            "Booster: Tackling Harmful Fine-tuning for Large Language Models via Attenuating Harmful Perturbation"
        ),
        "id": "2409.01586",
        "citation": _CITATION,
    }
    # SFT's alignment loss is a token sum over `num_items_in_batch`, which __init__ makes the Trainer always count.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: BoosterConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        formatting_func=None,
        *,
        harmful_dataset=None,
        harmful_data_collator=None,
    ):
        args = _as_booster_config(args, model)
        if harmful_dataset is None:
            raise ValueError(
                "`harmful_dataset` is required: Booster regularizes the drop of the loss on harmful examples (e.g. "
                "the alignment prompts paired with harmful answers, as `prompt`/`completion` rows)."
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=formatting_func,
        )
        self._refuse_sharded_training("Booster")
        # SFT divides its loss by `num_items_in_batch` itself and never passes it to the model, so counting it is
        # always right; without it, a model whose forward lacks `**kwargs` would get per-micro-batch means.
        self.model_accepts_loss_kwargs = True
        self.harmful_stream = build_paired_stream(
            self,
            harmful_dataset,
            batch_size=args.harmful_batch_size or args.per_device_train_batch_size,
            name="harmful",
            collate_fn=harmful_data_collator,
        )
        self._window_loss: torch.Tensor | None = None
        self._reused: _ReusedCorrection | None = None  # fast variant only
        self._pending_reused_state: dict | None = None  # from a checkpoint, until the next step
        # g, g' and the saved weights of the harmful phase, kept from step to step (allocated once, not every step).
        self._phase_buffers: tuple[GradientBuffer, GradientBuffer, list[torch.Tensor]] | None = None
        self.last_harmful_indices: list[list[int]] = []  # rows of the last harmful micro-batches drawn

    # ---- the update -------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._window_loss = loss if self._window_loss is None else self._window_loss + loss
        if self.accelerator.sync_gradients:  # last micro-batch of the window: the optimizer steps next
            window_loss, self._window_loss = self._window_loss, None
            if self.accelerator.num_processes > 1:  # each process holds its tokens' share, times num_processes
                window_loss = self.accelerator.reduce(window_loss, reduction="mean")
            self._log_metric("booster/alignment_loss", window_loss)
            self._add_booster_gradient(model)
        return loss

    def _add_booster_gradient(self, model) -> None:
        """Adds λ·(∇h(w) − ∇h(w')) to `.grad`; the weights are back to `w`, bit for bit, when it returns."""
        args = self.args
        unwrapped = self.accelerator.unwrap_model(model)
        params = [p for p in unwrapped.parameters() if p.requires_grad]
        reused = self._reused_correction(local_tensors(params))
        if reused is not None:
            difference = reused.difference
        else:
            # FSDP2: the harmful gradients come from `backward()`, so the window's alignment gradient waits aside.
            with stashed_grads(params) if is_sharded(params) else contextlib.nullcontext():
                difference = self._harmful_difference(unwrapped, params)
            if difference is None:  # non-finite harmful gradient: this step is plain SFT
                return
            if args.perturbation_refresh_steps > 1:
                reused = self._reused = _ReusedCorrection(difference)
        with torch.no_grad():
            for p in params:
                if p.grad is None:  # a tensor the alignment loss does not reach
                    p.grad = torch.zeros_like(p)
            grads = local_tensors([p.grad for p in params])  # FSDP2: this process's shards
            deltas = [d.to(device=g.device, dtype=g.dtype) for g, d in zip(grads, difference.views, strict=True)]
            torch._foreach_add_(grads, deltas, alpha=args.regularizer_weight)
        if reused is not None:
            reused.age += 1
            if reused.age >= args.perturbation_refresh_steps:
                self._reused = None

    def _harmful_difference(self, unwrapped, params) -> GradientBuffer | None:
        """`g − g'` with `g = ∇h(w)`, `g' = ∇h(w − α·g/(‖g‖ + ε))` on one fresh harmful draw; None if not finite."""
        args = self.args
        indices = [self.harmful_stream.next_indices() for _ in range(self.current_gradient_accumulation_steps)]
        batches = [self._prepare_inputs(self.harmful_stream.collate(ix)) for ix in indices]
        harmful = _HarmfulBatch(indices, batches, self._count_loss_tokens(batches))
        self.last_harmful_indices = indices

        local = local_tensors(params)
        if self._phase_buffers is None or not self._phase_buffers[0].matches(local):
            self._phase_buffers = (GradientBuffer(local), GradientBuffer(local), [t.detach().clone() for t in local])
        grad_out, perturbed_out, backup = self._phase_buffers
        grad, loss = self._harmful_gradient(unwrapped, params, harmful, out=grad_out)
        # A host float: it decides whether the step is taken at all. FSDP2: squares summed over the shards.
        norm = float(sharded_norm([grad.flat], params) if is_sharded(params) else grad.norm())
        self._log_metric("booster/harmful_loss", loss)
        self._log_metric("booster/harmful_grad_norm", norm)
        if not math.isfinite(norm):
            warnings.warn(
                f"Booster: the harmful gradient is not finite at step {self.state.global_step}; the regularizer is "
                "skipped for this step.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        step = (args.perturbation_step_size, args.perturbation_eps)
        with perturbed(local, grad.views, *step, norm=norm, backup=backup):
            reshard(unwrapped)  # FSDP2: the next forward gathers the perturbed shards
            grad_perturbed, loss_perturbed = self._harmful_gradient(unwrapped, params, harmful, out=perturbed_out)
        reshard(unwrapped)
        self._log_metric("booster/harmful_loss_perturbed", loss_perturbed)
        self._log_metric("booster/harmful_loss_drop", loss - loss_perturbed)
        torch.sub(grad.flat, grad_perturbed.flat, out=grad_perturbed.flat)  # reuses g' for g − g'
        return grad_perturbed

    def _reused_correction(self, params) -> _ReusedCorrection | None:
        """The fast variant's correction while it has served fewer than k steps (never, when k = 1)."""
        if self._pending_reused_state is not None:  # resumed inside a refresh window
            saved, self._pending_reused_state = self._pending_reused_state, None
            difference = GradientBuffer(params)
            if len(difference) != saved["difference"].numel():
                raise ValueError(
                    f"cannot resume Booster's reused correction: the checkpoint holds {saved['difference'].numel()} "
                    f"values, the trainable parameters now have {len(difference)}."
                )
            difference.flat.copy_(saved["difference"])
            self._reused = _ReusedCorrection(difference, saved["age"])
        reused = self._reused
        if reused is not None and (
            reused.age >= self.args.perturbation_refresh_steps or len(reused.difference) != _numel(params)
        ):
            reused = self._reused = None
        return reused

    def _harmful_gradient(
        self, unwrapped, params, harmful: _HarmfulBatch, out: GradientBuffer | None = None
    ) -> tuple[GradientBuffer, torch.Tensor]:
        """∇h and h at the current weights: token sums of every micro-batch over the draw's token count, written into
        `out` (overwritten; a new buffer when None).

        Without sharding: `torch.autograd.grad` on the unwrapped model (no DDP hook fires), then one all-reduce of the
        gradient and the loss. FSDP2: `backward()` (inside `stashed_grads`), whose reduce-scatter averages over the
        processes, so the loss is scaled by their number to sum instead; the buffer holds this process's shards.
        """
        sharded = is_sharded(params)
        grad = out if out is not None else GradientBuffer(local_tensors(params))
        if not harmful.batches:
            grad.zero_()
        total = torch.zeros((), dtype=torch.float32, device=grad.flat.device)
        denominator = harmful.num_tokens.clamp(min=1).to(torch.float32)
        with preserved_rng(self.args.device):  # same dropout masks at w and w'; the global RNG is left as it was
            for i, batch in enumerate(harmful.batches):
                with self.compute_loss_context_manager():
                    loss = self._summed_token_nll(unwrapped, batch) / denominator
                if sharded:
                    micro = backward_into(loss, params, scale=self.accelerator.num_processes)
                else:
                    micro = torch.autograd.grad(loss, params, allow_unused=True)
                if i == 0:  # the first micro-batch overwrites the buffer: no zeroing pass
                    grad.copy_(micro)
                else:
                    grad.add_(micro)
                total += loss.detach().float()
        if self.accelerator.num_processes > 1 and sharded:  # the gradient is reduced already
            total = self._reduce_sum(total)
        elif self.accelerator.num_processes > 1:  # one collective for the gradient and the loss
            packed = self._reduce_sum(torch.cat([grad.flat, total.view(1)]))
            grad.flat.copy_(packed[:-1])
            total = packed[-1]
        return grad, total

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def _immunize_state_dict(self) -> dict:
        state = {"harmful_stream": self.harmful_stream.state_dict()}
        if self._reused is not None:  # fast variant, inside a refresh window
            state["reused_correction"] = {"difference": self._reused.difference.flat, "age": self._reused.age}
        return state

    def _load_immunize_state_dict(self, state: dict) -> None:
        self.harmful_stream.load_state_dict(state["harmful_stream"])
        self._reused = None
        self._pending_reused_state = state.get("reused_correction")

    def _card_hyperparameters(self) -> dict:
        args = self.args
        return {
            "regularizer_weight (λ)": args.regularizer_weight,
            "perturbation_step_size (α)": args.perturbation_step_size,
            "harmful_batch_size": args.harmful_batch_size or args.per_device_train_batch_size,
            "perturbation_refresh_steps": args.perturbation_refresh_steps,
        }


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _as_booster_config(args, model) -> BoosterConfig:
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
        return BoosterConfig(f"{str(name).rstrip('/').split('/')[-1]}-Booster")
    if isinstance(args, BoosterConfig):
        return args
    if isinstance(args, TrainingArguments):  # an SFTConfig or TrainingArguments: Booster's fields at their defaults
        # Read the attributes, not `to_dict()`, which masks every `*_token` field (`pad_token` -> "<PAD_TOKEN>").
        values = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
        return BoosterConfig(**{k: v for k, v in values.items() if k in BoosterConfig.__dataclass_fields__})
    raise TypeError(f"`args` must be a BoosterConfig, an SFTConfig or TrainingArguments, got {type(args).__name__}.")
