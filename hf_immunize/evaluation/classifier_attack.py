"""The MLAC-style few-shot classifier attack: how fast can an adversary teach a (defended) model a blocked task?

This is the attacker of "Self-Destructing Models" (Henderson, Mitchell et al., arXiv 2211.14946, §6 of
`reference/mlac.md`): take the model's trunk, put a **freshly random, bias-free linear head** on it, fine-tune on a
small labelled subset (`n ∈ {20, 50, 100, 200}`) with Adam, either the head alone (linear probe) or everything, and
score the run by its **best** accuracy on a held-out set. :func:`search_classifier_attack` searches the attacker's
hyperparameters, then re-runs the best ones over fresh subsets and reports mean ± std; :func:`random_init_like` builds
the "random init" baseline that a defended model should be no easier to attack than.

The attacker never modifies the model it is given (it works on a deep copy, or loads from the path), and never trains
on `eval_set`. Both selection and scoring use `eval_set`, as in the paper: that favours the attacker, which is the
conservative choice for judging a defense.
"""

from __future__ import annotations

from .classifier_heads import random_init_like
from .classifier_runs import (
    CLASSIFIER_ATTACK_MODES,
    SOLVE_THRESHOLDS,
    ClassifierAttackConfig,
    ClassifierAttackResult,
    _accuracy,  # noqa: F401  (MLAC's few-shot protocol reuses the attacker's scoring)
    _encode,  # noqa: F401
    attack_classifier,
)
from .classifier_search import ClassifierSearchResult, ClassifierSearchSpace, search_classifier_attack

__all__ = [
    "CLASSIFIER_ATTACK_MODES",
    "SOLVE_THRESHOLDS",
    "ClassifierAttackConfig",
    "ClassifierAttackResult",
    "ClassifierSearchResult",
    "ClassifierSearchSpace",
    "attack_classifier",
    "random_init_like",
    "search_classifier_attack",
]
