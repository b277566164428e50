"""hf_immunize: drop-in Hugging Face trainers that make open models harder to misuse, and the tools to measure it.

The trainers (Booster, MLAC, unlearning, mistake analysis) are exported here as they land; `hf_immunize.data` holds
the dataset adapters and offline toy worlds, `hf_immunize.evaluation` the scorers and the attack harness, and
`hf_immunize.testing` the offline tiny models.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
