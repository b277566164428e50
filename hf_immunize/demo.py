"""The embedded offline demo: a tiny model learns the safety world, is aligned, attacked, and measured.

`make demo` runs :func:`main`, the short version of the safety benchmark (:mod:`hf_immunize.bench.safety`, which
holds the world's recipes and arms): one seed, every arm, the standard attack, no sweep. Stages:

1. pretrain a tiny Llama on the benign tasks *and* every weapon's harmful answer, so it starts capable and unaligned,
   like an open base model (:func:`hf_immunize.bench.recipes.pretrain_safety_model`);
2. align a copy per arm: plain SFT on refusals mixed with benign rows (the undefended baseline), and each defense;
3. attack each aligned model with the standard fine-tuning attack (`hf_immunize.evaluation.run_attack`), scored
   before and after: harmful score (no-refusal rate on held-out harmful prompts), harmful-content rate, task accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from hf_immunize.bench.recipes import train_sft  # noqa: F401  (kept importable from here)

__all__ = ["demo_report", "evaluate_safety", "main"]


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


def demo_report(results: dict, arm: str, output_dir: str | os.PathLike) -> dict:
    """Card-ready report of one arm against the undefended SFT baseline (JSON + PNG)."""
    from hf_immunize.evaluation.attack import AttackResult
    from hf_immunize.evaluation.report import ImmunizationReport

    per_seed = results["per_seed"].values()
    defended = [AttackResult.from_dict(s[arm]["attack"]) for s in per_seed]
    undefended = [AttackResult.from_dict(s["sft"]["attack"]) for s in per_seed] if arm != "sft" else []
    report = ImmunizationReport.from_results(arm, "tiny-llama-safety-world", defended, undefended)
    return report.save(output_dir)


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:5.1f}"


def main(argv: list[str] | None = None) -> dict:
    """The short benchmark: one seed, arms pretrained / sft / booster, the standard attack, no sweep."""
    parser = argparse.ArgumentParser(prog="hf-immunize demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo", help="where the results and the report are written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain_steps", type=int, default=500)
    parser.add_argument("--align_steps", type=int, default=150)
    parser.add_argument("--arms", nargs="+", default=None, help="arms to run (default: pretrained, sft, booster)")
    args = parser.parse_args(argv)

    from hf_immunize.bench import safety
    from hf_immunize.bench.results import quiet_and_deterministic

    quiet_and_deterministic()
    settings = safety.BenchSettings(
        seeds=[args.seed],
        arms=args.arms or ["pretrained", "sft", "booster"],
        sweep=False,
        pretrain_steps=args.pretrain_steps,
        align_steps=args.align_steps,
    )
    out = Path(args.output_dir)
    t0 = time.time()
    results = safety.run_safety_benchmark(settings, out / "work", log=lambda msg: print(msg, flush=True))
    results["seconds"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_results.json").write_text(json.dumps(results, indent=1))
    best = next((a for a in reversed(settings.arms) if a not in ("pretrained", "sft")), "sft")
    report_paths = demo_report(results, best, out)

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
