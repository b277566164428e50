"""A second data stream beside the Trainer's own: harmful batches for Booster, forget/retain pairs for others.

The Trainer's dataloader feeds the main (alignment / benign) loss. Methods that also need batches from another
dataset draw them from a :class:`PairedStream`:

- its own sampler and batch size, and its own seeded RNG (the global RNG is never consumed, so turning a method's
  regularizer off leaves the main stream bit-identical to plain training);
- an endless stream of example indices (a fresh permutation per pass over the data) cut into consecutive batches, so
  two batches of 2 hold exactly the examples of one batch of 4; this is what makes gradient accumulation exact;
- each rank draws its own shard of every permutation (`perm[rank::world_size]`);
- `state_dict()` / `load_state_dict()`: the trainer mixin saves it in every checkpoint, and a resumed run draws the
  very batches the uninterrupted run would have drawn.

:func:`prepare_paired_dataset` tokenizes the second dataset exactly as the trainer tokenized its training set (for
`SFTTrainer`: its own `_prepare_dataset`, so every dataset format SFT accepts is accepted here too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["PairedStream", "build_paired_stream", "prepare_paired_dataset"]


class PairedStream:
    """An endless, seeded, resumable stream of collated batches from a map-style dataset.

    Args:
        dataset: a map-style dataset (`datasets.Dataset` or anything with `__len__` and `__getitem__(int)`).
        batch_size: examples per batch drawn by :meth:`next_batch`.
        collate_fn: turns a list of rows into a batch (the trainer's data collator).
        seed: seeds the permutation of every pass (`numpy` `SeedSequence([seed, epoch])`), independent of the global
            RNG.
        rank / world_size: this process's shard of each permutation.
        shuffle: `False` walks the dataset in order (each rank still takes its own shard).

    >>> stream = PairedStream(list(range(10)), batch_size=4, collate_fn=list, seed=0)
    >>> a, b = stream.next_batch(), stream.next_batch()
    >>> state = stream.state_dict()
    >>> c = stream.next_batch()
    >>> stream.load_state_dict(state)
    >>> stream.next_batch() == c
    True
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        collate_fn: Callable[[list], Any],
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        name: str = "paired",
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` of the {name} stream must be an integer >= 1, got {batch_size!r}.")
        if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size), got rank={rank!r}, world_size={world_size!r}.")
        if len(dataset) < world_size:
            raise ValueError(
                f"the {name} dataset has {len(dataset)} examples, fewer than the {world_size} processes that each "
                "need their own shard."
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.name = name
        self.epoch = 0
        self.position = 0  # index into this rank's shard of the current epoch's permutation
        self.last_indices: list[int] = []
        self._shard_epoch: int | None = None
        self._shard: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"PairedStream(name={self.name!r}, examples={len(self.dataset)}, batch_size={self.batch_size}, "
            f"seed={self.seed}, rank={self.rank}/{self.world_size}, epoch={self.epoch}, position={self.position})"
        )

    def _current_shard(self) -> np.ndarray:
        if self._shard_epoch != self.epoch:
            n = len(self.dataset)
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            else:
                perm = np.arange(n)
            self._shard = perm[self.rank :: self.world_size]
            self._shard_epoch = self.epoch
        return self._shard

    def next_indices(self, n: int | None = None) -> list[int]:
        """The next `n` (default: `batch_size`) example indices of this rank's endless stream."""
        n = self.batch_size if n is None else n
        out: list[int] = []
        while len(out) < n:
            shard = self._current_shard()
            take = shard[self.position : self.position + n - len(out)]
            out.extend(int(i) for i in take)
            self.position += len(take)
            if self.position >= len(shard):
                self.epoch += 1
                self.position = 0
        return out

    def collate(self, indices: Sequence[int]):
        """The batch made of these rows (also used to rebuild a batch from indices saved in a checkpoint)."""
        return self.collate_fn([self.dataset[int(i)] for i in indices])

    def next_batch(self):
        """Draws the next `batch_size` rows and collates them; their indices are kept in `last_indices`."""
        self.last_indices = self.next_indices()
        return self.collate(self.last_indices)

    def state_dict(self) -> dict:
        return {
            "name": self.name,
            "seed": self.seed,
            "num_examples": len(self.dataset),
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continues from `state`. Refuses a state from another dataset size, seed or process layout."""
        for key in ("seed", "num_examples", "world_size", "rank", "shuffle"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(
                    f"cannot resume the {self.name} stream: the checkpoint has {key}={state[key]!r}, this run has "
                    f"{key}={mine!r}. Resume with the same data, seed and number of processes."
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def prepare_paired_dataset(trainer, dataset, name: str = "paired"):
    """Tokenizes `dataset` the way `trainer` prepared its training set, and keeps only the model's input columns.

    For a TRL `SFTTrainer` this is its own `_prepare_dataset`, so every layout SFT accepts as `train_dataset` is
    accepted here (plain text in `dataset_text_field`, `messages`, ShareGPT `conversations`, prompt-completion, plain
    or conversational, pre-tokenized rows, anything through the trainer's `formatting_func`; EOS added; truncation to
    `max_length`; rows without any label dropped). Rows SFT cannot tokenize and a set with no token to learn are
    refused first, naming the dataset, column and rows (:mod:`hf_immunize.core.sft_data`). Completion-only loss is
    decided for this dataset as SFT decides it for the training set: on when the rows have `prompt` and `completion`
    and `completion_only_loss` is left at `None`.
    """
    from datasets import Dataset

    from hf_immunize.core.sft_data import check_learnable, check_sft_rows

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"the {name} dataset must be a map-style `datasets.Dataset` (its stream samples by index so that it can "
            f"resume), got {type(dataset).__name__}."
        )
    if len(dataset) == 0:
        raise ValueError(f"the {name} dataset is empty.")
    prepare = getattr(trainer, "_prepare_dataset", None)
    layout = None
    if prepare is not None and not getattr(trainer, "_skip_prepare_dataset", False):
        layout = check_sft_rows(dataset, trainer.args, trainer._formatting_func, name)
        saved = trainer.completion_only_loss
        if trainer.args.completion_only_loss is None:
            trainer.completion_only_loss = {"prompt", "completion"} <= set(dataset.column_names)
        try:
            dataset = prepare(
                dataset, trainer.processing_class, trainer.args, trainer.args.packing, trainer._formatting_func, name
            )
        finally:
            trainer.completion_only_loss = saved
    dataset = trainer._remove_unused_columns(dataset, description=name)
    if len(dataset) == 0:
        raise ValueError(
            f"the {name} dataset has no example left after preparation (rows without any label token are dropped; "
            f"check `max_length`={trainer.args.max_length!r} and the completion columns)."
        )
    if layout is not None:
        check_learnable(dataset, name, layout, trainer.args)
    return dataset


def build_paired_stream(
    trainer,
    dataset,
    *,
    batch_size: int,
    name: str = "paired",
    collate_fn: Callable[[list], Any] | None = None,
    seed: int | None = None,
) -> PairedStream:
    """A :class:`PairedStream` over `dataset` prepared like the trainer's training set, collated by its collator.

    The seed defaults to `args.data_seed` (else `args.seed`); each process gets its own shard.
    """
    args = trainer.args
    prepared = prepare_paired_dataset(trainer, dataset, name=name)
    if len(prepared) < batch_size * args.world_size:
        raise ValueError(
            f"the {name} dataset has {len(prepared)} usable rows, fewer than one {name} batch ({batch_size} per "
            f"process x {args.world_size} process(es)); add rows or lower the {name} batch size."
        )
    if seed is None:
        seed = args.data_seed if args.data_seed is not None else args.seed
    return PairedStream(
        prepared,
        batch_size=batch_size,
        collate_fn=collate_fn if collate_fn is not None else trainer.data_collator,
        seed=seed,
        rank=args.process_index,
        world_size=args.world_size,
        name=name,
    )
