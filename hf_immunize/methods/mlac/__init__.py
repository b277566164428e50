"""MLAC (Henderson, Mitchell et al., arXiv 2211.14946): self-destructing models, meta-learned adversarial censoring."""

from hf_immunize.methods.mlac.mlac_config import MLACConfig
from hf_immunize.methods.mlac.mlac_trainer import MLACTrainer

__all__ = ["MLACConfig", "MLACTrainer"]
