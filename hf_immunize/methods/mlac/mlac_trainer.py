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
import math

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import _is_peft_model, unwrap_peft_model

from hf_immunize.core.paired import build_paired_stream
from hf_immunize.core.perturbation import GradientBuffer, preserved_rng
from hf_immunize.core.sharding import all_gather_rows, is_sharded, local_tensor, stashed_grads
from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin
from hf_immunize.data.tokenize import PadCollator, pad_token_id_of, tokenize_rows
from hf_immunize.methods.mlac.inner_loop import (
    FunctionalAdam,
    FunctionalSGD,
    bounded_harmful_loss,
    head_adjusted_loss,
    run_episode,
    solve_head_adjustment,
)
from hf_immunize.methods.mlac.mlac_config import MLACConfig
from hf_immunize.methods.mlac.shared_episode import check_shared_episode, run_shared_first_order_episode

__all__ = ["MLACTrainer"]

_CITATION = """@inproceedings{henderson2023selfdestructing,
  title     = {Self-Destructing Models: Increasing the Costs of Harmful Dual Uses of Foundation Models},
  author    = {Henderson, Peter and Mitchell, Eric and Manning, Christopher D. and Jurafsky, Dan and Finn, Chelsea},
  booktitle = {Proceedings of the 2023 AAAI/ACM Conference on AI, Ethics, and Society},
  year      = {2023},
  url       = {https://arxiv.org/abs/2211.14946}
}"""
_HEAD_ATTRIBUTES = ("classifier", "score", "classification_head", "head")
_LR_GRAD_CLIP = 10.0  # the learned inner lr's gradient clip [code]


