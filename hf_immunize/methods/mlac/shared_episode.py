"""MLAC's first-order adversary episode on FSDP2-sharded weights: one episode shared by all processes.

:func:`~hf_immunize.methods.mlac.inner_loop.run_episode` passes fast weights to `torch.func.functional_call`, which
FSDP2 cannot serve: its forward gathers the full weights from the sharded parameters into its own tensors, so a
swapped-in tensor is bypassed and `torch.autograd.grad` with respect to a shard fails. In first order no gradient
flows through the inner updates (∂θ_t/∂θ = I), so the episode can instead *move the model itself* along the
adversary's trajectory and take every gradient with `backward()`:

1. save the local shards of the adapted weights;
2. at each point θ_0 … θ_K: write θ_t into the shards (in place), run the outer batch and back-propagate the
   defender's term (weighted 1/(K+1)) into the defender's gradient, which sums the gradients at θ_0 … θ_K exactly as
   `run_episode` does in first order;
3. between points: back-propagate the adversary's loss on its inner batch, clip by the global norm (squares summed
   over the shards), and take the functional SGD/Adam step on the local shards;
4. restore the shards bit-exactly from the saved copy.

All processes move the same shared weights, so the episode is one episode over the union of their batches: every
loss is this process's share of a mean over all processes (the trainer's loss functions divide by the global count),
scaled by the number of processes to undo FSDP's gradient averaging. For a classifier, the adversary's fresh head is
a small replicated tensor applied by a forward hook on the model's head (the model's own head output is discarded);
its gradient is summed over the processes explicitly. Memory stays flat in K and no process gathers a full weight or
gradient outside FSDP's own forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hf_immunize.core.perturbation import GradientBuffer
from hf_immunize.core.sharding import backward_into, local_tensors, reshard, sum_over_shards
from hf_immunize.methods.mlac.inner_loop import NORM_EPS, Batch, EpisodeResult, FunctionalAdam, FunctionalSGD

__all__ = ["check_shared_episode", "run_shared_first_order_episode"]


def check_shared_episode(args, model, reset_head_names: Sequence[str] = ()) -> None:
    """Refuses, when the trainer is built under FSDP2, what the shared episode cannot run: a differentiated inner step
    (second order, truncated) and an adversary that adapts frozen tensors (`reset_head_names`: the head a classifier's
    fresh adversary head replaces, which it does not adapt)."""
    if args.inner_steps > 0 and args.num_differentiated_steps > 0:
        raise ValueError(
            f"MLAC under FSDP2 supports meta_gradient='first_order' only, got {args.meta_gradient!r}"
            + (f" (truncation_steps={args.truncation_steps})" if args.meta_gradient == "truncated" else "")
            + ": a differentiated inner step needs `torch.autograd.grad(create_graph=True)` with respect to fast "
            "weights passed by `torch.func.functional_call`, and FSDP2's forward gathers its own copies of the "
            "sharded parameters, so neither reaches them. Set meta_gradient='first_order' (memory flat in K), or "
            "train second order without FSDP (one device or DDP, with LoRA for large models)."
        )
    if args.adversary_params == "all":
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad and n not in reset_head_names]
        if frozen:
            raise ValueError(
                f"adversary_params='all' adapts frozen weights ({len(frozen)} tensors, e.g. {frozen[0]!r}), which "
                "FSDP2's backward gives no gradient. Under FSDP2 use adversary_params='lora' (the adapters) or "
                "'head', or train every weight."
            )


def run_shared_first_order_episode(
    model: nn.Module,
    outer: Mapping[str, torch.Tensor],
    adapted: Sequence[str],
    inner_batches: Sequence[Batch],
    outer_batch: Batch,
    inner_fn: Callable,
    outer_fn: Callable,
    *,
    optimizer: FunctionalSGD | FunctionalAdam,
    lr: float,
    scale: float,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    max_grad_norm: float | None = 100.0,
    fresh_head: tuple[nn.Module, torch.Tensor] | None = None,
) -> EpisodeResult:
    """Runs one first-order episode on the model's own (sharded) parameters and returns the defender's gradient.

    Args:
        model: the FSDP2 model; its parameters are moved along the trajectory and restored bit-exactly.
        outer: name → the defender's parameter θ (`requires_grad=True`).
        adapted: names of the model parameters the adversary adapts (all trainable).
        inner_batches / outer_batch: `(inputs, targets)` of this process, as for `run_episode`.
        inner_fn / outer_fn: as for `run_episode`, but returning this process's share of the global means (and of
            the metrics), so that their sums over the processes are the episode's values.
        optimizer / lr / max_grad_norm: the adversary's functional optimizer, its learning rate (a float: a learned
            rate needs second order) and its clipping norm.
        scale: the number of processes (FSDP averages gradients over them).
        reduce_sum: sums a tensor over all processes.
        fresh_head: `(head module, initial weight (C, H))` for a classifier whose adversary gets a fresh bias-free
            head; the weight must be equal on every process.

    Returns:
        An :class:`~hf_immunize.methods.mlac.inner_loop.EpisodeResult` whose `grads` are the local shards of the
        defender's gradient (sums over all processes, ready to add into `.grad`).
    """
    if isinstance(lr, torch.Tensor) and lr.requires_grad:
        raise ValueError("a learned inner learning rate needs a differentiated step; this episode is first order.")
    parameters = dict(model.named_parameters())
    trainable = [p for p in parameters.values() if p.requires_grad]
    moving = [parameters[name] for name in adapted]
    frozen = [name for name, p in zip(adapted, moving, strict=True) if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"the adversary adapts frozen tensors ({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''}), "
            "which FSDP2's backward gives no gradient; use adversary_params='lora' or 'head' with adapters."
        )
    outer_params = list(outer.values())
    defender = GradientBuffer(local_tensors(outer_params))
    shards = local_tensors(moving)  # share storage with the parameters: writing them moves the model
    saved = [s.clone() for s in shards]
    values = [s.clone() for s in shards]
    if fresh_head is not None:
        values.append(fresh_head[1].detach().clone())
    state = optimizer.init(values)
    steps = len(inner_batches)
    weight = 1.0 / (steps + 1)

    head_weight: dict[str, torch.Tensor] = {}
    handle = None
    if fresh_head is not None:

        def apply_fresh_head(module, args, output):
            features = args[0]  # (B, H)
            return F.linear(features, head_weight["value"].to(features.dtype))  # (B, C), bias-free

        handle = fresh_head[0].register_forward_hook(apply_fresh_head)

    adversary_losses: list[float] = []
    norms: list[float] = []
    clipped: list[float] = []
    metric_sums: dict[str, float] = {}
    final_metrics: dict[str, float] = {}
    objective = 0.0
    try:
        for t in range(steps + 1):
            if t:  # θ_t: the adversary's weights written into the shards
                with torch.no_grad():
                    torch._foreach_copy_(shards, values[: len(shards)])
                reshard(model)  # the next forward gathers θ_t, not the weights a unit kept gathered
            if fresh_head is not None:
                head_weight["value"] = values[-1].detach()
            outputs = model(**outer_batch[0])
            term, adversary_loss, metrics = outer_fn(outputs, outer_batch[1])
            if term.requires_grad:
                defender.add_(backward_into(weight * term, outer_params, scale=scale, clear=trainable))
            keys = sorted(metrics)
            shares = [term.detach(), adversary_loss.detach()] + [torch.as_tensor(metrics[k]) for k in keys]
            totals = reduce_sum(torch.stack([s.to(defender.flat.device, torch.float64) for s in shares])).tolist()
            objective += weight * totals[0]
            adversary_losses.append(totals[1])
            final_metrics = dict(zip(keys, totals[2:], strict=True))
            for key, value in final_metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + weight * value
            del outputs, term, adversary_loss
            if t == steps:
                break

            inputs, targets = inner_batches[t]
            head = None
            if fresh_head is not None:
                head = head_weight["value"] = values[-1].detach().requires_grad_()
            inner_loss = inner_fn(model(**inputs), targets)
            grads = backward_into(inner_loss, moving, scale=scale)
            grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, values, strict=False)]
            for p in trainable:
                p.grad = None
            squares = sum_over_shards(_squares(grads), moving)
            if head is not None:  # replicated: its gradient is summed over the processes here, not by FSDP
                head_grad = torch.zeros_like(head) if head.grad is None else head.grad
                grads.append(reduce_sum(head_grad.detach().clone()) / scale)
                squares = squares + _squares(grads[-1:])
            norm = float((squares + NORM_EPS).sqrt())
            norms.append(norm)
            if max_grad_norm is not None and norm > max_grad_norm:
                grads = [g * (max_grad_norm / norm) for g in grads]
                model_squares = sum_over_shards(_squares(grads[: len(shards)]), moving)
                clipped.append(float((model_squares + _squares(grads[len(shards) :]) + NORM_EPS).sqrt()))
            else:
                clipped.append(norm)
            with torch.no_grad():
                values, state = optimizer.step(values, grads, state, lr)
            state = optimizer.detach_state(state)
            del inner_loss, grads
    finally:
        if handle is not None:
            handle.remove()
        with torch.no_grad():
            torch._foreach_copy_(shards, saved)
        for p in trainable:
            p.grad = None
        reshard(model)
    return EpisodeResult(
        grads=list(defender.views),
        lr_grad=None,
        objective=objective,
        adversary_losses=adversary_losses,
        inner_grad_norms=norms,
        clipped_grad_norms=clipped,
        metrics=metric_sums,
        final_metrics=final_metrics,
    )


def _squares(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of the local tensors, in fp64 (0-dim)."""
    device = tensors[0].device if tensors else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for t in tensors:
        if t.numel():
            total += torch.linalg.vector_norm(t.detach(), dtype=torch.float64).to(device) ** 2
    return total
