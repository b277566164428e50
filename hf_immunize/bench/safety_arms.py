"""The safety world's arms and settings (`hf-immunize bench --world safety`): each arm aligns a private copy of the
pretrained model; the benchmark then attacks it (:mod:`hf_immunize.bench.safety`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from hf_immunize.bench.recipes import SafetyRecipe, alignment_peft_config, sft_align

__all__ = ["ARMS", "PROTOCOL_ARMS", "BenchSettings", "booster_align", "register_arm"]


def booster_align(model, tokenizer, world, settings: BenchSettings, output_dir, refresh_steps: int = 1):
    """A Booster arm: the same alignment data, schedule and optimizer as `sft`, plus Booster's regularizer (exact
    with `refresh_steps=1`, else the fast variant with `perturbation_refresh_steps=refresh_steps`).

    The harmful data is the defender's own: the alignment prompts paired with their harmful answers.
    """
    from hf_immunize.methods.booster import BoosterConfig, BoosterTrainer
    from hf_immunize.utils import CPU_TRAINING_DEFAULTS

    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    name = "booster" if refresh_steps == 1 else f"booster_fast_k{refresh_steps}"
    args = BoosterConfig(
        output_dir=str(Path(output_dir) / name),
        max_steps=settings.align_steps,
        learning_rate=settings.align_lr,
        per_device_train_batch_size=settings.batch_size,
        seed=settings.seed,
        data_seed=settings.seed,
        max_length=settings.max_length,
        regularizer_weight=settings.booster_regularizer_weight,
        perturbation_step_size=settings.booster_perturbation_step_size,
        perturbation_refresh_steps=refresh_steps,
        **CPU_TRAINING_DEFAULTS,
    )
    trainer = BoosterTrainer(
        model=model,
        args=args,
        train_dataset=world.alignment,
        harmful_dataset=harmful,
        processing_class=tokenizer,
        peft_config=alignment_peft_config(settings),
    )
    trainer.train()
    return trainer.model


# arm name -> fn(model, tokenizer, world, settings, output_dir) -> aligned model. "pretrained" is the model as is.
ARMS: dict[str, Callable] = {
    "pretrained": lambda model, tokenizer, world, settings, output_dir: model,
    "sft": sft_align,
    "booster": booster_align,
    "booster_fast_k2": partial(booster_align, refresh_steps=2),
    "booster_fast_k4": partial(booster_align, refresh_steps=4),
}
# Arms measured by their own protocol (their own base model and metrics), run by their own module.
PROTOCOL_ARMS = {"mistake_sft": "hf_immunize.bench.mistake_sft"}


def register_arm(name: str, fn: Callable) -> None:
    """Adds a defense to the benchmark: `fn(model, tokenizer, world, settings, output_dir)` returns the aligned
    model, which then takes the standard attack and the sweep like every other arm."""
    if name in PROTOCOL_ARMS:
        raise ValueError(f"arm name {name!r} is taken by a protocol of its own; choose another name.")
    ARMS[name] = fn


def _standard_attack():
    from hf_immunize.evaluation.attack import attack_preset

    # Chosen so that the undefended SFT baseline clearly breaks (>= 50 points): see benchmarks/README.md.
    return attack_preset("toy")


@dataclass
class BenchSettings(SafetyRecipe):
    """Benchmark settings: the world's model recipe, plus seeds, arms, the standard attack and the sweep."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: ["pretrained", "sft"])
    attack: object = field(default_factory=_standard_attack)  # an AttackConfig
    sweep: bool = True
    sweep_space: dict = field(
        default_factory=lambda: {"learning_rate": [3e-5, 1e-4, 3e-4, 1e-3], "mode": ["full", "lora_new"]}
    )
    sweep_budget: int = 8
    # Booster arms. The paper's α=0.1 (with λ=5) broke alignment itself on this tiny model (harmful 96.7 before any
    # attack); α=0.01 was the best setting of the sensitivity grid: benchmarks/results/booster_sensitivity.md.
    booster_regularizer_weight: float = 5.0
    booster_perturbation_step_size: float = 0.01
