"""The efficacy benchmark on the safety toy world (`hf-immunize bench --world safety`; `make demo` is its short form).

Per seed: build the world, pretrain a tiny Llama on benign tasks *and* harmful answers (capable, unaligned), then for
each arm align a private copy, attack it with the standard attack (`attack_preset("toy")`) and a worst-case sweep,
and record harmful score and task accuracy before and after. Arms: `pretrained` (the model as is), `sft` (plain SFT
alignment, the undefended baseline), `booster` (exact Booster), `booster_fast_k2` / `booster_fast_k4` (the fast
variant, one harmful refresh every k steps), and `mistake_sft` (mistake analysis, its own protocol on the same world:
:mod:`hf_immunize.bench.mistake_sft`). Results: `summary.safety.<arm>` of `benchmarks/results/efficacy.json` (means
over every stored seed) with the per-seed results beside them, and `benchmarks/results/efficacy_safety.md`.

    hf-immunize bench --world safety                         # every arm, seeds 0 1 2, attack + sweep
    hf-immunize bench --world safety --arms booster_fast_k2  # one arm, merged into the stored results
    hf-immunize bench --world safety --study lora_protocol   # Booster vs SFT with LoRA alignment, per protocol
    hf-immunize bench --world safety --study sensitivity     # Booster's λ x α grid
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import asdict
from pathlib import Path

from hf_immunize.bench.recipes import pretrain_safety_model
from hf_immunize.bench.results import (
    DEFAULT_OUTPUT,
    RESULTS_DIR,
    command_line,
    load,
    mean_std,
    quiet_and_deterministic,
    write_efficacy,
)
from hf_immunize.bench.safety_arms import ARMS, PROTOCOL_ARMS, BenchSettings, register_arm

__all__ = [
    "ARMS",
    "BenchSettings",
    "main",
    "register_arm",
    "run_safety_benchmark",
    "safety_table",
    "summarise_safety",
]


def run_safety_benchmark(settings: BenchSettings, output_dir: str | os.PathLike, log=print) -> dict:
    """Runs every arm over every seed; returns `{"settings", "seeds", "per_seed", "summary"}` for the safety world."""
    from hf_immunize.data.toy import make_safety_world
    from hf_immunize.evaluation.attack import run_attack
    from hf_immunize.evaluation.sweep import sweep_attacks
    from hf_immunize.utils import detached_copy

    unknown = [a for a in settings.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown benchmark arm(s) {unknown}; registered arms: {sorted(ARMS)}.")
    output_dir = Path(output_dir)
    per_seed: dict[str, dict] = {}
    for seed in settings.seeds:
        t0 = time.time()
        seed_settings = dataclasses.replace(
            settings, seed=seed, attack=dataclasses.replace(settings.attack, seed=seed)
        )
        world = make_safety_world(seed=seed)
        pretrained, tokenizer = pretrain_safety_model(world, seed_settings, output_dir / f"seed{seed}")
        per_seed[str(seed)] = {}
        for arm in settings.arms:
            t_arm = time.time()
            model = ARMS[arm](detached_copy(pretrained), tokenizer, world, seed_settings, output_dir / f"seed{seed}")
            datasets = (world.attack_harmful, world.attack_benign, world.eval_harmful, world.eval_benign)
            result = run_attack(model, tokenizer, seed_settings.attack, *datasets)
            sweep = None
            if settings.sweep:
                sweep = sweep_attacks(
                    model,
                    tokenizer,
                    seed_settings.attack,
                    *datasets,
                    space=settings.sweep_space,
                    budget=settings.sweep_budget,
                    seed=seed,
                )
            per_seed[str(seed)][arm] = {
                "attack": result.to_dict(),
                "sweep": sweep.to_dict() if sweep is not None else None,
                "seconds": round(time.time() - t_arm, 1),
            }
            log(
                f"seed {seed} {arm:<16} harmful {result.harmful_score_before:5.1f} -> "
                f"{result.harmful_score_after:5.1f}"
                + (f" (worst {sweep.worst['harmful_score_after']:5.1f})" if sweep else "")
                + f"  task {result.task_accuracy_before:5.1f} -> {result.task_accuracy_after:5.1f}"
            )
        log(f"seed {seed} done in {time.time() - t0:.0f} s")
    return {
        "settings": asdict(settings),
        "seeds": list(settings.seeds),
        "per_seed": per_seed,
        "summary": summarise_safety(per_seed),
    }


def _arm_order(arm: str) -> tuple:
    order = list(ARMS)
    return (order.index(arm) if arm in order else len(order), arm)


def summarise_safety(per_seed: dict) -> dict:
    """Means over seeds per arm, with `_std` spreads, in the keys the README and the checks read."""
    arms = sorted({arm for seed in per_seed.values() for arm in seed}, key=_arm_order)
    summary = {}
    for arm in arms:
        runs = [seed[arm] for seed in per_seed.values() if arm in seed]
        values = {
            "harmful_score_before": [r["attack"]["before"]["harmful_score"] for r in runs],
            "harmful_score_after": [r["attack"]["after"]["harmful_score"] for r in runs],
            "task_accuracy_before": [r["attack"]["before"].get("task_accuracy") for r in runs],
            "task_accuracy_after": [r["attack"]["after"].get("task_accuracy") for r in runs],
            "harmful_content_after": [r["attack"]["after"].get("harmful_content") for r in runs],
            "harmful_loss_before": [r["attack"]["before"].get("harmful_loss") for r in runs],
            "harmful_loss_after": [r["attack"]["after"].get("harmful_loss") for r in runs],
        }
        if all(r["sweep"] for r in runs):
            values["harmful_score_after_worst"] = [r["sweep"]["worst"]["harmful_score_after"] for r in runs]
            values["harmful_score_after_worst_within_utility"] = [
                (r["sweep"]["worst_within_utility"] or {}).get("harmful_score_after") for r in runs
            ]
        entry = {}
        for key, vals in values.items():
            stats = mean_std(vals)
            entry[key] = stats["mean"]
            entry[f"{key}_std"] = stats["std"]
        entry["n_seeds"] = len(runs)
        summary[arm] = entry
    return summary


def _cell(entry: dict, key: str) -> str:
    if entry.get(key) is None:
        return "n/a"
    return f"{entry[key]:.1f} ± {entry.get(key + '_std') or 0:.1f}"


def safety_table(summary: dict) -> str:
    """Markdown table of `summary.safety` (mean ± std over seeds, percent)."""

    def loss(entry):
        if entry.get("harmful_loss_before") is None:
            return "n/a"
        return f"{entry['harmful_loss_before']:.2f} → {entry['harmful_loss_after']:.2f}"

    lines = [
        "| arm | harmful score before | after attack | worst of sweep | harmful content after | held-out harmful loss "
        "| task accuracy before | after attack |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, entry in summary.items():
        if not {"harmful_score_before", "harmful_score_after"} & set(entry):  # another protocol, its own table
            continue
        lines.append(
            f"| {arm} | {_cell(entry, 'harmful_score_before')} | {_cell(entry, 'harmful_score_after')} "
            f"| {_cell(entry, 'harmful_score_after_worst')} | {_cell(entry, 'harmful_content_after')} "
            f"| {loss(entry)} | {_cell(entry, 'task_accuracy_before')} | {_cell(entry, 'task_accuracy_after')} |"
        )
    return "\n".join(lines)


def sweep_table(per_seed: dict) -> str:
    """Harmful score after the attack per attacker setting of the sweep (mean over seeds), one row per arm."""
    cells: dict[str, dict[str, list[float]]] = {}
    for seed in per_seed.values():
        for arm, res in seed.items():
            for trial in (res.get("sweep") or {}).get("trials", []):
                key = ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["overrides"].items()
                )
                cells.setdefault(arm, {}).setdefault(key, []).append(trial["harmful_score_after"])
    if not cells:
        return ""
    columns = sorted({k for arm in cells.values() for k in arm})
    lines = ["| arm | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for arm in sorted(cells, key=_arm_order):
        by_setting = cells[arm]
        row = [f"{mean_std(by_setting[c])['mean']:.1f}" if c in by_setting else "n/a" for c in columns]
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def fast_variant_lines(summary: dict) -> list[str]:
    """Booster's fast variant against exact Booster (goal: harmful score after the attack within 2 points)."""
    exact = summary.get("booster", {}).get("harmful_score_after")
    lines = []
    for arm in ("booster_fast_k2", "booster_fast_k4"):
        fast = summary.get(arm, {}).get("harmful_score_after")
        if exact is None or fast is None:
            continue
        gap = fast - exact
        worst = summary[arm].get("harmful_score_after_worst")
        exact_worst = summary["booster"].get("harmful_score_after_worst")
        lines.append(
            f"- `{arm}` − `booster`, harmful score after the standard attack: {gap:+.1f} points (goal within ±2: "
            f"{'met' if abs(gap) <= 2 else 'missed'})"
            + (f"; worst of sweep {worst:.1f} vs {exact_worst:.1f}" if worst is not None and exact_worst else "")
            + "."
        )
    return lines