class MLACTrainer(ImmunizeTrainerMixin, Trainer):
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

    def _run_shared_episode(self, unwrapped, outer: dict, adapted: dict, episode: dict, optimizer):
        """FSDP2: one first-order episode on the model's own shards, shared by all processes."""
        head_init = episode["head_init"]
        fresh_head = (_classification_head(unwrapped)[1], head_init) if head_init is not None else None
        names = [n for n, value in adapted.items() if value is not head_init]
        self._shared_episode = True
        try:
            return run_shared_first_order_episode(
                unwrapped,
                outer,
                names,
                episode["inner_batches"],
                episode["outer_batch"],
                self._inner_loss,
                self._outer_terms,
                optimizer=optimizer,
                lr=episode["lr"],
                scale=self.accelerator.num_processes,
                reduce_sum=self._reduce_sum,
                max_grad_norm=self.args.inner_max_grad_norm,
                fresh_head=fresh_head,
            )
        finally:
            self._shared_episode = False

    def _draw_episode(self, unwrapped) -> dict:
        """Batch size, learning rate and fresh head from the trainer's generator; batches from the harmful stream."""
        args, generator = self.args, self.episode_generator
        sizes = args.inner_batch_sizes
        batch_size = sizes[int(torch.randint(len(sizes), (1,), generator=generator))]
        if args.learn_inner_learning_rate:
            lr = self.inner_lr
        else:
            low, high = args.inner_learning_rate_range
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            lr = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        head_init = None
        if self.reset_head:
            head = _classification_head(unwrapped)[1]
            bound = 1.0 / math.sqrt(head.in_features)  # nn.Linear's default init, U(-1/√fan_in, 1/√fan_in)
            head_init = torch.empty(self.adversary_num_labels, head.in_features, dtype=torch.float32)
            head_init.uniform_(-bound, bound, generator=generator)
            head_init = head_init.to(device=head.weight.device, dtype=head.weight.dtype)  # (C, H)
        stream = self.harmful_stream
        inner_indices = [stream.next_indices(batch_size) for _ in range(args.inner_steps)]
        outer_indices = stream.next_indices()
        return {
            "batch_size": batch_size,
            "lr": lr,
            "head_init": head_init,
            "inner_indices": inner_indices,
            "outer_indices": outer_indices,
            "inner_batches": [self._split(stream.collate(ix)) for ix in inner_indices],
            "outer_batch": self._split(stream.collate(outer_indices)),
        }

    def _split(self, batch: dict) -> tuple[dict, torch.Tensor]:
        batch = self._prepare_inputs(batch)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return {**inputs, **self._forward_kwargs()}, batch["labels"]

    def _adversary_tensors(self, unwrapped, outer: dict, episode: dict) -> tuple[dict, dict]:
        """The tensors the adversary adapts (name → start value) and the fixed overrides (a bias-free head)."""
        mode = self.args.adversary_params
        all_params = dict(unwrapped.named_parameters())
        # A classifier's adversary always trains its head; a causal LM's head (lm_head) only under "all" / "head".
        with_head = mode == "head" or self.task == "classification"
        head_names = [n for n in _head_parameter_names(unwrapped, self.task) if n is not None] if with_head else []
        if mode == "all":
            names = list(all_params)
        elif mode == "lora":
            names = [n for n in all_params if "lora_" in n] + head_names
        else:
            names = list(head_names)
        overrides = {}
        if self.reset_head:  # the model's own head is swapped out for the fresh, bias-free one
            weight_name, bias_name = _head_parameter_names(unwrapped, self.task)
            names = [n for n in names if n not in (weight_name, bias_name)]
            if bias_name is not None:
                overrides[bias_name] = episode["head_init"].new_zeros(self.adversary_num_labels)  # (C,)
        adapted = {n: outer.get(n, all_params[n]) for n in dict.fromkeys(names)}
        if self.reset_head:
            adapted[weight_name] = episode["head_init"]
        return adapted, overrides

    def _inner_loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        total, count = _summed_loss(outputs.logits, labels, self.task)
        if self._shared_episode:  # this process's share of the mean over every process's batch
            count = self._reduce_sum(count)
        return total / count.clamp(min=1)

    def _outer_terms(self, outputs, labels: torch.Tensor):
        """The defender's term at one point of the trajectory: −c·bounded harmful loss − e·head-adjusted loss."""
        w, args = self.weights, self.args
        logits = _upcast(outputs.logits)
        if self.task == "causal_lm":
            logits, labels = logits[:, :-1, :], labels[:, 1:]
        mask = labels.ne(-100)
        selected = logits[mask]  # (N, C) or (N, V): only the scored items
        targets = labels[mask]  # (N,)
        log_probs = torch.log_softmax(selected, dim=-1)
        nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
        if self._shared_episode:
            return self._shared_outer_terms(selected, targets, log_probs, nll)
        adversary_loss = nll.mean()
        term = torch.zeros((), device=logits.device)
        metrics = {"harmful_loss": float(adversary_loss.detach())}
        if self.task == "classification":
            metrics["harmful_accuracy"] = float((selected.argmax(-1) == targets).float().mean())
        if w["c"]:
            bounded = bounded_harmful_loss(nll, log_probs, args.harmful_loss_bound).mean()
            term = term - w["c"] * bounded
            metrics["harmful_loss_bounded"] = float(bounded.detach())
        if w["e"]:
            adjusted = head_adjusted_loss(selected, targets, args.head_adjustment_bound)
            term = term - w["e"] * adjusted
            metrics["head_adjusted_loss"] = float(adjusted.detach())
        return term, adversary_loss, metrics

    def _shared_outer_terms(self, selected, targets, log_probs, nll):
        """`_outer_terms` in an FSDP2 episode: this process's share of each mean over all processes' items.

        The head adjustment `W*` is solved on the logits of every process (gathered: N × C values, never weights),
        so all processes use the `W*` of the whole outer batch, as one process would.
        """
        w, args = self.weights, self.args
        count = self._reduce_sum(targets.new_tensor(targets.numel())).clamp(min=1).to(nll.dtype)
        adversary_loss = nll.sum() / count
        term = torch.zeros((), device=nll.device, dtype=nll.dtype)
        metrics = {"harmful_loss": adversary_loss.detach()}
        if self.task == "classification":
            metrics["harmful_accuracy"] = (selected.argmax(-1) == targets).sum().to(nll.dtype) / count
        if w["c"]:
            bounded = bounded_harmful_loss(nll, log_probs, args.harmful_loss_bound).sum() / count
            term = term - w["c"] * bounded
            metrics["harmful_loss_bounded"] = bounded.detach()
        if w["e"]:
            every_logit, every_target = all_gather_rows(selected.detach()), all_gather_rows(targets)
            mapping = solve_head_adjustment(every_logit, every_target, args.head_adjustment_bound)  # (C, C)
            adjusted = F.cross_entropy(selected @ mapping, targets, reduction="sum") / count
            term = term - w["e"] * adjusted
            metrics["head_adjusted_loss"] = adjusted.detach()
        return term, adversary_loss, metrics

    def _step_inner_lr(self, lr_grad: torch.Tensor) -> None:
        """One Adam step of the learned inner lr towards a *lower* adapted harmful loss (it helps the adversary)."""
        grad = lr_grad.detach().clone()
        if self.accelerator.num_processes > 1:
            grad = self._reduce_sum(grad) / self.accelerator.num_processes
        if not torch.isfinite(grad):
            # A NaN episode (the outer step is skipped by the mixin's guard too) must not poison the learned lr.
            self._log_metric("mlac/inner_lr_steps_skipped", 1.0)
            return
        self.inner_lr.grad = grad.clamp(-_LR_GRAD_CLIP, _LR_GRAD_CLIP)  # the norm of a scalar is its magnitude
        self._inner_lr_optimizer.step()
        self._inner_lr_optimizer.zero_grad(set_to_none=True)
        low, high = self.args.inner_learning_rate_bounds
        with torch.no_grad():
            self.inner_lr.clamp_(low, high)

    def _log_episode(self, episode: dict, result) -> None:
        losses, metrics = result.adversary_losses, result.metrics
        self._log_metric("mlac/objective", result.objective)
        self._log_metric("mlac/harmful_loss", sum(losses) / len(losses))
        self._log_metric("mlac/harmful_loss_start", losses[0])
        self._log_metric("mlac/harmful_loss_end", losses[-1])
        for key in ("harmful_loss_bounded", "head_adjusted_loss"):
            if key in metrics:
                self._log_metric(f"mlac/{key}", metrics[key])
        if self.task == "classification":
            self._log_metric("mlac/harmful_accuracy_end", result.final_metrics["harmful_accuracy"])
        if result.inner_grad_norms:
            self._log_metric("mlac/inner_grad_norm", sum(result.inner_grad_norms) / len(result.inner_grad_norms))
        if self.weights["d"]:
            self._log_metric("mlac/grad_norm_penalty", sum(result.inner_grad_norms) / len(result.inner_grad_norms))
        lr = episode["lr"]
        self._log_metric("mlac/inner_lr", float(lr.detach()) if isinstance(lr, torch.Tensor) else lr)
        self._log_metric("mlac/inner_batch_size", episode["batch_size"])

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


