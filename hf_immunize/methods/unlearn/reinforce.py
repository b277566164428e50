"""The WHP pipeline around the trainer: reinforce R on the forget corpus, build generic labels, fine-tune B.

By default R is a LoRA adapter on B itself: labels are built with the adapter on (R) and off (B), and the adapter is
then removed, so the pipeline never holds two full models.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

__all__ = ["default_reinforce_lora", "prepare_whp", "reinforce", "remove_adapter", "run_whp_pipeline"]


def default_reinforce_lora():
    """LoRA of the reinforced model: r=16 on every linear layer but the LM head (TRL refuses LoRA on the head)."""
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def reinforce(model, tokenizer, forget_dataset, args=None, *, use_lora: bool = True, lora_config=None):
    """R: `model` fine-tuned further on `forget_dataset` (any SFT format, e.g. `text` rows) with the causal-LM loss.

    Args:
        args: an `SFTConfig` (default: 3 epochs at lr 3e-6, the reference's reported setting for 7B models; tiny
            models need ~1e-3).
        use_lora: `True` (default) trains a LoRA adapter on `model` in place and returns the `PeftModel`; its base
            weights are untouched and serve as B. `False` trains a full copy and leaves `model` as it was.
    Returns R (a `PeftModel` with the adapter on, or the full trained copy).
    """
    from trl import SFTTrainer

    from hf_immunize.utils import detached_copy, sft_config

    if args is None:
        args = sft_config(tempfile.mkdtemp(prefix="whp-reinforce-"), num_train_epochs=3, learning_rate=3e-6)
    if use_lora:
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=forget_dataset,
            processing_class=tokenizer,
            peft_config=lora_config or default_reinforce_lora(),
        )
    else:
        if lora_config is not None:
            raise ValueError("`lora_config` was given with use_lora=False; pass one or the other.")
        trainer = SFTTrainer(
            model=detached_copy(model), args=args, train_dataset=forget_dataset, processing_class=tokenizer
        )
    trainer.train()
    reinforced = trainer.model
    reinforced.eval()
    return reinforced


def remove_adapter(reinforced):
    """B again: the base model of a LoRA-reinforced `PeftModel`, adapter layers removed (weights as before) and
    every weight trainable again."""
    if not hasattr(reinforced, "unload"):
        raise TypeError(f"expected a PEFT model with a LoRA adapter, got {type(reinforced).__name__}.")
    base = reinforced.unload()
    base.requires_grad_(True)  # PEFT froze the base weights while the adapter trained
    return base


def prepare_whp(
    model,
    tokenizer,
    forget_texts: Sequence[str],
    anchored_terms,
    args,
    *,
    reinforce_args=None,
    use_lora_reinforce: bool = True,
    reinforce_lora_config=None,
    label_batch_size: int = 4,
):
    """reinforce → labels. Returns `(B, labelled_dataset, dictionary)`, B ready for :class:`UnlearnTrainer`.

    Args:
        model: B (a `PreTrainedModel`). With `use_lora_reinforce`, the reinforcement adapter is added to it and
            removed again (the returned B is `model` itself, every weight trainable); else R is a trained copy.
        anchored_terms: dict or JSON path/string (see :func:`load_anchored_terms`).
        args: an :class:`UnlearnConfig` with `unlearning_loss="whp"` (its `whp_alpha`, `whp_extra_alphas`,
            `block_size`, `forbid_value` and `anchor_seed` build the labels).
    """
    from datasets import Dataset

    from hf_immunize.methods.unlearn.anchors import load_anchored_terms
    from hf_immunize.methods.unlearn.labels import build_generic_labels

    if args.unlearning_loss != "whp":
        raise ValueError(f"the WHP pipeline needs args.unlearning_loss='whp', got {args.unlearning_loss!r}.")
    terms = load_anchored_terms(anchored_terms) if anchored_terms else {}
    texts = [t for t in forget_texts if t]
    reinforced = reinforce(
        model,
        tokenizer,
        Dataset.from_dict({"text": texts}),
        reinforce_args,
        use_lora=use_lora_reinforce,
        lora_config=reinforce_lora_config,
    )
    labelled = build_generic_labels(
        reinforced,
        tokenizer,
        texts,
        terms,
        baseline=None if use_lora_reinforce else model,
        block_size=args.block_size,
        alpha=args.whp_alpha,
        extra_alphas=args.whp_extra_alphas,
        seed=args.anchor_seed,
        forbid_value=args.forbid_value,
        batch_size=label_batch_size,
    )
    base = remove_adapter(reinforced) if use_lora_reinforce else model
    return base, labelled, terms


def run_whp_pipeline(
    model,
    tokenizer,
    forget_texts: Sequence[str],
    anchored_terms,
    args,
    *,
    reinforce_args=None,
    use_lora_reinforce: bool = True,
    reinforce_lora_config=None,
    peft_config=None,
    label_batch_size: int = 4,
    eval_dataset=None,
    callbacks=None,
):
    """reinforce → labels → train, in one call (:func:`prepare_whp`, then :class:`UnlearnTrainer`). Returns
    `(trainer, labelled_dataset)` after `trainer.train()`; `peft_config` is LoRA for the final fine-tune."""
    from hf_immunize.methods.unlearn.unlearn_trainer import UnlearnTrainer

    base, labelled, terms = prepare_whp(
        model,
        tokenizer,
        forget_texts,
        anchored_terms,
        args,
        reinforce_args=reinforce_args,
        use_lora_reinforce=use_lora_reinforce,
        reinforce_lora_config=reinforce_lora_config,
        label_batch_size=label_batch_size,
    )
    trainer = UnlearnTrainer(
        model=base,
        args=args,
        train_dataset=labelled,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.whp_card_context["dictionary_size"] = len(terms)
    trainer.train()
    return trainer, labelled
