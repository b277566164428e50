"""Weight-space perturbations shared by methods that simulate an attacker's step (Booster; MLAC's adversary later).

- :class:`GradientBuffer`: one flat fp32 buffer (fp64 for fp64 models) with a view per trainable tensor, so a
  gradient summed over several micro-batches can be all-reduced in one call and its global norm taken in one place.
- :func:`global_norm`: one L2 norm over all tensors together (not per tensor, not per layer).
- :func:`perturbed`: moves the weights by `-step_size · d / (‖d‖ + eps)` and restores them **bit-exactly** from a
  saved copy. Adding the step back (`w + α·d/n`) does not give `w` back in floating point, least of all in bf16.
- :func:`preserved_rng`: runs extra forward passes without consuming the global RNG, so that a method with a
  zero-weight regularizer leaves training bit-identical to plain SFT (dropout masks, sampler order).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence

import torch

__all__ = ["NORM_EPS", "GradientBuffer", "global_norm", "perturbed", "preserved_rng"]

# Added to the norm, not inside the square root, as in the official Booster code.
NORM_EPS = 1e-7


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all `tensors` taken jointly, in fp32 (a 0-dim tensor; `0.` for an empty list).

    >>> global_norm([torch.tensor([3.0]), torch.tensor([[4.0]])])
    tensor(5.)
    """
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return torch.zeros(())
    # Accumulated in fp64: a one-pass fp32 norm over millions of entries was off by up to ~5e-5 relative on CPU,
    # and the step length α/‖g‖, hence ∇h(w'), inherits that error.
    norms = [torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]
    if len({n.device for n in norms}) > 1:  # a model spread over devices with `device_map`
        norms = [n.to(norms[0].device) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms)).to(torch.float32)


class GradientBuffer:
    """A flat buffer with one view per parameter, shaped like it: fp32, or fp64 when a parameter is fp64.

    Lower precisions (bf16, fp16) accumulate in fp32; fp64 stays fp64, so a model trained in float64 (the exactness
    tests) gets its gradient without a round trip through fp32. Pass `dtype` to choose another.

    Summing per-micro-batch gradients here (instead of into `.grad`) leaves the optimizer's gradients untouched, so
    an accumulation window is never zeroed halfway. `flat` can be all-reduced in one collective.

    >>> params = [torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(3))]
    >>> buf = GradientBuffer(params)
    >>> buf.add_([torch.ones(2, 2), None])
    >>> buf.flat.tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        params = list(params)
        if not params:
            raise ValueError("`params` is empty: there is no trainable tensor to hold a gradient for.")
        self.shapes = [p.shape for p in params]
        numels = [p.numel() for p in params]
        device = params[0].device if device is None else device
        if dtype is None:
            dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        self.flat = torch.zeros(sum(numels), dtype=dtype, device=device)  # (N,)
        self.views = [v.view(shape) for v, shape in zip(self.flat.split(numels), self.shapes, strict=True)]

    def __len__(self) -> int:
        return self.flat.numel()

    def zero_(self) -> GradientBuffer:
        self.flat.zero_()
        return self

    def matches(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether this buffer has a view of the shape of every one of `params`, in order (so it can be reused)."""
        params = list(params)
        return len(params) == len(self.shapes) and all(p.shape == s for p, s in zip(params, self.shapes))

    def copy_(self, grads: Sequence[torch.Tensor | None]) -> None:
        """Overwrites the buffer with `grads` (`None` entries become zeros): `zero_()` then `add_(grads)` in one
        pass, so a buffer reused from step to step needs no zeroing first."""
        if len(grads) != len(self.views):
            raise ValueError(f"expected {len(self.views)} gradients, got {len(grads)}.")
        pairs = [(v, g) for v, g in zip(self.views, grads) if g is not None]
        if pairs:
            views, values = zip(*pairs, strict=True)
            torch._foreach_copy_(list(views), list(values))
        for v, g in zip(self.views, grads):
            if g is None:
                v.zero_()

    def add_(self, grads: Sequence[torch.Tensor | None], alpha: float = 1.0) -> None:
        """Adds `alpha * grads` (one entry per parameter; `None` means no gradient) into the buffer, in its dtype."""
        if len(grads) != len(self.views):
            raise ValueError(f"expected {len(self.views)} gradients, got {len(grads)}.")
        pairs = [(v, g.to(device=v.device, dtype=v.dtype)) for v, g in zip(self.views, grads) if g is not None]
        if pairs:
            views, values = zip(*pairs, strict=True)
            torch._foreach_add_(list(views), list(values), alpha=alpha)

    def norm(self) -> torch.Tensor:
        """Global L2 norm, accumulated in fp64 (see :func:`global_norm`), returned as fp32."""
        return torch.linalg.vector_norm(self.flat, dtype=torch.float64).to(torch.float32)