# --------------------------------------------------------------------------------------------------------------------
# Helpers: losses, heads, attention, data
# --------------------------------------------------------------------------------------------------------------------


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropy over the labelled items and their count (examples, or next tokens for a causal LM)."""
    if task == "causal_lm":
        logits, labels = logits[:, :-1, :], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    logits = _upcast(logits.reshape(-1, logits.shape[-1]))  # (N, C)
    labels = labels.reshape(-1)  # (N,)
    total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return total, labels.ne(-100).sum()


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    """Losses in at least fp32 (fp64 stays fp64: the exactness tests run in it)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _resolve_task(model, task: str) -> str:
    if task != "auto":
        return task
    base = unwrap_peft_model(model)
    name = type(base).__name__
    if name.endswith("ForCausalLM"):
        return "causal_lm"
    if name.endswith("ForSequenceClassification") or _find_head(base) is not None:
        return "classification"
    raise ValueError(
        f"`task='auto'` cannot tell what {name} is: set `task` to 'classification' (a sequence classifier with a "
        "linear head) or 'causal_lm'."
    )


def _resolve_weights(args: MLACConfig, task: str, model) -> dict:
    """The outer weights and head reset with their task-dependent defaults; refuses combinations that do not apply."""
    classifier = task == "classification"
    c = args.adapted_loss_weight if args.adapted_loss_weight is not None else (0.0 if classifier else 1.0)
    e = args.head_adjusted_loss_weight if args.head_adjusted_loss_weight is not None else (1.0 if classifier else 0.0)
    reset = args.reset_adversary_head if args.reset_adversary_head is not None else classifier
    if not classifier and e:
        raise ValueError(
            f"`head_adjusted_loss_weight` ({e}) applies to classifiers only: a causal LM's head is its vocabulary. "
            "Use `adapted_loss_weight` (the bounded harmful next-token loss)."
        )
    if not classifier and reset:
        raise ValueError("`reset_adversary_head=True` needs a classification head; a causal LM has none to reset.")
    if classifier and _find_head(unwrap_peft_model(model)) is None:
        raise ValueError(f"could not find the classification head of {type(unwrap_peft_model(model)).__name__}.")
    if args.adversary_params == "lora" and not _is_peft_model(model):
        raise ValueError("`adversary_params='lora'` needs LoRA adapters: pass `peft_config` or a PeftModel.")
    if args.adversary_params == "head" and not reset and not classifier and model.get_output_embeddings() is None:
        raise ValueError("`adversary_params='head'` needs an output embedding (lm_head) on a causal LM.")
    return {"c": float(c), "d": float(args.grad_norm_weight), "e": float(e), "reset_head": reset}


