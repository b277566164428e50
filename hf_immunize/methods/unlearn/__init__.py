"""Who's-Harry-Potter unlearning (Eldan & Russinovich, arXiv 2310.02238) and the GA / GradDiff / NPO baselines."""

from hf_immunize.methods.unlearn.anchors import load_anchored_terms, merge_anchored_terms
from hf_immunize.methods.unlearn.labels import build_generic_labels, suggest_anchored_terms, use_alpha
from hf_immunize.methods.unlearn.reinforce import prepare_whp, reinforce, remove_adapter, run_whp_pipeline
from hf_immunize.methods.unlearn.unlearn_config import UNLEARNING_LOSSES, UnlearnConfig
from hf_immunize.methods.unlearn.unlearn_trainer import UnlearnTrainer

__all__ = [
    "UNLEARNING_LOSSES",
    "UnlearnConfig",
    "UnlearnTrainer",
    "build_generic_labels",
    "load_anchored_terms",
    "merge_anchored_terms",
    "prepare_whp",
    "reinforce",
    "remove_adapter",
    "run_whp_pipeline",
    "suggest_anchored_terms",
    "use_alpha",
]
