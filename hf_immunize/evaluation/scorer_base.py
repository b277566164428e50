"""The scorer interface and the input checks every scorer shares (harm, task and judge scorers build on these)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

__all__ = ["Scorer"]


def _is_list_like(values) -> bool:
    """A list, tuple, `datasets` column, array...: sized and iterable, but not a string or a mapping."""
    return (
        isinstance(values, Iterable) and hasattr(values, "__len__") and not isinstance(values, str | bytes | Mapping)
    )


def _check_completions(completions) -> list[str]:
    if not _is_list_like(completions):
        raise ValueError(f"`completions` must be a list of strings, got {type(completions).__name__}.")
    completions = list(completions)
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise ValueError(f"`completions[{i}]` must be a string, got {type(text).__name__}: {text!r}.")
    return completions


def _check_column(name: str, values, n: int) -> list:
    """A per-sample column: present, a sequence (not a bare string) and one value per completion."""
    if values is None:
        raise ValueError(f"the `{name}` column is required: pass `{name}=` with one value per completion.")
    if not _is_list_like(values):
        raise ValueError(f"`{name}` must be a list with one value per completion, got {type(values).__name__}.")
    if len(values) != n:
        raise ValueError(f"`{name}` must hold one value per completion: got {len(values)} for {n} completions.")
    return list(values)


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must be a number in [0, 1], got {threshold!r}.")
    return float(threshold)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return value


class Scorer:
    """Base class: subclasses implement `score`; `percent` is 100 × the mean score."""

    name = "scorer"

    def score(self, completions: list[str], **columns) -> list[float]:  # pragma: no cover - interface
        raise NotImplementedError

    def percent(self, completions: list[str], **columns) -> float:
        """100 × the mean score over the samples that have one (a judge scores an unparseable verdict NaN); NaN when
        no sample has a score."""
        scores = [s for s in self.score(completions, **columns) if not math.isnan(s)]
        if not scores and len(completions):
            return math.nan
        return 100.0 * sum(scores) / max(len(scores), 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------------------------------
# Harmful scores.
