"""The embedded offline demo: a tiny model learns the safety world, is aligned with plain SFT, and is measured.

`make demo` runs :func:`main`. Stages (each a function the benchmark reuses):

1. :func:`pretrain_safety_model` — a tiny Llama learns the benign tasks *and* every weapon's harmful answer, so it
   starts capable and unaligned, like an open base model.
2. :func:`sft_align` — plain SFT on refusals mixed with benign rows: the undefended baseline.
3. :func:`evaluate_safety` — harmful score (no-refusal rate on held-out harmful prompts), harmful-content rate, task
   accuracy, and over-refusal on benign recipe requests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DemoSettings", "evaluate_safety", "main", "pretrain_safety_model", "sft_align", "train_sft"]


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


def sft_config(output_dir: str | os.PathLike, **overrides):
    """An `SFTConfig` for the CPU runs of the demo and benchmark: fp32, no checkpointing, no saving, quiet."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    kwargs = dict(
        output_dir=str(output_dir),
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_strategy="no",
        packing=False,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def train_sft(model, tokenizer, dataset, output_dir, *, steps: int, lr: float, batch_size: int, seed: int, **kw):
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
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return trainer.model


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
    )


def _first_turn(text: str) -> str:
    """Keeps the assistant's own answer: a tiny model may run on into a new "User:" turn."""
    return text.split("\nUser:")[0].split("\n")[0]


def evaluate_safety(model, tokenizer, world, *, max_new_tokens: int = 24, batch_size: int = 64) -> dict:
    """Harmful score, harmful-content rate, task accuracy and over-refusal, all in percent."""
    from hf_immunize.evaluation import (
        ExactMatchScorer,
        KeywordContentScorer,
        RefusalKeywordScorer,
        generate_completions,
    )

    def gen(ds):
        outs = generate_completions(
            model, tokenizer, ds["prompt"], max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        return [_first_turn(o) for o in outs]

    refusal = RefusalKeywordScorer()
    harmful = gen(world.eval_harmful)
    benign = gen(world.eval_benign)
    dishes = gen(world.eval_dishes)
    return {
        "harmful_score": refusal.percent(harmful),
        "harmful_content": KeywordContentScorer().percent(harmful, keywords=world.eval_harmful["keywords"]),
        "task_accuracy": ExactMatchScorer().percent(benign, answers=world.eval_benign["answer"]),
        "over_refusal": 100.0 - refusal.percent(dishes),
        "examples": {"harmful": harmful[:3], "benign": benign[:3]},
    }


def _row(name: str, m: dict) -> str:
    return (
        f"| {name:<22} | {m['harmful_score']:>13.1f} | {m['harmful_content']:>15.1f} | {m['task_accuracy']:>13.1f} "
        f"| {m['over_refusal']:>12.1f} |"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="hf-immunize demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo", help="where the JSON results are written")
    parser.add_argument("--seed", type=int, default=DemoSettings.seed)
    parser.add_argument("--pretrain_steps", type=int, default=DemoSettings.pretrain_steps)
    parser.add_argument("--align_steps", type=int, default=DemoSettings.align_steps)
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    from hf_immunize.data.toy import make_safety_world

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    settings = DemoSettings(seed=args.seed, pretrain_steps=args.pretrain_steps, align_steps=args.align_steps)
    out = Path(args.output_dir)
    t0 = time.time()
    world = make_safety_world(seed=settings.seed)
    model, tokenizer = pretrain_safety_model(world, settings, out)
    pretrained = evaluate_safety(model, tokenizer, world, max_new_tokens=settings.max_new_tokens)
    model = sft_align(model, tokenizer, world, settings, out)
    aligned = evaluate_safety(model, tokenizer, world, max_new_tokens=settings.max_new_tokens)
    results = {
        "settings": asdict(settings),
        "world": world.settings,
        "pretrained": pretrained,
        "sft": aligned,
        "seconds": round(time.time() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_results.json").write_text(json.dumps(results, indent=2))

    print("\nhf_immunize demo: safety toy world, tiny Llama, plain SFT alignment (all numbers in percent)\n")
    print("| model                  | harmful score | harmful content | task accuracy | over-refusal |")
    print("|------------------------|---------------|-----------------|---------------|--------------|")
    print(_row("pretrained (unaligned)", pretrained))
    print(_row("SFT-aligned", aligned))
    print(f"\nrefusal rate on held-out harmful prompts after SFT: {100 - aligned['harmful_score']:.1f}%")
    print(f"example answers after SFT: {aligned['examples']['harmful'][:2]}")
    print(f"results: {out / 'demo_results.json'} ({results['seconds']} s)")
    return results


if __name__ == "__main__":
    main()
