"""FSDP2 support for the methods that take extra gradients and edit weights between passes (Booster, MLAC).

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, what `accelerate` runs for `fsdp_version: 2`) every parameter is
a DTensor holding only this process's shard (`Shard(0)`). The forward all-gathers the full weights into temporary
tensors, and `backward()` reduce-scatters each gradient into the shard's `.grad`, averaged over the data-parallel
processes. Three consequences shape this module:

- `torch.autograd.grad(loss, sharded_params)` fails ("appears to not have been used in the graph": the forward used
  the gathered copies). Extra gradients are taken with `backward()` (:func:`backward_into`) while the optimizer's own
  `.grad` (the alignment / desired-task gradient of the window) waits aside (:func:`stashed_grads`).
- Every elementwise operation (perturb, restore, an optimizer step of a simulated adversary, adding a correction into
  `.grad`) acts on the local shards (:func:`local_tensors`); the next forward gathers the edited shards. No process
  ever builds a full weight or gradient outside FSDP's own forward and backward.
- A norm or any sum over all entries is a local sum reduced over the shard group (:func:`sum_over_shards`,
  :func:`sharded_norm`).

With plain tensors (one process, DDP) every helper here is the identity or a local operation, so one code path serves
both layouts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

__all__ = [
    "all_gather_rows",
    "backward_into",
    "is_sharded",
    "local_tensor",
    "local_tensors",
    "reshard",
    "sharded_norm",
    "stashed_grads",
    "sum_over_shards",
]


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return None
    return DTensor


def is_sharded(params: Sequence[torch.Tensor]) -> bool:
    """True when `params` are FSDP2 shards (DTensors); raises when only some of them are.

    >>> is_sharded([torch.zeros(2)])
    False
    """
    dtensor = _dtensor_type()
    flags = {dtensor is not None and isinstance(p, dtensor) for p in params}
    if len(flags) > 1:
        raise ValueError(
            "some trainable tensors are sharded by FSDP2 and some are not (e.g. parameters left out of the sharding "
            "with `ignored_params`); the weight-space methods need all of them sharded or none."
        )
    return flags == {True}


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor as a plain tensor sharing its storage (in-place edits reach the parameter);
    a plain tensor is returned as is (detached)."""
    dtensor = _dtensor_type()
    with torch.no_grad():
        if dtensor is not None and isinstance(tensor, dtensor):
            return tensor.to_local().detach()
        return tensor.detach()


def local_tensors(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`local_tensor` of each tensor."""
    return [local_tensor(t) for t in tensors]


def _shard_groups(params: Sequence[torch.Tensor]) -> list:
    """Process groups over which `params` are sharded (one per mesh dimension with a `Shard` placement)."""
    dtensor = _dtensor_type()
    layouts = {(p.device_mesh, tuple(p.placements)) for p in params if dtensor is not None and isinstance(p, dtensor)}
    if not layouts:
        return []
    if len(layouts) > 1:
        raise ValueError(
            "the trainable tensors are sharded over different device meshes or placements; a global norm over them is "
            "only defined here for one FSDP2 mesh (what `accelerate` builds)."
        )
    mesh, placements = layouts.pop()
    return [mesh.get_group(dim) for dim, placement in enumerate(placements) if placement.is_shard()]


def sum_over_shards(tensor: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of `tensor` (a local partial sum, e.g. of squares) over the processes that hold the shards of `params`.

    Processes that hold replicas (HSDP's replicate dimension) are not summed over. In place; returns `tensor`.
    """
    import torch.distributed as dist

    for group in _shard_groups(params):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def sharded_norm(local: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm (fp32, 0-dim) of a sharded set of tensors from their local shards `local`.

    The local sum of squares is accumulated in fp64 (as :func:`~hf_immunize.core.perturbation.global_norm` does) and
    reduced over the shard group, so every process gets the same value.
    """
    device = local[0].device if local else torch.device("cpu")
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for t in local:
        if t.numel():
            squares += torch.linalg.vector_norm(t.detach(), dtype=torch.float64).to(device) ** 2
    return sum_over_shards(squares, params).sqrt().to(torch.float32)


@contextlib.contextmanager
def stashed_grads(params: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor | None]]:
    """Takes `.grad` off `params` for the block (so that extra `backward()` passes start from nothing) and puts the
    stashed gradients back afterwards, discarding whatever the block left in `.grad`. Yields the stashed list."""
    params = list(params)
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield saved
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g


def backward_into(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    scale: float = 1.0,
    clear: Sequence[torch.Tensor] = (),
) -> list[torch.Tensor | None]:
    """`(scale · loss).backward()`; returns the local shard of each parameter's new gradient (None where the loss does
    not reach it) and sets `.grad` of `params` and `clear` back to None.

    Under FSDP2 `backward()` averages the gradient over the data-parallel processes; pass their number as `scale` to
    get the sum of every process's `loss` instead (as the Trainer does with `num_processes`). Call it inside
    :func:`stashed_grads`, or `.grad` would accumulate onto the optimizer's gradient.
    """
    (loss * scale if scale != 1.0 else loss).backward()
    grads = [None if p.grad is None else local_tensor(p.grad) for p in params]
    for p in (*params, *clear):
        p.grad = None
    return grads


def reshard(model: torch.nn.Module) -> None:
    """Frees every FSDP2 unit's gathered weights, so that the next forward gathers the (edited) shards again.

    Units that keep their weights gathered after the forward (accelerate's root and output head) would otherwise run
    the next forward with the weights they gathered before an in-place edit of the shards. A no-op without FSDP2.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of `tensor` (N_rank, ...) of every process, concatenated in rank order (N may differ by rank)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    sizes = [torch.zeros((), dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(tensor.shape[0], device=tensor.device))
    longest = int(max(sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(n)] for g, n in zip(gathered, sizes, strict=True)])
