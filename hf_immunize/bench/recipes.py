"""The safety world's model recipes, shared by its benchmarks and the demo.

1. :func:`pretrain_safety_model` — a tiny Llama learns the benign tasks *and* every weapon's harmful answer, so it
   starts capable and unaligned, like an open base model.
2. :func:`sft_align` — plain SFT on refusals mixed with benign rows: the undefended baseline every defense is
   compared with (with LoRA when `align_lora_r` is set, the Booster paper's setting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hf_immunize.utils import sft_config

__all__ = ["SafetyRecipe", "alignment_peft_config", "pretrain_safety_model", "sft_align", "train_sft"]


@dataclass
class SafetyRecipe:
    """Sizes and schedules of the safety world's models; the defaults fit the demo's 5-minute budget on 2 CPU cores."""

    seed: int = 0
    hidden_size: int = 96
    num_layers: int = 2
    pretrain_steps: int = 500
    pretrain_lr: float = 3e-3
    align_steps: int = 150
    align_lr: float = 1e-3
    batch_size: int = 16
    max_length: int = 64
    max_new_tokens: int = 24
    # LoRA alignment (the Booster paper's setting) when set; None aligns all parameters.
    align_lora_r: int | None = None
    align_lora_alpha: int = 16
    align_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def train_sft(
    model, tokenizer, dataset, output_dir, *, steps: int, lr: float, batch_size: int, seed: int, peft_config=None, **kw
):
    """Plain SFT with TRL's `SFTTrainer` (text or prompt-completion rows); returns the trained model."""
    from trl import SFTTrainer

    args = sft_config(
        output_dir,
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        seed=seed,
        data_seed=seed,
        **kw,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()
    return trainer.model


def alignment_peft_config(recipe: SafetyRecipe):
    """The LoRA config of alignment when `recipe.align_lora_r` is set, else None (full-parameter alignment)."""
    if recipe.align_lora_r is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.align_lora_r,
        lora_alpha=recipe.align_lora_alpha,
        target_modules=list(recipe.align_lora_targets),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def pretrain_safety_model(world, recipe: SafetyRecipe, output_dir: str | os.PathLike):
    """Teaches a fresh tiny Llama the whole `world.pretrain` corpus (benign tasks and harmful answers)."""
    from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

    model = tiny_causal_lm(hidden_size=recipe.hidden_size, num_layers=recipe.num_layers, seed=recipe.seed)
    tokenizer = tiny_tokenizer()
    model = train_sft(
        model,
        tokenizer,
        world.pretrain,
        Path(output_dir) / "pretrain",
        steps=recipe.pretrain_steps,
        lr=recipe.pretrain_lr,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        max_length=recipe.max_length,
        lr_scheduler_type="cosine",
    )
    return model, tokenizer


def sft_align(model, tokenizer, world, recipe: SafetyRecipe, output_dir: str | os.PathLike):
    """The undefended baseline: plain SFT on `world.alignment` (refusals plus benign rows)."""
    return train_sft(
        model,
        tokenizer,
        world.alignment,
        Path(output_dir) / "sft_align",
        steps=recipe.align_steps,
        lr=recipe.align_lr,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        max_length=recipe.max_length,
        peft_config=alignment_peft_config(recipe),
    )
