"""MLAC's attacker searched: a grid (or Optuna TPE) over learning rate, steps, batch size and probe-vs-full, then
the best setting re-run over fresh subsets (:func:`search_classifier_attack`)."""

from __future__ import annotations

import itertools
import logging
import math
import random
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from datasets import Dataset

from .classifier_heads import _check_int, _is_path, _load_or_copy, _resolve_tokenizer
from .classifier_runs import (
    CLASSIFIER_ATTACK_MODES,
    ClassifierAttackConfig,
    _check_inputs,
    _check_labels,
    _majority_rate,
    attack_classifier,
)

__all__ = ["ClassifierSearchResult", "ClassifierSearchSpace", "search_classifier_attack"]

logger = logging.getLogger(__name__)


@dataclass
class ClassifierSearchSpace:
    r"""
    The attacker's hyperparameter space (MLAC's attacker searches lr, steps, batch size and probe-vs-full).

    Parameters:
        learning_rate (`tuple[float, float]`, *optional*, defaults to `(1e-5, 1e-2)`):
            Log-uniform bounds; the paper's range [code].
        steps (`tuple[int, ...]`, *optional*, defaults to `(100, 200)`):
            Step counts to try. The paper: {100, 200, ..., 1000} [code]; ours is cut for CPU.
        batch_sizes (`tuple[int, ...]`, *optional*, defaults to `(12, 24, 48)`):
            Batch sizes to try: the bios set of the MLAC release [code].
        modes (`tuple[str, ...]`, *optional*, defaults to `("linear_probe", "full")`):
            Both, as in the paper [code].
        lr_grid_size (`int`, *optional*, defaults to `4`):
            Log-spaced learning rates (both bounds included) in the grid used without Optuna: 4 gives one per decade
            of the default range.
    """

    learning_rate: tuple[float, float] = field(default=(1e-5, 1e-2), metadata={"help": "Log-uniform lr bounds."})
    steps: tuple[int, ...] = field(default=(100, 200), metadata={"help": "Step counts (paper: 100..1000)."})
    batch_sizes: tuple[int, ...] = field(default=(12, 24, 48), metadata={"help": "Batch sizes to try."})
    modes: tuple[str, ...] = field(default=CLASSIFIER_ATTACK_MODES, metadata={"help": "Attack modes to try."})
    lr_grid_size: int = field(default=4, metadata={"help": "Learning rates in the grid fallback (log-spaced)."})

    def __post_init__(self):
        lr = tuple(self.learning_rate)
        if (
            len(lr) != 2
            or not all(isinstance(x, int | float) and math.isfinite(x) for x in lr)
            or not 0 < lr[0] <= lr[1]
        ):
            raise ValueError(f"`learning_rate` must be (low, high) with 0 < low <= high, got {self.learning_rate!r}.")
        self.learning_rate = (float(lr[0]), float(lr[1]))
        for name in ("steps", "batch_sizes"):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"`{name}` must not be empty.")
            for v in values:
                _check_int(f"{name} entry", v, 1)
            setattr(self, name, values)
        self.modes = tuple(self.modes)
        if not self.modes or any(m not in CLASSIFIER_ATTACK_MODES for m in self.modes):
            raise ValueError(f"`modes` must be a non-empty subset of {CLASSIFIER_ATTACK_MODES}, got {self.modes!r}.")
        _check_int("lr_grid_size", self.lr_grid_size, 1)

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, in a fixed order: lr x steps x batch size x mode."""
        low, high = self.learning_rate
        if self.lr_grid_size == 1 or low == high:
            lrs = [math.sqrt(low * high)]
        else:
            ratio = math.log(high / low) / (self.lr_grid_size - 1)
            lrs = [low * math.exp(i * ratio) for i in range(self.lr_grid_size)]
        return [
            {"learning_rate": lr, "steps": s, "batch_size": b, "mode": m}
            for lr, s, b, m in itertools.product(lrs, self.steps, self.batch_sizes, self.modes)
        ]


@dataclass
class ClassifierSearchResult:
    """The outcome of :func:`search_classifier_attack`.

    Attributes:
        best_config: the config dict of the best trial (the first one, on ties).
        best_trial_accuracy: that trial's best accuracy (selected on the eval set, so optimistic).
        trials: `(config dict, best accuracy)` per trial, in run order.
        repeat_accuracies: best accuracy of each re-run of `best_config` with seeds `0..repeats-1`.
        mean, std: mean and population standard deviation (ddof=0) of `repeat_accuracies`: the headline number.
        n_examples: the attacker's subset size.
        majority_rate: share of the most common eval label (the floor).
        sampler: `"tpe"` (Optuna) or `"grid"`.
        stop_reason: `"solved"` (accuracy reached 1.0, or >= 0.99 on the first trial), `"patience"`, `"budget"`, or
            `"exhausted"` (the grid had fewer points than the budget).
    """

    best_config: dict[str, Any]
    best_trial_accuracy: float
    trials: list[tuple[dict[str, Any], float]]
    repeat_accuracies: list[float]
    mean: float
    std: float
    n_examples: int
    majority_rate: float
    sampler: str
    stop_reason: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trials"] = [{"config": c, "best_accuracy": a} for c, a in self.trials]
        return out


def _optuna_or_none():
    try:
        import optuna
    except ImportError:
        return None
    return optuna


class _GridProposer:
    """The grid in a seeded random order, so that a budget smaller than the grid still spreads over all axes."""

    name = "grid"

    def __init__(self, space: ClassifierSearchSpace, seed: int):
        self._points = space.grid()
        random.Random(seed).shuffle(self._points)
        self.capacity: int | None = len(self._points)

    def ask(self, index: int) -> dict[str, Any]:
        return dict(self._points[index])

    def tell(self, accuracy: float) -> None:
        pass


class _TPEProposer:
    """Optuna's TPE through its ask/tell interface; stopping rules stay ours, shared with the grid."""

    name = "tpe"

    def __init__(self, optuna, space: ClassifierSearchSpace, seed: int):
        self._space = space
        self._study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self._trial = None
        self.capacity: int | None = None  # TPE can always propose another point

    def ask(self, index: int) -> dict[str, Any]:
        self._trial = trial = self._study.ask()
        low, high = self._space.learning_rate
        return {
            "learning_rate": trial.suggest_float("learning_rate", low, high, log=True),
            "steps": trial.suggest_categorical("steps", list(self._space.steps)),
            "batch_size": trial.suggest_categorical("batch_size", list(self._space.batch_sizes)),
            "mode": trial.suggest_categorical("mode", list(self._space.modes)),
        }

    def tell(self, accuracy: float) -> None:
        self._study.tell(self._trial, accuracy)


