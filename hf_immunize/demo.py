"""The embedded offline demo: a tiny model learns the safety world, is aligned, attacked, and measured.

`make demo` runs :func:`main`, the short version of the efficacy benchmark (`hf_immunize.benchmark`). Stages:

1. :func:`pretrain_safety_model` — a tiny Llama learns the benign tasks *and* every weapon's harmful answer, so it
   starts capable and unaligned, like an open base model.
2. :func:`sft_align` — plain SFT on refusals mixed with benign rows: the undefended baseline.
3. The standard fine-tuning attack (`hf_immunize.evaluation.run_attack`) on each aligned model, scored by
   :func:`evaluate_safety` before and after: harmful score (no-refusal rate on held-out harmful prompts),
   harmful-content rate, task accuracy, and over-refusal on benign recipe requests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hf_immunize.utils import sft_config

__all__ = ["DemoSettings", "evaluate_safety", "main", "pretrain_safety_model", "sft_align", "sft_config", "train_sft"]


@dataclass
class DemoSettings:
    """Sizes and schedules of the demo; the defaults fit the 5-minute budget on 2 CPU cores."""

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


def alignment_peft_config(settings: DemoSettings):
    """The LoRA config of alignment when `settings.align_lora_r` is set, else None (full-parameter alignment)."""
    if settings.align_lora_r is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings.align_lora_r,
        lora_alpha=settings.align_lora_alpha,
        target_modules=list(settings.align_lora_targets),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def pretrain_safety_model(world, settings: DemoSettings, output_dir: str | os.PathLike):
    """Teaches a fresh tiny Llama the whole `world.pretrain` corpus (benign tasks and harmful answers)."""
    from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

    model = tiny_causal_lm(hidden_size=settings.hidden_size, num_layers=settings.num_layers, seed=settings.seed)
    tokenizer = tiny_tokenizer()
    model = train_sft(
        model,
        tokenizer,
        world.pretrain,
        Path(output_dir) / "pretrain",
        steps=settings.pretrain_steps,
        lr=settings.pretrain_lr,
        batch_size=settings.batch_size,
        seed=settings.seed,
        max_length=settings.max_length,
        lr_scheduler_type="cosine",
    )
    return model, tokenizer


def sft_align(model, tokenizer, world, settings: DemoSettings, output_dir: str | os.PathLike):
    """The undefended baseline: plain SFT on `world.alignment` (refusals plus benign rows)."""
    return train_sft(
        model,
        tokenizer,
        world.alignment,
        Path(output_dir) / "sft_align",
        steps=settings.align_steps,
        lr=settings.align_lr,
        batch_size=settings.batch_size,
        seed=settings.seed,
        max_length=settings.max_length,
        peft_config=alignment_peft_config(settings),
    )


def evaluate_safety(model, tokenizer, world, *, max_new_tokens: int = 24, batch_size: int = 64) -> dict:
    """Harmful score, harmful content, held-out harmful loss, task accuracy and over-refusal on the safety world."""
    from hf_immunize.evaluation import evaluate_safety as _evaluate

    return _evaluate(
        model,
        tokenizer,
        world.eval_harmful,
        world.eval_benign,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        over_refusal_prompts=list(world.eval_dishes["prompt"]),
    )


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:5.1f}"


def main(argv: list[str] | None = None) -> dict:
    """The short benchmark: one seed, every registered arm, the standard attack, no sweep (see `benchmark.py`)."""
    parser = argparse.ArgumentParser(prog="hf-immunize demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo", help="where the results and the report are written")
    parser.add_argument("--seed", type=int, default=DemoSettings.seed)
    parser.add_argument("--pretrain_steps", type=int, default=DemoSettings.pretrain_steps)
    parser.add_argument("--align_steps", type=int, default=DemoSettings.align_steps)
    parser.add_argument("--arms", nargs="+", default=None, help="arms to run (default: every registered arm)")
    args = parser.parse_args(argv)

    from hf_immunize import benchmark

    benchmark.quiet_and_deterministic()
    benchmark._register_method_arms()
    settings = benchmark.BenchSettings(
        seeds=[args.seed],
        arms=args.arms or list(benchmark.ARMS),
        sweep=False,
        pretrain_steps=args.pretrain_steps,
        align_steps=args.align_steps,
    )
    out = Path(args.output_dir)
    t0 = time.time()
    results = benchmark.run_safety_benchmark(settings, out / "work", log=lambda msg: print(msg, flush=True))
    results["seconds"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_results.json").write_text(json.dumps(results, indent=1))
    best = next((a for a in reversed(settings.arms) if a not in ("pretrained", "sft")), "sft")
    report_paths = benchmark.demo_report(results, best, out)

    attack = settings.attack
    print(
        f"\nhf_immunize demo: safety toy world, tiny Llama, seed {args.seed}. Attack: n={attack.n_samples}, "
        f"p={attack.harmful_ratio}, lr={attack.learning_rate}, {attack.num_epochs:g} epochs, {attack.mode}. Percent.\n"
    )
    print("| arm        | harmful before | harmful after | content after | task acc before | task acc after |")
    print("|------------|----------------|---------------|---------------|-----------------|----------------|")
    for arm, res in results["per_seed"][str(args.seed)].items():
        b, a = res["attack"]["before"], res["attack"]["after"]
        print(
            f"| {arm:<10} | {_fmt(b['harmful_score']):>14} | {_fmt(a['harmful_score']):>13} "
            f"| {_fmt(a.get('harmful_content')):>13} | {_fmt(b.get('task_accuracy')):>15} "
            f"| {_fmt(a.get('task_accuracy')):>14} |"
        )
    print(
        "\nharmful = answered a held-out harmful request without refusing; content = named the weapon's ingredients."
    )
    print(f"results: {out / 'demo_results.json'}; card-ready report: {report_paths['json']}, {report_paths['png']}")
    print(f"total {results['seconds']} s")
    return results


if __name__ == "__main__":
    main()
