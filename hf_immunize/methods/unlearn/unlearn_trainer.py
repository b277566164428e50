"""UnlearnTrainer: Who's-Harry-Potter generic-label fine-tuning (Eldan & Russinovich, arXiv 2310.02238), with
gradient ascent, gradient difference and NPO beside it for comparison.

- `whp`: the training set holds the original forget blocks (`input_ids`) and their generic `labels` (see
  :mod:`~hf_immunize.methods.unlearn.labels`); the loss is SFT's token cross-entropy, normalised by the label tokens
  of the accumulation window. Nothing else: no retain set, no KL, as in the reference code.
- `grad_ascent` / `grad_diff` / `npo`: the training set is the forget corpus in any SFT format; `grad_diff` and `npo`
  draw retain micro-batches from a second, resumable stream (:mod:`hf_immunize.core.paired`). At the first
  micro-batch of every accumulation window the retain micro-batches of the whole window are drawn, so that the
  retain NLL is normalised by the window's retain tokens (exact under gradient accumulation).
"""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn.functional as F
from transformers import TrainingArguments
from trl import SFTTrainer

from hf_immunize.core.paired import build_paired_stream
from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin
from hf_immunize.methods.unlearn.unlearn_config import UnlearnConfig

__all__ = ["UnlearnTrainer"]

_CITATION = """@article{eldan2023whos,
  title   = {Who's Harry Potter? Approximate Unlearning in LLMs},
  author  = {Eldan, Ronen and Russinovich, Mark},
  journal = {arXiv preprint arXiv:2310.02238},
  year    = {2023},
  url     = {https://arxiv.org/abs/2310.02238}
}"""