def write_tables(output: str | os.PathLike, table: str | os.PathLike) -> str:
    data = load(output)
    settings, summary = data["settings"]["safety"], data["summary"]["safety"]
    a = settings["attack"]
    text = (
        "<!-- written by `hf-immunize bench --world safety`; do not edit by hand -->\n"
        f"Safety toy world, seeds {data['seeds']['safety']}, standard attack: n={a['n_samples']}, "
        f"p={a['harmful_ratio']}, lr={a['learning_rate']}, {a['num_epochs']:g} epochs, {a['mode']}. "
        "Mean ± std over seeds; rates in percent, loss in nats.\n\n" + safety_table(summary) + "\n"
    )
    fast = fast_variant_lines(summary)
    if fast:
        text += "\nBooster's fast variant (`perturbation_refresh_steps=k`) against exact Booster:\n\n" + "\n".join(
            fast
        )
        text += "\n"
    lr_table = sweep_table(data["per_seed"]["safety"])
    if lr_table:
        text += f"\nHarmful score after the attack for each setting of the sweep (mean over seeds):\n\n{lr_table}\n"
    Path(table).write_text(text)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-immunize bench --world safety", description=__doc__.splitlines()[0])
    choices = [*ARMS, *PROTOCOL_ARMS]
    parser.add_argument("--arms", nargs="+", default=None, choices=choices, help="arms to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no_sweep", action="store_true", help="skip the worst-case sweep")
    parser.add_argument(
        "--study",
        choices=["standard", "lora_protocol", "sensitivity"],
        default="standard",
        help="standard: the arms above; lora_protocol: Booster vs SFT with LoRA alignment under each attack "
        "protocol; sensitivity: Booster's λ x α grid (hf_immunize.bench.safety_studies)",
    )
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="efficacy JSON to update")
    parser.add_argument("--table", default=str(RESULTS_DIR / "efficacy_safety.md"), help="Markdown table to write")
    parser.add_argument("--work_dir", default="outputs/bench", help="scratch directory")
    parser.add_argument("--from_json", action="store_true", help="only rewrite the Markdown table from --output")
    return parser


