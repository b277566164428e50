"""Who produced a number: the name of a scorer or judge as reports and cards show it (with the judge's model id, never
a local path), and the check that one report holds the numbers of one judge only.

Harmful scores of different judges are not comparable (a keyword detector, Llama Guard and a StrongREJECT rubric
disagree by tens of points on the same answers), so a report that would mix them is refused, not averaged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_one_judge", "describe_scorer", "model_id_of"]


def model_id_of(source, model_id: str | None = None) -> str:
    """What a card calls a judge's model: `model_id` when given, a Hub id as it is (a path into the Hub cache gives
    back its id), else a local folder's name (never its path).

    >>> model_id_of("meta-llama/Llama-Guard-3-8B"), model_id_of("/data/judges/my-guard")
    ('meta-llama/Llama-Guard-3-8B', 'my-guard')
    """
    from hf_immunize.core.card_text import hub_model_id

    if model_id is not None:
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"`model_id` must be a non-empty string, got {model_id!r}.")
        return model_id
    if not source:
        return "unnamed model"
    source = os.fspath(source)
    return hub_model_id(source) or Path(source.rstrip("/\\")).name or "unnamed model"


def describe_scorer(scorer) -> str:
    """`` `name` (repr) ``: the scorer's kind and its settings; a judge's repr names its model id.

    >>> from hf_immunize.evaluation.scorers import RefusalKeywordScorer
    >>> describe_scorer(RefusalKeywordScorer(["I cannot"]))
    '`refusal_keyword` (RefusalKeywordScorer(1 prefixes, case_insensitive=True))'
    """
    return f"`{getattr(scorer, 'name', type(scorer).__name__)}` ({scorer!r})"


def check_one_judge(labels: Iterable[tuple[str, str | None]]) -> str | None:
    """The one judge named by `(where, scored_by)` pairs (None entries are skipped), or a ValueError naming two that
    differ and where each was used.

    >>> check_one_judge([("defended seed 0", "A"), ("undefended seed 0", "A"), ("sweep", None)])
    'A'
    """
    first: tuple[str, str] | None = None
    for where, label in labels:
        if label is None:
            continue
        if first is None:
            first = (where, label)
        elif label != first[1]:
            raise ValueError(
                f"this report mixes judges: {first[1]} ({first[0]}) and {label} ({where}). Harmful scores of "
                "different judges are not comparable: measure every arm, seed and sweep with the same judge, or keep "
                "one report per judge."
            )
    return first[1] if first else None
