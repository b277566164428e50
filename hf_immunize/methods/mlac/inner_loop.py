"""MLAC's simulated adversary: a functional, differentiable fine-tuning episode, and the losses it is scored with.

One episode starts from the defender's weights θ (plus, for classifiers, a fresh random head), takes K optimizer
steps on the blocked task with functional SGD or Adam, and evaluates a defender objective at every point θ_0 … θ_K of
the trajectory. :func:`run_episode` returns the gradient of the trajectory mean of that objective with respect to θ.

How far the gradient looks through the inner updates is set by `num_differentiated`, the number of *last* inner
steps that are differentiated (reference `mlac.md` §8):

- `K` (second order): exact; every step's graph is kept, memory grows linearly in K;
- `k < K` (truncated): the first K−k updates are constants added to θ (θ_t = θ + Δ, ∂θ_t/∂θ = I), only the last k
  are differentiated;
- `0` (first order): every update is a constant; the outer gradient is the sum of the objective's gradients at each
  θ_t, taken and accumulated as soon as θ_t is reached, so memory stays flat in K.

Nothing here modifies a weight in place: the adapted tensors are new tensors passed to
`torch.func.functional_call`, so the model's own parameters (and its own head) are the same before and after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = [
    "EpisodeResult",
    "FunctionalAdam",
    "FunctionalSGD",
    "bounded_harmful_loss",
    "head_adjusted_loss",
    "run_episode",
    "solve_head_adjustment",
]

# Inside the square root of the recorded inner gradient norm, as in the official code: keeps it differentiable at 0.
NORM_EPS = 1e-8


# --------------------------------------------------------------------------------------------------------------------
# Functional optimizers: new tensors out, nothing updated in place, differentiable when the inputs carry a graph.
# --------------------------------------------------------------------------------------------------------------------


class FunctionalSGD:
    """`p ← p − lr·g`."""

    name = "sgd"

    def init(self, params: Sequence[torch.Tensor]) -> dict:
        return {}

    def step(self, params, grads, state: dict, lr):
        return [p - lr * g for p, g in zip(params, grads, strict=True)], state

    def detach_state(self, state: dict) -> dict:
        return state


class FunctionalAdam:
    """`torch.optim.Adam`'s update (same bias corrections, eps outside the square root), written functionally.

    The square root of the second moment is taken only where it is positive: d√v/dv is infinite at 0, which gives
    NaN gradients for entries whose gradient is exactly zero (e.g. embeddings of tokens absent from the batch).
    """

    name = "adam"

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.betas = betas
        self.eps = eps

    def init(self, params: Sequence[torch.Tensor]) -> dict:
        return {"step": 0, "m": [torch.zeros_like(p) for p in params], "v": [torch.zeros_like(p) for p in params]}

    def step(self, params, grads, state: dict, lr):
        beta1, beta2 = self.betas
        t = state["step"] + 1
        correction1, correction2 = 1 - beta1**t, 1 - beta2**t
        new_params, new_m, new_v = [], [], []
        for p, g, m, v in zip(params, grads, state["m"], state["v"], strict=True):
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            positive = v > 0
            root = torch.where(positive, torch.where(positive, v, 1.0).sqrt(), 0.0)  # √v with a finite gradient at 0
            denom = root / math.sqrt(correction2) + self.eps
            new_params.append(p - (lr / correction1) * m / denom)
            new_m.append(m)
            new_v.append(v)
        return new_params, {"step": t, "m": new_m, "v": new_v}

    def detach_state(self, state: dict) -> dict:
        return {"step": state["step"], "m": [m.detach() for m in state["m"]], "v": [v.detach() for v in state["v"]]}


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------


def bounded_harmful_loss(per_item_nll: torch.Tensor, log_probs: torch.Tensor, bound: str) -> torch.Tensor:
    """The harmful loss the defender maximises, per item (example or token), made bounded.

    Args:
        per_item_nll: `-log p(label)`, shape `(N,)`.
        log_probs: the full log-distribution of each item, shape `(N, C)` (C classes or the vocabulary).
        bound: `"clamp"`: `min(nll, log C)`, no push once an item is predicted at or below chance; `"entropy"`: the
            entropy of the prediction (at most `log C`, maximal for the uniform distribution); `"none"`: the raw
            NLL (unbounded: maximising it can diverge).
    """
    if bound == "clamp":
        return per_item_nll.clamp(max=math.log(log_probs.shape[-1]))
    if bound == "entropy":
        return -(log_probs.exp() * log_probs).sum(-1)
    if bound == "none":
        return per_item_nll
    raise ValueError(f"`harmful_loss_bound` must be 'clamp', 'entropy' or 'none', got {bound!r}.")


@torch.no_grad()
def solve_head_adjustment(
    logits: torch.Tensor, labels: torch.Tensor, bound: float = 1.0, max_iter: int = 500, tol: float = 1e-10
) -> torch.Tensor:
    """`W* = argmin_{W ∈ [−b, b]^{C×C}} mean_i CE(z_i W, y_i)`: the best bounded re-mapping of the logits.

    A convex problem, solved by accelerated projected gradient (FISTA) in fp64 with step 1/L, where
    `L = ½·mean_i ‖z_i‖²` bounds the Hessian (the softmax Hessian has norm ≤ ½). Returns `W*` (C, C) in the dtype
    of `logits`, detached.
    """
    z = logits.detach().to(torch.float64)  # (B, C)
    y = labels.detach()
    n, c = z.shape
    one_hot = F.one_hot(y, c).to(z.dtype)  # (B, C)
    lipschitz = max(0.5 * float(z.pow(2).sum(1).mean()), 1e-12)
    w = torch.zeros(c, c, dtype=z.dtype, device=z.device)
    previous, momentum = w, 1.0
    for _ in range(max_iter):
        probs = torch.softmax(z @ w, dim=-1)  # (B, C)
        grad = z.T @ (probs - one_hot) / n  # (C, C)
        new = (w - grad / lipschitz).clamp(-bound, bound)
        new_momentum = (1 + math.sqrt(1 + 4 * momentum * momentum)) / 2
        w_next = new + ((momentum - 1) / new_momentum) * (new - previous)
        change = float((new - previous).abs().max())
        previous, w, momentum = new, w_next.clamp(-bound, bound), new_momentum
        if change < tol:
            break
    return previous.to(logits.dtype)


def head_adjusted_loss(logits: torch.Tensor, labels: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """MLAC's "LinAdv": the cross-entropy of the logits after the best bounded linear re-mapping `W*`.

    `W*` minimises over a set that does not depend on the logits, so by Danskin's theorem the gradient with respect
    to the logits is the partial gradient at the fixed `W*`: it is solved without a graph and detached. At most
    `log C` (W = 0), whatever the logits: a bounded quantity for the defender to maximise.
    """
    w = solve_head_adjustment(logits, labels, bound)
    return F.cross_entropy(logits @ w, labels)


# --------------------------------------------------------------------------------------------------------------------
# The episode
# --------------------------------------------------------------------------------------------------------------------

# A batch is `(model inputs, targets)`: the inputs go to the model, the targets only to the loss functions.
Batch = tuple[dict, object]
# fn(outputs, targets) -> (defender objective to minimise at this point, adversary loss at this point, metrics)
OuterFn = Callable[[object, object], tuple[torch.Tensor, torch.Tensor, dict[str, float]]]
InnerFn = Callable[[object, object], torch.Tensor]


@dataclass
class EpisodeResult:
    """What one episode produced.

    Attributes:
        grads: ∂(episode objective)/∂θ, one entry per outer tensor (`None` where the objective does not reach it).
        lr_grad: ∂(mean adversary loss over the trajectory)/∂lr for a learned learning rate, else `None`.
        objective: the episode objective (trajectory mean of the defender terms, plus the norm penalty).
        adversary_losses: the adversary's loss on the outer batch at θ_0 … θ_K.
        inner_grad_norms: the global norm of each inner gradient before clipping, then the final one at θ_K.
        clipped_grad_norms: the global norm of each inner gradient as applied (after clipping).
        metrics: the trajectory means of what the outer function reported.
        final_metrics: what it reported at θ_K.
    """

    grads: list[torch.Tensor | None]
    lr_grad: torch.Tensor | None
    objective: float
    adversary_losses: list[float]
    inner_grad_norms: list[float]
    clipped_grad_norms: list[float]
    metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)


def _with_identity_path(value: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """`value` exactly, with ∂/∂anchor = I: the update `value − anchor` is treated as a constant."""
    if not anchor.requires_grad:
        return value.detach().requires_grad_()
    return value.detach() + (anchor - anchor.detach())


def _global_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(NORM_EPS + sum(g.pow(2).sum() for g in grads))


def _accumulate(total: list, grads: Sequence[torch.Tensor | None]) -> None:
    for i, g in enumerate(grads):
        if g is not None:
            total[i] = g.detach() if total[i] is None else total[i] + g.detach()


def run_episode(
    model: nn.Module,
    outer: Mapping[str, torch.Tensor],
    adapted: Mapping[str, torch.Tensor],
    inner_batches: Sequence[Batch],
    outer_batch: Batch,
    inner_fn: InnerFn,
    outer_fn: OuterFn,
    *,
    optimizer: FunctionalSGD | FunctionalAdam,
    lr: float | torch.Tensor,
    num_differentiated: int,
    max_grad_norm: float | None = 100.0,
    grad_norm_weight: float = 0.0,
    overrides: Mapping[str, torch.Tensor] | None = None,
) -> EpisodeResult:
    """Runs one adversary episode and returns the gradient of the defender's episode objective.

    The episode objective is `mean_{t=0..K} outer_fn(θ_t)[0] + grad_norm_weight · mean(norms)`, where `norms` are
    the K inner gradient norms and the norm of the adversary loss's gradient on the outer batch at θ_K.

    Args:
        model: called as `functional_call(model, {**overrides, **fast weights}, kwargs=inputs)`; its own
            parameters stand for every tensor not passed, so gradients reach them directly.
        outer: name → the defender's tensor θ (a parameter of `model`, `requires_grad=True`): the variables the
            returned gradient is taken for.
        adapted: name → initial value of each tensor the adversary adapts. A value that is one of the `outer`
            tensors is adapted starting from θ (gradient flows through it); any other value (a fresh head, a frozen
            weight) is a constant start.
        inner_batches: one `(inputs, targets)` batch per inner step (K = their number).
        outer_batch: the `(inputs, targets)` batch every point of the trajectory is scored on.
        inner_fn: `(outputs, targets) -> adversary loss` minimised by the inner steps.
        outer_fn: `(outputs, targets) -> (defender term to minimise, adversary loss, metrics)` at each point.
        optimizer: :class:`FunctionalSGD` or :class:`FunctionalAdam`.
        lr: the inner learning rate (a float, or a 0-dim tensor that requires grad when it is learned).
        num_differentiated: how many of the last inner steps are differentiated (K = second order, 0 = first).
        max_grad_norm: inner gradients with a global norm above it are rescaled to it (the norm detached).
        grad_norm_weight: weight of the gradient-norm penalty. The norms of detached (not differentiated) steps
            count as constants; the final norm at θ_K is always differentiated (a Hessian-vector product).
        overrides: fixed tensors passed to every call (e.g. a zero bias for a bias-free fresh head).
    """
    overrides = dict(overrides or {})
    outer_names = list(outer)
    outer_values = [outer[n] for n in outer_names]
    outer_ids = {id(v) for v in outer_values}
    names = list(adapted)
    # The tensor each adapted value keeps its identity path to: θ itself, or a leaf standing for a constant start.
    anchors = [v if id(v) in outer_ids else v.detach().requires_grad_() for v in (adapted[n] for n in names)]
    steps = len(inner_batches)
    first_differentiated = steps - max(0, min(num_differentiated, steps))
    learned_lr = isinstance(lr, torch.Tensor) and lr.requires_grad
    weight = 1.0 / (steps + 1)

    def call(values: Sequence[torch.Tensor], inputs: dict):
        return functional_call(model, {**overrides, **dict(zip(names, values, strict=True))}, args=(), kwargs=inputs)

    grads: list[torch.Tensor | None] = [None] * len(outer_values)
    graph_terms: list[torch.Tensor] = []  # defender terms that depend on θ through differentiated updates
    graph_adversary: list[torch.Tensor] = []  # adversary losses that depend on lr (for a learned lr)
    graph_norms: list[torch.Tensor] = []
    adversary_losses: list[float] = []
    norms: list[float] = []
    clipped: list[float] = []
    metric_sums: dict[str, float] = {}
    objective = 0.0

    values = list(anchors)  # θ_0: the adapted tensors at their start, each on its identity path
    state = optimizer.init([v.detach() for v in values])
    for t in range(steps + 1):
        in_graph = t > first_differentiated  # reached through a differentiated update
        outputs = call(values, outer_batch[0])
        term, adversary_loss, metrics = outer_fn(outputs, outer_batch[1])
        adversary_losses.append(float(adversary_loss.detach()))
        objective += weight * float(term.detach())
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + weight * float(value)
        if in_graph:
            graph_terms.append(term)
            graph_adversary.append(adversary_loss)
        elif term.requires_grad:  # θ_t = θ + constant: take its gradient now and free its graph
            keep = t == steps and bool(grad_norm_weight)  # the final norm below reuses this forward
            _accumulate(grads, torch.autograd.grad(weight * term, outer_values, allow_unused=True, retain_graph=keep))
        if t == steps:
            if grad_norm_weight:
                # Differentiable at θ_K (a Hessian-vector product), through whatever path θ_K has to θ.
                final = torch.autograd.grad(adversary_loss, values, create_graph=True, allow_unused=True)
                final_norm = _global_norm([g for g in final if g is not None])
                norms.append(float(final_norm.detach()))
                graph_norms.append(final_norm)
            break
        del outputs, term, adversary_loss

        differentiate = t >= first_differentiated  # this update is differentiated
        if not differentiate:
            values = [v.detach().requires_grad_() for v in values]
        inputs, targets = inner_batches[t]
        inner_loss = inner_fn(call(values, inputs), targets)
        step_grads = torch.autograd.grad(inner_loss, values, create_graph=differentiate, allow_unused=True)
        step_grads = [torch.zeros_like(v) if g is None else g for v, g in zip(values, step_grads, strict=True)]
        norm = _global_norm(step_grads)
        norms.append(float(norm.detach()))
        if differentiate:
            graph_norms.append(norm)
        if max_grad_norm is not None and norms[-1] > max_grad_norm:
            step_grads = [g * (max_grad_norm / norm.detach()) for g in step_grads]
            clipped.append(float(_global_norm([g.detach() for g in step_grads])))
        else:
            clipped.append(norms[-1])
        if differentiate:
            values, state = optimizer.step(values, step_grads, state, lr)
        else:
            with torch.no_grad():
                step_lr = lr.detach() if isinstance(lr, torch.Tensor) else lr
                new_values, state = optimizer.step(values, step_grads, state, step_lr)
            state = optimizer.detach_state(state)
            # θ_{t+1} = θ + constant: the next point keeps only the identity path to its anchor.
            values = [_with_identity_path(v, a) for v, a in zip(new_values, anchors, strict=True)]
        del inner_loss, step_grads

    penalty = None
    if grad_norm_weight and norms:
        # The mean over all recorded norms; those of detached steps are constants here.
        constant = sum(norms) - sum(float(n.detach()) for n in graph_norms)
        penalty = grad_norm_weight * (sum(graph_norms) + constant) / len(norms)
        objective += float(penalty.detach())

    lr_grad = None
    if learned_lr and graph_adversary:
        lr_grad = torch.autograd.grad(weight * sum(graph_adversary), lr, retain_graph=True, allow_unused=True)[0]
    graph_objective = [weight * term for term in graph_terms]
    if penalty is not None and penalty.requires_grad:
        graph_objective.append(penalty)
    if graph_objective:
        total = sum(graph_objective)
        if total.requires_grad:
            _accumulate(grads, torch.autograd.grad(total, outer_values, allow_unused=True))
    return EpisodeResult(
        grads=grads,
        lr_grad=lr_grad,
        objective=objective,
        adversary_losses=adversary_losses,
        inner_grad_norms=norms,
        clipped_grad_norms=clipped,
        metrics=metric_sums,
        final_metrics={key: float(value) for key, value in metrics.items()},
    )
