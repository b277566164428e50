"""MLAC: meta-learned adversarial censoring (Henderson, Mitchell et al., "Self-Destructing Models", arXiv 2211.14946).

Per optimizer step, after the Trainer's own backward of the desired-task loss over the whole accumulation window:

1. draw one episode from the trainer's own seeded generator: the adversary's batch size (from a set), its learning
   rate (sampled, or the learned one) and, for classifiers, a fresh bias-free random head;
2. draw K inner batches and one outer batch from the harmful stream (:mod:`hf_immunize.core.paired`);
3. run the simulated adversary (:func:`~hf_immunize.methods.mlac.inner_loop.run_episode`): K functional optimizer
   steps from θ, the defender's terms evaluated at θ_0 … θ_K, the meta-gradient taken through as many inner steps as
   `meta_gradient` says;
4. `.grad += ∂(censoring objective)/∂θ`; the Trainer then clips the combined gradient and steps the optimizer. A
   learned inner learning rate takes its own Adam step towards *helping* the adversary.

The episode never installs anything in the model: the fresh head and the adapted weights are tensors passed to
`torch.func.functional_call`, so a saved MLAC model has exactly the base architecture. It runs on a fork of the global
RNG, so with every censoring weight at 0 training is bit-identical to a plain `Trainer`.

Under FSDP2 (`fsdp_version: 2`, first order only) the processes share one episode over the union of their batches,
run by :func:`~hf_immunize.methods.mlac.shared_episode.run_shared_first_order_episode` on the local shards; under
DDP or one process each process runs its own episode and the gradients are averaged.
"""

from __future__ import annotations

import contextlib

import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import _is_peft_model

from hf_immunize.core.paired import build_paired_stream
from hf_immunize.core.perturbation import GradientBuffer, preserved_rng
from hf_immunize.core.sharding import is_sharded, local_tensor, stashed_grads
from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin
from hf_immunize.data.tokenize import PadCollator, pad_token_id_of, tokenize_rows
from hf_immunize.methods.mlac.episodes import EpisodeMixin
from hf_immunize.methods.mlac.inner_loop import (
    FunctionalAdam,
    FunctionalSGD,
    run_episode,
)
from hf_immunize.methods.mlac.mlac_config import MLACConfig
from hf_immunize.methods.mlac.model_checks import (
    _as_mlac_config,
    _attention_context,
    _check_attention,
    _harmful_classes,
    _head_parameter_names,
    _resolve_task,
    _resolve_weights,
    _summed_loss,
)
from hf_immunize.methods.mlac.shared_episode import check_shared_episode

__all__ = ["MLACTrainer"]

_CITATION = """@inproceedings{henderson2023selfdestructing,
  title     = {Self-Destructing Models: Increasing the Costs of Harmful Dual Uses of Foundation Models},
  author    = {Henderson, Peter and Mitchell, Eric and Manning, Christopher D. and Jurafsky, Dan and Finn, Chelsea},
  booktitle = {Proceedings of the 2023 AAAI/ACM Conference on AI, Ethics, and Society},
  year      = {2023},
  url       = {https://arxiv.org/abs/2211.14946}
}"""


