"""MLAC's episode bookkeeping, mixed into :class:`~hf_immunize.methods.mlac.mlac_trainer.MLACTrainer`: drawing an
episode (batch size, learning rate, fresh head, inner and outer batches), the adversary's tensors, the inner and outer
losses handed to :func:`~hf_immunize.methods.mlac.inner_loop.run_episode`, the FSDP2 shared episode, the learned
inner learning rate's own step, and the episode's log. The trainer file keeps the method's update only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_immunize.core.sharding import all_gather_rows
from hf_immunize.methods.mlac.inner_loop import bounded_harmful_loss, head_adjusted_loss, solve_head_adjustment
from hf_immunize.methods.mlac.model_checks import _classification_head, _head_parameter_names, _summed_loss, _upcast
from hf_immunize.methods.mlac.shared_episode import run_shared_first_order_episode

__all__ = ["EpisodeMixin"]

_LR_GRAD_CLIP = 10.0  # the learned inner lr's gradient clip [code]


class EpisodeMixin:
    """The parts of an MLAC step around the episode itself; needs the trainer's `args`, `weights`, `task`,
    `harmful_stream`, `episode_generator`, `reset_head` and (with a learned rate) `inner_lr` and its optimizer."""

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