@contextlib.contextmanager
def perturbed(
    params: Sequence[torch.Tensor],
    direction: Sequence[torch.Tensor],
    step_size: float,
    eps: float = NORM_EPS,
    norm: torch.Tensor | float | None = None,
    backup: Sequence[torch.Tensor] | None = None,
) -> Iterator[torch.Tensor | float]:
    """Moves `params` to `w - step_size · d / (‖d‖ + eps)` for the duration of the block, then restores them.

    `‖d‖` is one global L2 norm over all of `direction` (pass `norm` when it is already known, e.g. from a
    :class:`GradientBuffer`). The weights are restored with `copy_` from a copy taken on entry, so they are
    bit-identical afterwards, also when the block raises. A zero direction moves nothing; a direction with a
    non-finite norm (an overflowed gradient) moves nothing either, instead of writing NaN into the weights. Yields
    the global norm of `direction` (fp32, 0-dim; or `norm` as given). `backup`: tensors shaped like `params` to hold
    the saved copy (a caller that perturbs at every step keeps them instead of allocating new ones each time).

    fp32 parameters move by `p.add_(d, alpha=-scale)`; others get the step computed in fp32 (fp64 for fp64
    parameters) and rounded once.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> with perturbed([w], [torch.tensor([3.0, 4.0])], step_size=0.5) as norm:
    ...     moved = w.detach().clone()
    >>> norm.item(), moved.tolist(), w.tolist()
    (5.0, [0.699999988079071, 0.6000000238418579], [1.0, 1.0])
    """
    params = list(params)
    direction = list(direction)
    if len(params) != len(direction):
        raise ValueError(f"`params` has {len(params)} tensors but `direction` has {len(direction)}.")
    for i, (p, d) in enumerate(zip(params, direction, strict=True)):
        if p.shape != d.shape:
            raise ValueError(f"`direction[{i}]` has shape {tuple(d.shape)}, its parameter {tuple(p.shape)}.")
    if step_size < 0:
        raise ValueError(f"`step_size` must be >= 0, got {step_size}.")

    norm = global_norm(direction) if norm is None else norm
    targets = [p.detach() for p in params]
    if backup is None:
        backup = [t.clone() for t in targets]
    else:
        backup = list(backup)
        mismatch = any(b.shape != t.shape or b.dtype != t.dtype for b, t in zip(backup, targets))
        if len(backup) != len(targets) or mismatch:
            raise ValueError("`backup` must hold one tensor of each parameter's shape and dtype, in order.")
        torch._foreach_copy_(backup, targets)
    try:
        norm_value = float(norm)  # one host sync: a non-finite norm must not reach the weights (inf * 0 is NaN)
        if step_size > 0 and math.isfinite(norm_value):
            scale = step_size / (norm_value + eps)
            with torch.no_grad():
                same = [(t, d) for t, d in zip(targets, direction) if t.dtype == d.dtype == torch.float32]
                if same:
                    torch._foreach_add_([t for t, _ in same], [d.to(t.device) for t, d in same], alpha=-scale)
                for t, d in zip(targets, direction):
                    if not t.dtype == d.dtype == torch.float32:
                        work = torch.promote_types(t.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays fp64
                        t.copy_(t.to(work) - d.to(device=t.device, dtype=work) * scale)
        yield norm
    finally:
        with torch.no_grad():
            torch._foreach_copy_(targets, backup)


@contextlib.contextmanager
def preserved_rng(device: torch.device | str | None = None) -> Iterator[None]:
    """Runs the block on a fork of the global RNG (CPU, plus `device` when it is an accelerator) and restores it.

    Two blocks run under `preserved_rng()` one after the other draw the same random numbers (same dropout masks),
    and the code after them sees the RNG as if they had never run.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            yield
    else:
        index = device.index if device.index is not None else getattr(torch, device.type).current_device()
        with torch.random.fork_rng(devices=[index], device_type=device.type):
            yield