def search_classifier_attack(
    model_or_path,
    tokenizer,
    train_pool: Dataset,
    eval_set: Dataset,
    *,
    n_examples: int,
    num_labels: int = 2,
    space: ClassifierSearchSpace | Mapping[str, Any] | None = None,
    budget: int = 20,
    patience: int = 8,
    repeats: int = 5,
    seed: int = 0,
    sampler: str = "auto",
    base_config: ClassifierAttackConfig | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> ClassifierSearchResult:
    """Searches the attacker's hyperparameters, then re-runs the best ones over fresh subsets (MLAC's protocol).

    Each trial is one :func:`attack_classifier` run with seed `seed` (so trials differ in hyperparameters, not in
    subset), scored by its best accuracy. The search stops at `budget` trials, after `patience` trials in a row
    without improvement, or as soon as a trial reaches accuracy 1.0 (>= 0.99 on the first trial). The best
    configuration is then re-run with seeds `0..repeats-1`, each drawing a fresh `n_examples` subset, and the mean and
    std of those runs are the result. Paper values: budget 50, patience 15, repeats 15, TPE; our defaults (20, 8, 5)
    keep a CPU run to minutes.

    Args:
        model_or_path: the (defended) model or its path; never modified.
        tokenizer: its tokenizer, or `None` to load it from the model's directory.
        train_pool, eval_set: as in :func:`attack_classifier`.
        n_examples: the attacker's subset size (paper: 20, 50, 100, 200).
        num_labels: classes of the blocked task.
        space: a :class:`ClassifierSearchSpace` (or a dict of its fields); defaults to `ClassifierSearchSpace()`.
        budget, patience, repeats: see above.
        seed: seeds the sampler and every trial's subset.
        sampler: `"auto"` (Optuna TPE when importable, else the grid), `"tpe"` (requires Optuna) or `"grid"` (the
            space's grid, shuffled with `seed`, at most `budget` points).
        base_config: the fields that are not searched (`max_length`, `eval_every`, `eval_batch_size`, `head_bias`).

    >>> from hf_immunize.data.toy import BiosWorld, make_bios_world
    >>> from hf_immunize.testing import tiny_encoder_classifier
    >>> world = make_bios_world(n=200, professions=["nurse", "attorney"])
    >>> pool, test = BiosWorld.with_label(world.train, "gender"), BiosWorld.with_label(world.val2, "gender")
    >>> space = ClassifierSearchSpace(steps=(10,), batch_sizes=(8,), lr_grid_size=2)
    >>> result = search_classifier_attack(
    ...     tiny_encoder_classifier(num_labels=2), None, pool, test, n_examples=20, space=space, budget=2, repeats=2,
    ...     sampler="grid",
    ... )
    >>> len(result.trials) <= 2, len(result.repeat_accuracies)
    (True, 2)
    """
    if space is None:
        space = ClassifierSearchSpace()
    elif isinstance(space, Mapping):
        space = ClassifierSearchSpace(**space)
    elif not isinstance(space, ClassifierSearchSpace):
        raise TypeError(f"`space` must be a ClassifierSearchSpace, a dict of its fields, or None; got {type(space)}.")
    _check_int("budget", budget, 1)
    _check_int("patience", patience, 1)
    _check_int("repeats", repeats, 1)
    _check_int("seed", seed, 0)
    if sampler not in ("auto", "tpe", "grid"):
        raise ValueError(f"`sampler` must be 'auto', 'tpe' or 'grid', got {sampler!r}.")
    if base_config is not None and not isinstance(base_config, ClassifierAttackConfig):
        raise TypeError(f"`base_config` must be a ClassifierAttackConfig or None, got {type(base_config)}.")
    base = replace(base_config or ClassifierAttackConfig(), n_examples=n_examples, num_labels=num_labels, seed=seed)
    _check_inputs(base, train_pool, eval_set, text_column, label_column)
    _check_labels(list(train_pool[label_column]), "train_pool", num_labels)

    optuna = _optuna_or_none() if sampler in ("auto", "tpe") else None
    if sampler == "tpe" and optuna is None:
        raise ValueError("`sampler='tpe'` needs Optuna (`pip install optuna`); use sampler='grid' or 'auto'.")
    proposer = _TPEProposer(optuna, space, seed) if optuna is not None else _GridProposer(space, seed)

    # Resolve once: trials then deep-copy this model instead of reloading it from disk every time.
    tokenizer = _resolve_tokenizer(tokenizer, model_or_path)
    model = _load_or_copy(model_or_path) if _is_path(model_or_path) else model_or_path
    kwargs = {"text_column": text_column, "label_column": label_column}

    trials: list[tuple[dict[str, Any], float]] = []
    best_index, since_improvement, stop_reason = 0, 0, "budget"
    for index in range(budget):
        if proposer.capacity is not None and index >= proposer.capacity:
            stop_reason = "exhausted"
            break
        config = replace(base, **proposer.ask(index))
        accuracy = attack_classifier(model, tokenizer, config, train_pool, eval_set, **kwargs).best_accuracy
        proposer.tell(accuracy)
        trials.append((config.to_dict(), accuracy))
        logger.info("trial %d: %s -> best accuracy %.4f", index, trials[-1][0], accuracy)
        if accuracy > trials[best_index][1]:
            best_index = index
        since_improvement = 0 if best_index == index else since_improvement + 1
        if accuracy >= 1.0 or (index == 0 and accuracy >= 0.99):
            stop_reason = "solved"
            break
        if since_improvement >= patience:
            stop_reason = "patience"
            break

    best_config, best_trial_accuracy = trials[best_index]
    repeat_accuracies = [
        attack_classifier(
            model, tokenizer, replace(base, **{**best_config, "seed": s}), train_pool, eval_set, **kwargs
        ).best_accuracy
        for s in range(repeats)
    ]
    return ClassifierSearchResult(
        best_config=best_config,
        best_trial_accuracy=best_trial_accuracy,
        trials=trials,
        repeat_accuracies=repeat_accuracies,
        mean=statistics.fmean(repeat_accuracies),
        std=statistics.pstdev(repeat_accuracies),
        n_examples=n_examples,
        majority_rate=_majority_rate(list(eval_set[label_column])),
        sampler=proposer.name,
        stop_reason=stop_reason,
    )
