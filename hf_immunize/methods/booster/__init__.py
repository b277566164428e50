"""Booster (Huang et al., arXiv 2409.01586, ICLR 2025): alignment that attenuates harmful perturbation."""

from hf_immunize.methods.booster.booster_config import BoosterConfig
from hf_immunize.methods.booster.booster_trainer import BoosterTrainer

__all__ = ["BoosterConfig", "BoosterTrainer"]
