"""Pieces shared by two or more methods: the trainer mixin, the second data stream, weight perturbations.

Nothing here imports `hf_immunize.methods`.
"""

from hf_immunize.core.paired import PairedStream, build_paired_stream, prepare_paired_dataset
from hf_immunize.core.perturbation import NORM_EPS, GradientBuffer, global_norm, perturbed, preserved_rng
from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin, check_trainer_declarations

__all__ = [
    "NORM_EPS",
    "GradientBuffer",
    "ImmunizeTrainerMixin",
    "PairedStream",
    "build_paired_stream",
    "check_trainer_declarations",
    "global_norm",
    "perturbed",
    "preserved_rng",
    "prepare_paired_dataset",
]