class MLACTrainer(EpisodeMixin, ImmunizeTrainerMixin, Trainer):
    """`transformers.Trainer` on the desired task, plus MLAC's meta-learned censoring of a blocked task.

    Takes the usual `Trainer` arguments (`train_dataset` = the desired task; datasets may be tokenized, or raw
    `text`/`label` rows for classifiers and `prompt`/`completion` or `text` rows for causal LMs, tokenized with
    `processing_class`), plus:

    Args:
        harmful_dataset (`datasets.Dataset`):
            The blocked task, in the same formats: for a classifier `text` + `label` (e.g. gender), for a causal LM
            prompt/completion rows whose completions are harmful.
        peft_config (`peft.PeftConfig`, *optional*):
            Wraps the model with `get_peft_model` (e.g. LoRA; use `task_type="SEQ_CLS"` for classifiers).
        harmful_data_collator (*optional*):
            Collator of the harmful batches; defaults to the trainer's `data_collator`.

    Logged metrics (averaged over each logging window): `mlac/desired_loss`, `mlac/harmful_loss` (the adversary's
    loss on the outer batch, trajectory mean), `mlac/harmful_loss_start` / `mlac/harmful_loss_end` (at θ_0 and θ_K),
    `mlac/harmful_accuracy_end` (classifiers), `mlac/harmful_loss_bounded` (the maximised, bounded loss; when
    c > 0), `mlac/head_adjusted_loss` (when e > 0), `mlac/inner_grad_norm`, `mlac/grad_norm_penalty` (when d > 0),
    `mlac/objective` (the censoring objective), `mlac/inner_lr`, `mlac/inner_batch_size`.

    >>> from hf_immunize import MLACConfig, MLACTrainer
    >>> from hf_immunize.data.toy import BiosWorld, make_bios_world
    >>> from hf_immunize.testing import tiny_encoder_classifier, tiny_tokenizer
    >>> world = make_bios_world(n=100)
    >>> args = MLACConfig(
    ...     output_dir="/tmp/mlac-doctest", max_steps=2, inner_steps=2, inner_batch_sizes=[4],
    ...     per_device_train_batch_size=4, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
    ...     disable_tqdm=True,
    ... )
    >>> trainer = MLACTrainer(
    ...     model=tiny_encoder_classifier(num_labels=8), args=args, train_dataset=world.train,
    ...     harmful_dataset=BiosWorld.with_label(world.train, "gender"), processing_class=tiny_tokenizer(),
    ... )
    >>> from transformers import PrinterCallback
    >>> trainer.remove_callback(PrinterCallback)  # keep the doctest's output clean
    >>> _ = trainer.train()
    >>> "mlac/head_adjusted_loss" in trainer.state.log_history[0]
    True
    """

    _tag_names = ["hf-immunize", "mlac"]
    _name = "MLAC"
    _paper = {
        "title": "Self-Destructing Models: Increasing the Costs of Harmful Dual Uses of Foundation Models",
        "id": "2211.14946",
        "citation": _CITATION,
    }
    # The desired loss is a sum over labels (examples or tokens) divided by the window's label count, which __init__
    # makes the Trainer count (`num_items_in_batch`); the censoring gradient is added once per window.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: MLACConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        model_init=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        *,
        harmful_dataset: Dataset | None = None,
        peft_config=None,
        harmful_data_collator=None,
    ):
        # Every check runs before any compute: config, model, datasets.
        args = _as_mlac_config(args, model)
        if model_init is not None or compute_loss_func is not None:
            raise ValueError(
                "MLACTrainer does not take `model_init` or `compute_loss_func`: it computes the desired-task loss "
                "itself (sum over labels / labels in the accumulation window). Pass a model."
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a model instance (PreTrainedModel or PeftModel), got {type(model)}.")
        if harmful_dataset is None:
            raise ValueError(
                "`harmful_dataset` is required: MLAC's simulated adversary fine-tunes on it (the blocked task, e.g. "
                "bios with gender labels, or harmful prompt/completion rows)."
            )
        if not isinstance(harmful_dataset, Dataset):
            raise TypeError(
                f"`harmful_dataset` must be a map-style `datasets.Dataset` (its stream samples by index, so that a "
                f"resumed run draws the same batches), got {type(harmful_dataset).__name__}."
            )
        if peft_config is not None:
            if _is_peft_model(model):
                raise ValueError("`model` is already a PeftModel: pass it without `peft_config`, or the base model.")
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.task = _resolve_task(model, args.task)
        self.weights = _resolve_weights(args, self.task, model)
        self.reset_head = self.weights.pop("reset_head")
        _check_attention(model, args, self.weights["d"])

        tokenize_args = (processing_class, self.task, args.max_length)
        train_dataset = tokenize_rows(train_dataset, *tokenize_args, "train_dataset")
        eval_dataset = tokenize_rows(eval_dataset, *tokenize_args, "eval_dataset")
        harmful_dataset = tokenize_rows(harmful_dataset, *tokenize_args, "harmful_dataset")
        self.adversary_num_labels = None
        if self.task == "classification":
            self.adversary_num_labels = _harmful_classes(harmful_dataset, args, model, self.reset_head)
        if data_collator is None:
            data_collator = PadCollator(pad_token_id_of(processing_class, model))

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self._refuse_sharded_training("MLAC")
        if self.is_fsdp_enabled:
            head = _head_parameter_names(model, self.task) if self.reset_head else ()
            check_shared_episode(args, model, reset_head_names=[n for n in head if n is not None])
        self._shared_episode = False  # True while an FSDP2 episode runs: losses become shares of global means
        # Our compute_loss divides a label sum by `num_items_in_batch`, so have the Trainer count it, unshifted for
        # classifier labels (one per example) and shifted for next-token labels.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = self.task == "causal_lm"
        self.harmful_stream = build_paired_stream(
            self,
            harmful_dataset,
            batch_size=args.harmful_batch_size or args.per_device_train_batch_size * args.gradient_accumulation_steps,
            name="harmful",
            collate_fn=harmful_data_collator,
        )
        self.episode_generator = torch.Generator().manual_seed(args.seed)
        self.inner_lr = torch.tensor(float(args.inner_learning_rate), requires_grad=True)
        self._inner_lr_optimizer = torch.optim.Adam([self.inner_lr], lr=args.inner_learning_rate_lr)
        self._window_loss: torch.Tensor | None = None
        self.last_episode: dict | None = None

    # ---- desired task ------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, **self._forward_kwargs())
        total, count = _summed_loss(outputs.logits, labels, self.task)
        denominator = num_items_in_batch if num_items_in_batch is not None else count
        loss = total / torch.as_tensor(denominator, device=total.device).clamp(min=1)
        if model.training:
            loss = self.args.desired_loss_weight * loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._window_loss = loss if self._window_loss is None else self._window_loss + loss
        if self.accelerator.sync_gradients:  # last micro-batch of the window: the optimizer steps next
            window_loss, self._window_loss = self._window_loss, None
            if self.accelerator.num_processes > 1:
                window_loss = self.accelerator.reduce(window_loss, reduction="mean")
            self._log_metric("mlac/desired_loss", window_loss)
            if self._censoring_active():
                self._add_censoring_gradient(model)
        return loss

    # ---- the simulated adversary -------------------------------------------------------------------------------

    def _censoring_active(self) -> bool:
        w = self.weights
        return bool(w["c"] or w["d"] or w["e"])

    def _forward_kwargs(self) -> dict:
        return {"use_cache": False} if self.task == "causal_lm" else {}

    def _add_censoring_gradient(self, model) -> None:
        args = self.args
        unwrapped = self.accelerator.unwrap_model(model)
        outer = {n: p for n, p in unwrapped.named_parameters() if p.requires_grad}
        episode = self._draw_episode(unwrapped)
        adapted, overrides = self._adversary_tensors(unwrapped, outer, episode)
        optimizer = FunctionalAdam() if args.inner_optimizer == "adam" else FunctionalSGD()
        params = list(outer.values())
        sharded = is_sharded(params)
        context = contextlib.ExitStack()
        context.enter_context(preserved_rng(args.device))
        context.enter_context(_attention_context(unwrapped))
        context.enter_context(self.compute_loss_context_manager())
        if sharded:
            with context, stashed_grads(params):  # the desired-task gradient waits while the episode back-propagates
                result = self._run_shared_episode(unwrapped, outer, adapted, episode, optimizer)
            with torch.no_grad():
                for p, g in zip(params, result.grads, strict=True):
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    local_tensor(p.grad).add_(g.to(p.grad.dtype))  # a sum over all processes already
            self._log_episode(episode, result)
            episode.pop("inner_batches"), episode.pop("outer_batch")
            self.last_episode = {**episode, "result": result}
            return
        with context:
            result = run_episode(
                unwrapped,
                outer,
                adapted,
                episode["inner_batches"],
                episode["outer_batch"],
                self._inner_loss,
                self._outer_terms,
                optimizer=optimizer,
                lr=episode["lr"],
                num_differentiated=args.num_differentiated_steps,
                max_grad_norm=args.inner_max_grad_norm,
                grad_norm_weight=self.weights["d"],
                overrides=overrides,
            )
        buffer = GradientBuffer(params)
        buffer.add_(result.grads)
        if self.accelerator.num_processes > 1:  # each process ran its own episode: average them like DDP does
            buffer.flat.copy_(self._reduce_sum(buffer.flat) / self.accelerator.num_processes)
        with torch.no_grad():
            for p, g in zip(params, buffer.views, strict=True):
                if p.grad is None:
                    p.grad = g.to(p.dtype).clone()
                else:
                    p.grad.add_(g.to(p.grad.dtype))
        if args.learn_inner_learning_rate and result.lr_grad is not None:
            self._step_inner_lr(result.lr_grad)
        self._log_episode(episode, result)
        episode.pop("inner_batches"), episode.pop("outer_batch")
        self.last_episode = {**episode, "result": result}

    # ---- checkpoints and card ----------------------------------------------------------------------------------

    def _immunize_state_dict(self) -> dict:
        return {
            "harmful_stream": self.harmful_stream.state_dict(),
            "episode_generator": self.episode_generator.get_state(),
            "inner_lr": self.inner_lr.detach().clone(),
            "inner_lr_optimizer": self._inner_lr_optimizer.state_dict(),
        }

    def _load_immunize_state_dict(self, state: dict) -> None:
        self.harmful_stream.load_state_dict(state["harmful_stream"])
        self.episode_generator.set_state(state["episode_generator"])
        with torch.no_grad():
            self.inner_lr.copy_(state["inner_lr"])
        self._inner_lr_optimizer.load_state_dict(state["inner_lr_optimizer"])

    def _card_hyperparameters(self) -> dict:
        args = self.args
        meta = args.meta_gradient + (f"({args.truncation_steps})" if args.meta_gradient == "truncated" else "")
        return {
            "inner_steps (K)": args.inner_steps,
            "inner_optimizer": args.inner_optimizer,
            "inner_learning_rate": "learned" if args.learn_inner_learning_rate else args.inner_learning_rate_range,
            "inner_batch_sizes": args.inner_batch_sizes,
            "adversary_params": args.adversary_params,
            "reset_adversary_head": self.reset_head,
            "meta_gradient": meta,
            "weights (a, c, d, e)": (
                args.desired_loss_weight,
                self.weights["c"],
                self.weights["d"],
                self.weights["e"],
            ),
            "harmful_loss_bound": args.harmful_loss_bound,
        }