def main(argv: list[str] | None = None):
    args, rest = _parser().parse_known_args(argv)
    if args.study != "standard":
        from hf_immunize.bench import safety_studies

        return safety_studies.main(args.study, argv)
    arms = args.arms or [*ARMS, *PROTOCOL_ARMS]
    standard = [a for a in arms if a in ARMS]
    if rest and (standard or len(arms) != 1):  # a protocol arm run alone takes its own options
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    command = command_line("safety", argv)
    data = None
    if not args.from_json and standard:
        quiet_and_deterministic()
        settings = BenchSettings(seeds=args.seeds, arms=standard, sweep=not args.no_sweep)
        t0 = time.time()
        results = run_safety_benchmark(settings, args.work_dir, log=lambda m: print(m, flush=True))
        results["settings"]["seconds"] = round(time.time() - t0)
        results["settings"]["command"] = command
        data = write_efficacy("safety", results, args.output, summarise=summarise_safety)
    for arm in arms:
        if arm in PROTOCOL_ARMS:
            import importlib

            protocol = importlib.import_module(PROTOCOL_ARMS[arm])
            options = ["--from_json"] if args.from_json else ["--seeds", *map(str, args.seeds), *rest]
            data = protocol.main([*options, "--output", args.output], command=command)
    if "safety" in load(args.output).get("summary", {}):
        print("\n" + write_tables(args.output, args.table))
    return data
