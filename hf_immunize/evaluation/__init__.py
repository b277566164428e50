"""Evaluation: scorers and judges, batched generation, the fine-tuning attack harness, lm-eval utility, worst-case
sweeps (on one machine or many) and reports."""

from .attack import (
    ATTACK_MODES,
    AttackConfig,
    AttackResult,
    attack_preset,
    build_attack_dataset,
    load_for_attack,
    run_attack,
)
from .classifier_attack import (
    CLASSIFIER_ATTACK_MODES,
    SOLVE_THRESHOLDS,
    ClassifierAttackConfig,
    ClassifierAttackResult,
    ClassifierSearchResult,
    ClassifierSearchSpace,
    attack_classifier,
    random_init_like,
    search_classifier_attack,
)
from .eval_data import BlockedTaskData, SafetyEvalData, UnlearningEvalData
from .few_shot import measure_few_shot
from .formatting import PROMPT_FORMATS, resolve_prompt_format
from .generation import generate_completions
from .judges import JUDGE_PRESETS, JUDGE_PROTOCOLS, GenerativeJudge, parse_guard_output, parse_rubric_output
from .lm_eval_utility import LmEvalConfig, run_lm_eval
from .moderation import MODERATION_PRESETS, ClassifierScorer
from .perplexity import per_text_nll, perplexity
from .protocols import measure_attack, measure_mistake_analysis, measure_saved_model
from .provenance import describe_scorer
from .relearning import RelearnConfig, measure_unlearning, relearn_preset, relearning_attack
from .report import ImmunizationReport, mean_std
from .safety_eval import completion_loss, evaluate_safety, first_turn
from .scorers import (
    DEFAULT_REFUSAL_PREFIXES,
    METRIC_NAMES,
    DegenerateOutputScorer,
    ExactMatchScorer,
    GSM8KScorer,
    HarmfulOrDegenerateScorer,
    KeywordContentScorer,
    LabelMatchScorer,
    RefusalKeywordScorer,
    Scorer,
    metric_path,
)
from .sweep import DEFAULT_SPACE, SWEEP_SAMPLERS, SweepResult, sweep_attacks

__all__ = [
    "JUDGE_PRESETS",
    "JUDGE_PROTOCOLS",
    "MODERATION_PRESETS",
    "SWEEP_SAMPLERS",
    "GenerativeJudge",
    "LmEvalConfig",
    "describe_scorer",
    "parse_guard_output",
    "parse_rubric_output",
    "run_lm_eval",
    "ATTACK_MODES",
    "PROMPT_FORMATS",
    "BlockedTaskData",
    "RelearnConfig",
    "SafetyEvalData",
    "UnlearningEvalData",
    "attack_preset",
    "measure_attack",
    "measure_few_shot",
    "measure_mistake_analysis",
    "measure_saved_model",
    "measure_unlearning",
    "relearn_preset",
    "relearning_attack",
    "resolve_prompt_format",
    "CLASSIFIER_ATTACK_MODES",
    "DEFAULT_REFUSAL_PREFIXES",
    "DEFAULT_SPACE",
    "METRIC_NAMES",
    "SOLVE_THRESHOLDS",
    "AttackConfig",
    "AttackResult",
    "ClassifierAttackConfig",
    "ClassifierAttackResult",
    "ClassifierScorer",
    "ClassifierSearchResult",
    "ClassifierSearchSpace",
    "DegenerateOutputScorer",
    "ExactMatchScorer",
    "GSM8KScorer",
    "HarmfulOrDegenerateScorer",
    "ImmunizationReport",
    "KeywordContentScorer",
    "LabelMatchScorer",
    "RefusalKeywordScorer",
    "Scorer",
    "SweepResult",
    "attack_classifier",
    "build_attack_dataset",
    "completion_loss",
    "evaluate_safety",
    "first_turn",
    "generate_completions",
    "load_for_attack",
    "mean_std",
    "metric_path",
    "per_text_nll",
    "perplexity",
    "random_init_like",
    "run_attack",
    "search_classifier_attack",
    "sweep_attacks",
]
