"""Booster studies on the safety world (`hf-immunize bench --world safety --study lora_protocol|sensitivity`).

- `lora_protocol`: Booster vs SFT with LoRA alignment (the paper's setting: r=8 on every linear layer, lr 3e-3,
  150 steps), each aligned model attacked with the standard attack (n=500, p=0.1, 3 epochs) under `lora_continue`
  (keep training the alignment adapter: Booster's protocol in its paper), `lora_new` (merge, then a fresh LoRA r=32
  alpha=4 on q/k/v: the baselines' protocol there) and `full`, at several learning rates. Writes
  `benchmarks/results/booster_lora_protocol.json` and the Markdown table beside it.
- `sensitivity`: Booster's λ (regularizer weight) x α (perturbation step) grid, each arm aligned like `sft` and
  attacked with the standard attack. Writes `benchmarks/results/booster_sensitivity.json` and its table.

One pretrained model per seed is shared by every arm, as in the standard benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from hf_immunize.bench.recipes import pretrain_safety_model, sft_align
from hf_immunize.bench.results import RESULTS_DIR, command_line, mean_std, quiet_and_deterministic, save
from hf_immunize.bench.safety_arms import BenchSettings, booster_align

__all__ = ["lora_protocol", "main", "sensitivity"]

KEYS = ("harmful_score", "harmful_content", "harmful_loss", "task_accuracy")


def _parser(study: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"hf-immunize bench --world safety --study {study}")
    parser.add_argument("--study", default=study)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work_dir", default=f"outputs/{study}")
    if study == "lora_protocol":
        parser.add_argument("--modes", nargs="+", default=["lora_continue", "lora_new", "full"])
        parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
        parser.add_argument("--lora_r", type=int, default=8)
        parser.add_argument("--align_lr", type=float, default=3e-3)
        parser.add_argument("--output", default=str(RESULTS_DIR / "booster_lora_protocol.json"))
    else:
        parser.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 5.0])
        parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.1])
        parser.add_argument("--output", default=str(RESULTS_DIR / "booster_sensitivity.json"))
    return parser


def _world(seed: int, settings: BenchSettings, work_dir: str):
    from hf_immunize.data.toy import make_safety_world

    world = make_safety_world(seed=seed)
    pretrained, tok = pretrain_safety_model(world, settings, Path(work_dir) / f"seed{seed}")
    data = (world.attack_harmful, world.attack_benign, world.eval_harmful, world.eval_benign)
    return world, pretrained, tok, data


def lora_protocol(args, command: str) -> dict:
    from hf_immunize.evaluation import run_attack
    from hf_immunize.utils import detached_copy

    arms = {"sft": sft_align, "booster": booster_align}
    t0 = time.time()
    results: dict[str, dict[str, list[dict]]] = {}
    for seed in args.seeds:
        settings = BenchSettings(seed=seed, sweep=False, align_lora_r=args.lora_r, align_lr=args.align_lr)
        world, pretrained, tok, data = _world(seed, settings, args.work_dir)
        for arm, align in arms.items():
            model = align(detached_copy(pretrained), tok, world, settings, args.work_dir)
            for mode in args.modes:
                for lr in args.learning_rates:
                    attack = dataclasses.replace(settings.attack, seed=seed, mode=mode, learning_rate=lr)
                    r = run_attack(model, tok, attack, *data)
                    row = {
                        "seed": seed,
                        "harmful_score_before": r.harmful_score_before,
                        "harmful_score_after": r.harmful_score_after,
                        "harmful_loss_after": r.after["harmful_loss"],
                        "task_accuracy_before": r.task_accuracy_before,
                        "task_accuracy_after": r.task_accuracy_after,
                    }
                    results.setdefault(arm, {}).setdefault(f"{mode} lr={lr:g}", []).append(row)
                    print(
                        f"seed {seed} {arm:<8} {mode:<14} lr={lr:g}: harmful {r.harmful_score_before:5.1f} -> "
                        f"{r.harmful_score_after:5.1f}  task {r.task_accuracy_before:5.1f} -> "
                        f"{r.task_accuracy_after:5.1f}",
                        flush=True,
                    )
    summary = {
        arm: {
            attack: {k: mean_std([r[k] for r in rows]) for k in rows[0] if k != "seed"} for attack, rows in by.items()
        }
        for arm, by in results.items()
    }
    settings = BenchSettings(align_lora_r=args.lora_r, align_lr=args.align_lr)
    run = {
        "command": command,
        "settings": dataclasses.asdict(settings),
        "seeds": args.seeds,
        "seconds": round(time.time() - t0),
        "summary": summary,
        "per_seed": results,
    }
    attacks = list(next(iter(summary.values())))
    lines = [
        f"<!-- written by `{command}` -->",
        f"LoRA alignment (r={args.lora_r}, all linear layers, lr {args.align_lr:g}); seeds {args.seeds}; standard "
        "attack (n=500, p=0.1, 3 epochs) per protocol and learning rate. Harmful score after the attack, mean ± std "
        "over seeds (percent); harmful score before the attack and task accuracy in the last columns.",
        "",
        "| arm | " + " | ".join(attacks) + " | harmful before | task acc before |",
        "| --- |" + " --- |" * (len(attacks) + 2),
    ]
    for arm, by in summary.items():
        cells = [
            f"{by[a]['harmful_score_after']['mean']:.1f} ± {by[a]['harmful_score_after']['std']:.1f}" for a in attacks
        ]
        first = by[attacks[0]]
        lines.append(
            f"| {arm} | " + " | ".join(cells) + f" | {first['harmful_score_before']['mean']:.1f} "
            f"| {first['task_accuracy_before']['mean']:.1f} |"
        )
    return run, lines


def sensitivity(args, command: str) -> dict:
    from hf_immunize.evaluation import run_attack
    from hf_immunize.utils import detached_copy

    rows: dict[str, list[dict]] = {}
    t0 = time.time()
    for seed in args.seeds:
        settings = BenchSettings(seed=seed, sweep=False)
        attack = dataclasses.replace(settings.attack, seed=seed)
        world, pretrained, tok, data = _world(seed, settings, args.work_dir)
        arms = [("sft", None, None)] + [
            (f"booster λ={lam:g} α={alpha:g}", lam, alpha) for lam in args.lambdas for alpha in args.alphas
        ]
        for name, lam, alpha in arms:
            if lam is None:
                model = sft_align(detached_copy(pretrained), tok, world, settings, args.work_dir)
            else:
                arm_settings = dataclasses.replace(
                    settings, booster_regularizer_weight=lam, booster_perturbation_step_size=alpha
                )
                model = booster_align(detached_copy(pretrained), tok, world, arm_settings, args.work_dir)
            result = run_attack(model, tok, attack, *data)
            row = {"seed": seed}
            for key in KEYS:
                row[f"{key}_before"] = result.before.get(key)
                row[f"{key}_after"] = result.after.get(key)
            rows.setdefault(name, []).append(row)
            print(
                f"seed {seed} {name:<24} harmful {row['harmful_score_before']:5.1f} -> "
                f"{row['harmful_score_after']:5.1f}  task {row['task_accuracy_before']:5.1f} -> "
                f"{row['task_accuracy_after']:5.1f}  loss {row['harmful_loss_after']:.2f}",
                flush=True,
            )
    summary = {
        name: {k: mean_std([r[k] for r in runs]) for k in runs[0] if k != "seed"} for name, runs in rows.items()
    }
    run = {
        "command": command,
        "attack": dataclasses.asdict(BenchSettings().attack),
        "seeds": args.seeds,
        "seconds": round(time.time() - t0),
        "summary": summary,
        "per_seed": rows,
    }

    def cell(stats):
        return "n/a" if stats["mean"] is None else f"{stats['mean']:.1f} ± {stats['std']:.1f}"

    lines = [
        f"<!-- written by `{command}` -->",
        f"Seeds {args.seeds}; standard attack of `hf-immunize bench --world safety`. Mean ± std over seeds, percent "
        "(loss in nats).",
        "",
        "| arm | harmful before | harmful after | content after | harmful loss after | task acc before "
        "| task acc after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary.items():
        loss = s["harmful_loss_after"]
        lines.append(
            f"| {name} | {cell(s['harmful_score_before'])} | {cell(s['harmful_score_after'])} "
            f"| {cell(s['harmful_content_after'])} | {loss['mean']:.2f} ± {loss['std']:.2f} "
            f"| {cell(s['task_accuracy_before'])} | {cell(s['task_accuracy_after'])} |"
        )
    return run, lines


def main(study: str, argv: list[str] | None = None) -> dict:
    args = _parser(study).parse_args(argv)
    quiet_and_deterministic()
    run, lines = {"lora_protocol": lora_protocol, "sensitivity": sensitivity}[study](
        args, command_line("safety", argv)
    )
    out = Path(args.output)
    save(run, out)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return run
