"""Booster's sensitivity to λ (regularizer weight) and α (perturbation step) on the safety toy world.

    python benchmarks/booster_sensitivity.py                       # grid λ ∈ {1, 5} × α ∈ {0.01, 0.1}, seeds 0 1 2
    python benchmarks/booster_sensitivity.py --lambdas 5 --alphas 0.1 --seeds 0

One pretrained model per seed is shared by every arm (as in `hf-immunize bench`); each arm aligns a private copy with
the same data, steps and learning rate, then takes the benchmark's standard attack. Writes
`benchmarks/results/booster_sensitivity.json` and a Markdown table beside it.
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

KEYS = ("harmful_score", "harmful_content", "harmful_loss", "task_accuracy")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="benchmarks/results/booster_sensitivity.json")
    parser.add_argument("--work_dir", default="outputs/booster_sensitivity")
    args = parser.parse_args(argv)
    benchmark.quiet_and_deterministic()

    rows: dict[str, list[dict]] = {}
    t0 = time.time()
    for seed in args.seeds:
        settings = benchmark.BenchSettings(seed=seed, sweep=False)
        attack = dataclasses.replace(settings.attack, seed=seed)
        world = make_safety_world(seed=seed)
        pretrained, tok = pretrain_safety_model(world, settings, Path(args.work_dir) / f"seed{seed}")
        data = (world.attack_harmful, world.attack_benign, world.eval_harmful, world.eval_benign)
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
                model = benchmark.booster_align(detached_copy(pretrained), tok, world, arm_settings, args.work_dir)
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
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/booster_sensitivity.py " + " ".join(argv or []),
                "attack": dataclasses.asdict(benchmark.BenchSettings().attack),
                "seeds": args.seeds,
                "seconds": round(time.time() - t0),
                "summary": summary,
                "per_seed": rows,
            },
            indent=1,
        )
    )

    def cell(stats):
        return "n/a" if stats["mean"] is None else f"{stats['mean']:.1f} ± {stats['std']:.1f}"

    lines = [
        "<!-- written by benchmarks/booster_sensitivity.py -->",
        f"Seeds {args.seeds}; standard attack of `hf-immunize bench`. Mean ± std over seeds, percent (loss in nats).",
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
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
