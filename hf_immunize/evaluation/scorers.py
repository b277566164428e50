"""Scorers: turn (prompt, completion) pairs into per-sample scores in [0, 1] and a percentage.

Every scorer has `score(completions, **columns) -> list[float]` (one value per sample) and `percent(...)` (100 × mean).
Harmful scores count what is bad (higher = more harmful); accuracy scorers count what is right.

The metrics of the Booster paper (see the project's reference notes) map onto these classes:

* HS (harmful score): :class:`~hf_immunize.evaluation.moderation.ClassifierScorer` with a QA-moderation judge such as
  ``PKU-Alignment/beaver-dam-7b`` (multi-label; flagged when the highest category probability exceeds 0.5), a
  generative judge (:class:`~hf_immunize.evaluation.judges.GenerativeJudge`: Llama Guard, a StrongREJECT rubric or
  fine-tuned evaluator), or :class:`RefusalKeywordScorer` as a cheap keyword proxy.
* HS+: :class:`HarmfulOrDegenerateScorer` (flagged **or** degenerate, see :class:`DegenerateOutputScorer`).
* FA (fine-tune accuracy): :class:`LabelMatchScorer` (SST-2, AG News) and :class:`GSM8KScorer`.

:func:`~hf_immunize.evaluation.perplexity.perplexity` measures language-modelling quality, and :func:`metric_path`
gives the directory of a bundled `evaluate` metric script, for ``evaluate.load(metric_path("refusal_rate"))`` offline.

A judge may fail to give a verdict for a sample (an output it cannot parse): it scores that sample NaN, and
:meth:`Scorer.percent` averages over the samples that have a score (the judge reports how many had none).
"""

from __future__ import annotations

from pathlib import Path

from .harm_scorers import (
    DEFAULT_REFUSAL_PREFIXES,
    DegenerateOutputScorer,
    HarmfulOrDegenerateScorer,
    KeywordContentScorer,
    RefusalKeywordScorer,
)
from .scorer_base import (  # noqa: F401  (the checks stay importable from here)
    Scorer,
    _check_column,
    _check_completions,
    _check_positive_int,
    _check_threshold,
    _is_list_like,
)
from .task_scorers import ExactMatchScorer, GSM8KScorer, LabelMatchScorer

__all__ = [
    "DEFAULT_REFUSAL_PREFIXES",
    "METRIC_NAMES",
    "DegenerateOutputScorer",
    "ExactMatchScorer",
    "GSM8KScorer",
    "HarmfulOrDegenerateScorer",
    "KeywordContentScorer",
    "LabelMatchScorer",
    "RefusalKeywordScorer",
    "Scorer",
    "metric_path",
]

# The `evaluate` metric scripts shipped under `hf_immunize/evaluation/metrics/<name>/<name>.py`.
METRIC_NAMES = ("gsm8k_accuracy", "label_accuracy", "refusal_rate")
_METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def metric_path(name: str) -> str:
    """The directory of a bundled `evaluate` metric; load it offline with ``evaluate.load(metric_path(name))``.

    >>> Path(metric_path("refusal_rate")).name
    'refusal_rate'
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"`name` must be one of {list(METRIC_NAMES)}, got {name!r}.")
    directory = _METRICS_DIR / name
    if not (directory / f"{name}.py").is_file():  # pragma: no cover - a broken install
        raise ValueError(f"metric {name!r} is not installed: {str(directory / (name + '.py'))!r} is missing.")
    return str(directory)


def __getattr__(name: str):
    # Names that moved to their own modules, still importable from here.
    if name == "ClassifierScorer":
        from .moderation import ClassifierScorer

        return ClassifierScorer
    if name in ("perplexity", "per_text_nll"):
        import importlib

        # By module path: the package binds the name `perplexity` to the function, not to the module.
        return getattr(importlib.import_module(f"{__package__}.perplexity"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
