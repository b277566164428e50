"""Mistake analysis (Chen et al., "Gaining Wisdom from Setbacks", ICLR 2024, arXiv 2310.10477)."""

from hf_immunize.methods.mistake_sft.mistake_sft_config import MistakeSFTConfig
from hf_immunize.methods.mistake_sft.mistake_sft_trainer import MistakeSFTTrainer
from hf_immunize.methods.mistake_sft.pipeline import (
    analysis_prompt,
    build_mistake_dataset,
    generate_analyses,
    generate_texts,
    guided_generate,
    guided_prompt,
    induce_mistakes,
    induce_prompt,
    plain_prompt,
)

__all__ = [
    "MistakeSFTConfig",
    "MistakeSFTTrainer",
    "analysis_prompt",
    "build_mistake_dataset",
    "generate_analyses",
    "generate_texts",
    "guided_generate",
    "guided_prompt",
    "induce_mistakes",
    "induce_prompt",
    "plain_prompt",
]
