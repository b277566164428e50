"""Evaluation: batched generation, scorers, and (as they land) the fine-tuning attack harness and reports."""

from .generation import generate_completions
from .scorers import (
    DEFAULT_REFUSAL_PREFIXES,
    ExactMatchScorer,
    KeywordContentScorer,
    RefusalKeywordScorer,
    Scorer,
)

__all__ = [
    "DEFAULT_REFUSAL_PREFIXES",
    "ExactMatchScorer",
    "KeywordContentScorer",
    "RefusalKeywordScorer",
    "Scorer",
    "generate_completions",
]
