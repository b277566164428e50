"""hf_immunize: drop-in Hugging Face trainers that make open models harder to misuse, and the tools to measure it.

The trainers (Booster, MLAC, unlearning, mistake analysis) are exported here as they land; `hf_immunize.data` holds
the dataset adapters and offline toy worlds, `hf_immunize.evaluation` the scorers and the attack harness, and
`hf_immunize.testing` the offline tiny models.
"""

__version__ = "0.1.0"

# Trainers are imported on first use: `import hf_immunize` stays cheap (no torch / transformers / trl import).
_LAZY = {
    "BoosterConfig": "hf_immunize.methods.booster",
    "BoosterTrainer": "hf_immunize.methods.booster",
    "MLACConfig": "hf_immunize.methods.mlac",
    "MLACTrainer": "hf_immunize.methods.mlac",
    "UnlearnConfig": "hf_immunize.methods.unlearn",
    "UnlearnTrainer": "hf_immunize.methods.unlearn",
    "build_generic_labels": "hf_immunize.methods.unlearn",
    "run_whp_pipeline": "hf_immunize.methods.unlearn",
    "MistakeSFTConfig": "hf_immunize.methods.mistake_sft",
    "MistakeSFTTrainer": "hf_immunize.methods.mistake_sft",
    "build_mistake_dataset": "hf_immunize.methods.mistake_sft",
    "generate_analyses": "hf_immunize.methods.mistake_sft",
    "guided_generate": "hf_immunize.methods.mistake_sft",
    "induce_mistakes": "hf_immunize.methods.mistake_sft",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_immunize' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