class UnlearnTrainer(ImmunizeTrainerMixin, SFTTrainer):
    """`trl.SFTTrainer` with an unlearning loss (`args.unlearning_loss`); takes every `SFTTrainer` argument, plus:

    Args:
        retain_dataset (`datasets.Dataset`, *optional*):
            Data to keep (any SFT format); required by `grad_diff` and `npo` when `retain_weight > 0`, refused by
            `whp` and `grad_ascent`, which have no retain term.
        retain_data_collator (*optional*): collator of the retain batches (default: the trainer's).
        ref_model (*optional*): π_ref of NPO. Default: the PEFT model with its adapter off, else a frozen copy of the
            starting model (a second full model in memory).

    Logged metrics: `unlearn/forget_nll` (mean token NLL of the forget micro-batches), `unlearn/retain_nll`
    (grad_diff, npo), `unlearn/npo_log_ratio` (mean `log π_θ − log π_ref` per forget sequence); with `whp`, SFT's
    `mean_token_accuracy` is the agreement of the model's argmax with the generic labels.

    >>> from hf_immunize import UnlearnConfig, UnlearnTrainer
    >>> from hf_immunize.data.toy import make_book_world
    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> world = make_book_world(n_passages=20)
    >>> args = UnlearnConfig(
    ...     output_dir="/tmp/unlearn-doctest", unlearning_loss="grad_diff", max_steps=2, per_device_train_batch_size=4,
    ...     use_cpu=True, activation_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1,
    ... )
    >>> trainer = UnlearnTrainer(
    ...     model=tiny_causal_lm(), args=args, train_dataset=world.forget, retain_dataset=world.retain,
    ...     processing_class=tiny_tokenizer(),
    ... )
    >>> _ = trainer.train()  # doctest: +ELLIPSIS
    {'loss': ...}
    >>> sorted(k for k in trainer.state.log_history[0] if k.startswith("unlearn/"))
    ['unlearn/forget_nll', 'unlearn/retain_nll']
    """

    # TRL's own tags kept (users filter the Hub by them); "unlearn" selects model_cards/unlearn.md.
    _tag_names = ["trl", "sft", "hf-immunize", "unlearn", "unlearning", "whp"]
    _name = "Unlearn (Who's Harry Potter)"
    _paper = {"title": "Who's Harry Potter? Approximate Unlearning in LLMs", "id": "2310.02238", "citation": _CITATION}
    # Every loss is a sum over the window's label tokens (or NPO's sequences) divided by their count for the window.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: UnlearnConfig | TrainingArguments | None = None,
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
        retain_dataset=None,
        retain_data_collator=None,
        ref_model=None,
    ):
        args = _as_unlearn_config(args, model)
        loss = args.unlearning_loss
        if args.needs_retain and retain_dataset is None:
            raise ValueError(
                f"`retain_dataset` is required by unlearning_loss={loss!r} with retain_weight="
                f"{args.retain_weight!r} (set retain_weight=0 to train without a retain term)."
            )
        if retain_dataset is not None and not args.needs_retain:
            raise ValueError(
                f"unlearning_loss={loss!r} (retain_weight={args.retain_weight!r}) has no retain term, but a "
                "`retain_dataset` was given; drop it, or use unlearning_loss='grad_diff' / 'npo'."
            )
        if loss == "whp" and train_dataset is not None and "labels" not in train_dataset.column_names:
            raise ValueError(
                "unlearning_loss='whp' trains on generic labels: `train_dataset` must have `input_ids` and `labels` "
                "columns (build it with `hf_immunize.methods.unlearn.build_generic_labels`, or run "
                f"`run_whp_pipeline`), got columns {train_dataset.column_names}."
            )
        if compute_loss_func is not None and loss != "whp":
            raise ValueError(f"`compute_loss_func` cannot replace the {loss!r} loss.")
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
        self._refuse_sharded_training("Unlearn", edits_weights=False)  # refuses FSDP1 only
        # Our losses divide by `num_items_in_batch` themselves and never pass it to the model: always count it.
        self.model_accepts_loss_kwargs = True
        self.retain_stream = None
        if args.needs_retain:
            self.retain_stream = build_paired_stream(
                self,
                retain_dataset,
                batch_size=args.retain_batch_size or args.per_device_train_batch_size,
                name="retain",
                collate_fn=retain_data_collator,
            )
        self.ref_model = None
        if args.unlearning_loss == "npo" and not hasattr(self.model, "disable_adapter"):
            self.ref_model = ref_model if ref_model is not None else self._frozen_copy()
        self._window: dict = {}
        # Card facts the trainer cannot see (set by `run_whp_pipeline`): forget corpus name, dictionary size.
        self.whp_card_context: dict = {}

    def _frozen_copy(self):
        from trl.trainer.utils import add_fused_lm_head

        from hf_immunize.utils import detached_copy

        ref = detached_copy(self.accelerator.unwrap_model(self.model))
        add_fused_lm_head(ref)
        ref.requires_grad_(False)
        return ref.eval()

    # ---- the window ---------------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        rows = torch.tensor(sum(len(b["input_ids"]) for b in batches), device=device)
        self._window = {"micro": 0, "size": len(batches), "rows": self._reduce_sum(rows), "retain": None}
        return batches, num_items

    def _next_retain_batch(self):
        window = self._window
        if window.get("retain") is None:
            batches = [self._prepare_inputs(self.retain_stream.next_batch()) for _ in range(window.get("size", 1))]
            window["retain"], window["retain_tokens"] = batches, self._count_loss_tokens(batches)
        micro = window.get("micro", 0)
        return window["retain"][min(micro, len(window["retain"]) - 1)], window["retain_tokens"]

    # ---- the loss -----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        if args.unlearning_loss == "whp" or not self.model.training or return_outputs:
            # SFT's own loss (its `loss_type`): CE on the generic labels, or the eval NLL
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        log_probs = outputs.log_probs  # (B, T - 1), zero where the label is -100
        local_tokens = outputs.label_mask.sum()
        tokens = (local_tokens if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)).clamp(min=1)
        self._log_metric("unlearn/forget_nll", -log_probs.sum() / local_tokens.clamp(min=1))
        if args.unlearning_loss in ("grad_ascent", "grad_diff"):
            forget = log_probs.sum() / tokens  # −NLL(f): ascending the forget loss
        else:  # npo
            sequence = log_probs.sum(-1)  # (B,) log π_θ(y|x)
            with torch.no_grad():
                reference = self._reference_log_probs(model, inputs)  # (B,)
            ratio = sequence - reference
            rows = self._window.get("rows") if num_items_in_batch is not None else None
            rows = torch.as_tensor(len(sequence) if rows is None else rows).clamp(min=1)
            forget = (-2.0 / args.npo_beta) * F.logsigmoid(-args.npo_beta * ratio).sum() / rows
            self._log_metric("unlearn/npo_log_ratio", ratio.detach().mean())
        loss = forget if args.unlearning_loss == "grad_ascent" else args.forget_weight * forget
        if self.retain_stream is not None:
            batch, retain_tokens = self._next_retain_batch()
            retain_sum = self._summed_token_nll(model, batch)
            if num_items_in_batch is None:  # no window count: this micro-batch alone
                retain_tokens = batch["labels"][..., 1:].ne(-100).sum()
            loss = loss + args.retain_weight * retain_sum / retain_tokens.clamp(min=1)
            local = batch["labels"][..., 1:].ne(-100).sum().clamp(min=1)
            self._log_metric("unlearn/retain_nll", retain_sum.detach() / local)
        self._window["micro"] = self._window.get("micro", 0) + 1
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # global denominators; DDP averages the gradients
        return loss

    def _reference_log_probs(self, model, inputs) -> torch.Tensor:
        """`log π_ref(y|x)` per sequence: the adapter switched off, or the frozen copy."""
        if self.ref_model is not None:
            out = self.ref_model(**inputs, use_cache=False, fused_lm_head=True)
        else:
            unwrapped = self.accelerator.unwrap_model(model)
            with unwrapped.disable_adapter():
                out = unwrapped(**inputs, use_cache=False, fused_lm_head=True)
        return out.log_probs.sum(-1).detach()

    # ---- checkpoints and card ---------------------------------------------------------------------------------

    def _immunize_state_dict(self) -> dict:
        return {"retain_stream": self.retain_stream.state_dict()} if self.retain_stream is not None else {}

    def _load_immunize_state_dict(self, state: dict) -> None:
        if self.retain_stream is not None and "retain_stream" in state:
            self.retain_stream.load_state_dict(state["retain_stream"])

    def _card_hyperparameters(self) -> dict:
        args = self.args
        out = {"unlearning_loss": args.unlearning_loss}
        if args.loss_type != "nll":  # TRL's DFT on the whp labels
            out["loss_type"] = args.loss_type
        if args.unlearning_loss == "whp":
            out.update({"alpha (α)": args.whp_alpha, "block_size": args.block_size, "forbid_value": args.forbid_value})
        if args.unlearning_loss == "npo":
            out["npo_beta (β)"] = args.npo_beta
        if args.unlearning_loss in ("grad_diff", "npo"):
            out.update({"forget_weight (γ)": args.forget_weight, "retain_weight": args.retain_weight})
        return out

    def _card_template_context(self) -> dict:
        # Limitations (MUSE, Lynch et al.) come from the section template, model_cards/unlearn.md.
        context = {"grader": None, **self.whp_card_context}
        if self.args.unlearning_loss == "whp":
            context.setdefault("alpha", self.args.whp_alpha)
        context.setdefault("alpha", None)
        context.setdefault("dictionary_size", None)
        context.setdefault("forget_corpus", None)
        return context


def _as_unlearn_config(args, model) -> UnlearnConfig:
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
        return UnlearnConfig(f"{str(name).rstrip('/').split('/')[-1]}-Unlearn")
    if isinstance(args, UnlearnConfig):
        return args
    if isinstance(args, TrainingArguments):
        values = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
        return UnlearnConfig(**{k: v for k, v in values.items() if k in UnlearnConfig.__dataclass_fields__})
    raise TypeError(f"`args` must be an UnlearnConfig, an SFTConfig or TrainingArguments, got {type(args).__name__}.")
