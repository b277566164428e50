"""Booster vs SFT with LoRA alignment (the paper's setting), attacked under each adapter protocol.

    python benchmarks/booster_lora_protocol.py            # seeds 0 1 2, ~15 minutes on 2 CPU cores

Both arms align a LoRA adapter (r=8 on every linear layer, lr 3e-3, 150 steps) on the same pretrained model and data.
Each aligned model is then attacked with the benchmark's standard attack (n=500, p=0.1, 3 epochs) under
`lora_continue` (keep training the alignment adapter: Booster's protocol in its paper), `lora_new` (merge, then a fresh
LoRA r=32 alpha=4 on q/k/v: the baselines' protocol there) and `full`, at several learning rates. Writes
`benchmarks/results/booster_lora_protocol.json` and a Markdown table beside it.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

from hf_immunize import benchmark
from hf_immunize.data.toy import make_safety_world
from hf_immunize.demo import pretrain_safety_model, sft_align
from hf_immunize.evaluation import mean_std, run_attack
from hf_immunize.utils import detached_copy

ARMS = {"sft": sft_align, "booster": benchmark.booster_align}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["lora_continue", "lora_new", "full"])
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--align_lr", type=float, default=3e-3)
    parser.add_argument("--output", default="benchmarks/results/booster_lora_protocol.json")
    parser.add_argument("--work_dir", default="outputs/booster_lora_protocol")
    args = parser.parse_args(argv)
    benchmark.quiet_and_deterministic()

    t0 = time.time()
    results: dict[str, dict[str, list[dict]]] = {}
    for seed in args.seeds:
        settings = benchmark.BenchSettings(seed=seed, sweep=False, align_lora_r=args.lora_r, align_lr=args.align_lr)
        world = make_safety_world(seed=seed)
        pretrained, tok = pretrain_safety_model(world, settings, Path(args.work_dir) / f"seed{seed}")
        data = (world.attack_harmful, world.attack_benign, world.eval_harmful, world.eval_benign)
        for arm, align in ARMS.items():
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
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = benchmark.BenchSettings(align_lora_r=args.lora_r, align_lr=args.align_lr)
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/booster_lora_protocol.py " + " ".join(argv or []),
                "settings": dataclasses.asdict(settings),
                "seeds": args.seeds,
                "seconds": round(time.time() - t0),
                "summary": summary,
                "per_seed": results,
            },
            indent=1,
        )
    )
    attacks = list(next(iter(summary.values())))
    lines = [
        "<!-- written by benchmarks/booster_lora_protocol.py -->",
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
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