def _check_attention(model, args: MLACConfig, grad_norm_weight: float) -> None:
    """A double backward needs eager attention or SDPA (run with the MATH kernel); anything else is refused."""
    needs_double_backward = (args.num_differentiated_steps > 0 and args.inner_steps > 0) or grad_norm_weight > 0
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if needs_double_backward and implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"meta_gradient={args.meta_gradient!r} differentiates through inner gradients, which needs a second "
            f"derivative of attention; attn_implementation={implementation!r} has none. Load the model with "
            "`attn_implementation='eager'` (or 'sdpa', which MLAC runs with the MATH kernel), or use "
            "meta_gradient='first_order'."
        )


def _attention_context(model):
    """SDPA's fused CPU/CUDA kernels have no double backward; its MATH kernel has (plain differentiable ops)."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _find_head(model) -> tuple[str, nn.Linear] | None:
    """`(qualified name, Linear)` of a classifier's output projection (last Linear of a multi-layer head)."""
    for attribute in _HEAD_ATTRIBUTES:
        head = getattr(model, attribute, None)
        if head is None:
            continue
        active = getattr(head, "modules_to_save", None)  # PEFT's ModulesToSaveWrapper: the trainable copy
        if active is not None and getattr(head, "active_adapter", None) is not None:
            adapter = head.active_adapter
            head = active[adapter if isinstance(adapter, str) else adapter[0]]
        if isinstance(head, nn.Linear):
            return attribute, head
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if linears:
            return attribute, linears[-1]
    return None


def _classification_head(model) -> tuple[str, nn.Linear]:
    found = _find_head(unwrap_peft_model(model))
    if found is None:
        raise ValueError(f"could not find the classification head of {type(model).__name__}.")
    return found


def _head_parameter_names(model, task: str) -> tuple[str | None, str | None]:
    """Names (in `model.named_parameters()`) of the head's weight and bias the adversary uses."""
    if task == "causal_lm":
        head = model.get_output_embeddings()
    else:
        head = _classification_head(model)[1]
    names = {id(p): n for n, p in model.named_parameters()}
    bias = getattr(head, "bias", None)
    return names.get(id(head.weight)), names.get(id(bias)) if bias is not None else None


def _harmful_classes(harmful: Dataset, args: MLACConfig, model, reset_head: bool) -> int:
    column = "labels" if "labels" in harmful.column_names else "label"
    labels = harmful[column]
    if not labels or not all(isinstance(y, int) and not isinstance(y, bool) for y in labels):
        raise ValueError(f"`harmful_dataset` needs integer class labels in `{column}` for a classifier.")
    classes = args.adversary_num_labels or max(labels) + 1
    if min(labels) < 0 or max(labels) >= classes:
        raise ValueError(
            f"`harmful_dataset` labels span {min(labels)}..{max(labels)}, outside 0..{classes - 1} "
            f"(adversary_num_labels={args.adversary_num_labels!r})."
        )
    if not reset_head:
        head = _classification_head(model)[1]
        if classes > head.out_features:
            raise ValueError(
                f"reset_adversary_head=False makes the adversary use the model's own head ({head.out_features} "
                f"outputs), but the blocked task has {classes} classes."
            )
    return max(classes, 2)


def _as_mlac_config(args, model) -> MLACConfig:
    if args is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
        return MLACConfig(f"{str(name).rstrip('/').split('/')[-1]}-MLAC")
    if isinstance(args, MLACConfig):
        return args
    if isinstance(args, TrainingArguments):  # MLAC's fields at their defaults
        values = args.to_dict()
        values["hub_token"] = args.hub_token  # to_dict hides it
        return MLACConfig(**{k: v for k, v in values.items() if k in MLACConfig.__dataclass_fields__})
    raise TypeError(f"`args` must be an MLACConfig or TrainingArguments, got {type(args).__name__}.")
