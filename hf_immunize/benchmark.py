"""The efficacy benchmark on the safety toy world (`hf-immunize bench`; `make demo` runs its short version).

Per seed: build the world, pretrain a tiny Llama on benign tasks *and* harmful answers (capable, unaligned), then for
each arm (the pretrained model itself, plain SFT alignment = the undefended baseline, and each defense that has
registered an arm) align a private copy, attack it with the standard attack and with a worst-case sweep, and record
harmful score and task accuracy before and after. Results are written to `benchmarks/results/efficacy.json` under
`summary.safety.<arm>` (means over seeds) with every per-seed result beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf_immunize.demo import DemoSettings, alignment_peft_config, pretrain_safety_model, sft_align
from hf_immunize.evaluation.attack import AttackConfig, attack_preset, run_attack
from hf_immunize.evaluation.report import ImmunizationReport, mean_std
from hf_immunize.evaluation.sweep import sweep_attacks
from hf_immunize.utils import detached_copy

__all__ = ["ARMS", "BenchSettings", "register_arm", "run_safety_benchmark", "write_efficacy", "main"]

# arm name -> fn(model, tokenizer, world, settings, output_dir) -> aligned model. "pretrained" is the model as is.
ARMS: dict[str, Callable] = {
    "pretrained": lambda model, tokenizer, world, settings, output_dir: model,
    "sft": lambda model, tokenizer, world, settings, output_dir: sft_align(
        model, tokenizer, world, settings, output_dir
    ),
}


def register_arm(name: str, fn: Callable) -> None:
    """Adds a defense to the bench: `fn(model, tokenizer, world, settings, output_dir)` returns the aligned model."""
    ARMS[name] = fn


def _standard_attack() -> AttackConfig:
    # Chosen so that the undefended SFT baseline clearly breaks (>= 50 points): see benchmarks/README.md.
    return attack_preset("toy")


@dataclass
class BenchSettings(DemoSettings):
    """Benchmark settings: the demo's model and schedules, plus seeds, arms, the standard attack and the sweep."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: ["pretrained", "sft"])
    attack: AttackConfig = field(default_factory=_standard_attack)
    sweep: bool = True
    sweep_space: dict = field(
        default_factory=lambda: {"learning_rate": [3e-5, 1e-4, 3e-4, 1e-3], "mode": ["full", "lora_new"]}
    )
    sweep_budget: int = 8
    # Booster arm. The paper's α=0.1 (with λ=5) broke alignment itself on this tiny model (harmful 96.7 before any
    # attack); α=0.01 was the best setting of the sensitivity grid: benchmarks/results/booster_sensitivity.md.
    booster_regularizer_weight: float = 5.0
    booster_perturbation_step_size: float = 0.01


def _arm_result(result, sweep) -> dict:
    return {"attack": result.to_dict(), "sweep": sweep.to_dict() if sweep is not None else None}


def run_safety_benchmark(settings: BenchSettings, output_dir: str | os.PathLike, log=print) -> dict:
    """Runs every arm over every seed; returns `{"settings", "seeds", "per_seed", "summary"}` for the safety world."""
    from hf_immunize.data.toy import make_safety_world

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
            per_seed[str(seed)][arm] = _arm_result(result, sweep)
            log(
                f"seed {seed} {arm:<12} harmful {result.harmful_score_before:5.1f} -> "
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


def summarise_safety(per_seed: dict) -> dict:
    """Means over seeds per arm, with `_std` spreads, in the keys the README and the checks read."""
    arms = sorted({arm for seed in per_seed.values() for arm in seed}, key=list(ARMS).index)
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


def write_efficacy(world: str, results: dict, path: str | os.PathLike) -> dict:
    """Merges one world's results into the efficacy JSON (other worlds and arms are kept) and returns its content."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    # Arms are merged, so a run of one new arm (`--arms booster`) keeps the others' entries.
    data.setdefault("summary", {}).setdefault(world, {}).update(results["summary"])
    # Merged too: a run of one arm must not drop the settings of the others (the world's are the same for all).
    data.setdefault("settings", {}).setdefault(world, {}).update(results["settings"])
    seeds = data.setdefault("seeds", {}).get(world, [])
    data["seeds"][world] = sorted({*seeds, *results["seeds"]})
    per_seed = data.setdefault("per_seed", {}).setdefault(world, {})
    for seed, arms in results["per_seed"].items():
        per_seed.setdefault(seed, {}).update(arms)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return data


def safety_table(summary: dict) -> str:
    """Markdown table of `summary.safety` (mean ± std over seeds, percent)."""

    def cell(entry, key):
        if entry.get(key) is None:
            return "n/a"
        return f"{entry[key]:.1f} ± {entry.get(key + '_std') or 0:.1f}"

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
            f"| {arm} | {cell(entry, 'harmful_score_before')} | {cell(entry, 'harmful_score_after')} "
            f"| {cell(entry, 'harmful_score_after_worst')} | {cell(entry, 'harmful_content_after')} | {loss(entry)} "
            f"| {cell(entry, 'task_accuracy_before')} | {cell(entry, 'task_accuracy_after')} |"
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
    for arm, by_setting in cells.items():
        row = [f"{mean_std(by_setting[c])['mean']:.1f}" if c in by_setting else "n/a" for c in columns]
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--world", "bios"]:  # MLAC's world: its own arms, attacker and options
        from hf_immunize import benchmark_bios

        return benchmark_bios.main(argv[2:])
    parser = argparse.ArgumentParser(prog="hf-immunize bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--world",
        choices=["safety", "bios"],
        default="safety",
        help="safety: the LLM defenses (this parser); bios: MLAC's bios world (`--world bios --help` for its options)",
    )
    parser.add_argument("--output", default="benchmarks/results/efficacy.json", help="efficacy JSON to update")
    parser.add_argument("--table", default="benchmarks/results/efficacy_safety.md", help="Markdown table to write")
    parser.add_argument("--work_dir", default="outputs/bench", help="scratch directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=None, help=f"arms to run (default: all registered: {list(ARMS)})")
    parser.add_argument("--no_sweep", action="store_true", help="skip the worst-case sweep")
    parser.add_argument("--from_json", action="store_true", help="only rewrite the Markdown table from --output")
    args = parser.parse_args(argv)

    if not args.from_json:
        quiet_and_deterministic()
        _register_method_arms()
        settings = BenchSettings(seeds=args.seeds, arms=args.arms or list(ARMS), sweep=not args.no_sweep)
        t0 = time.time()
        results = run_safety_benchmark(settings, args.work_dir)
        results["settings"]["seconds"] = round(time.time() - t0)
        write_efficacy("safety", results, args.output)
    data = json.loads(Path(args.output).read_text())
    settings, summary = data["settings"]["safety"], data["summary"]["safety"]
    a = settings["attack"]
    text = (
        "<!-- written by `hf-immunize bench`; do not edit by hand -->\n"
        f"Safety toy world, seeds {data['seeds']['safety']}, standard attack: n={a['n_samples']}, "
        f"p={a['harmful_ratio']}, lr={a['learning_rate']}, {a['num_epochs']:g} epochs, {a['mode']}. "
        "Mean ± std over seeds; rates in percent, loss in nats.\n\n" + safety_table(summary) + "\n"
    )
    lr_table = sweep_table(data["per_seed"]["safety"])
    if lr_table:
        text += f"\nHarmful score after the attack for each setting of the sweep (mean over seeds):\n\n{lr_table}\n"
    Path(args.table).write_text(text)
    print("\n" + text)
    return data


def quiet_and_deterministic() -> None:
    """One CPU thread (results must not depend on the thread count) and no progress bars."""
    import datasets
    import torch
    import transformers

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def booster_align(model, tokenizer, world, settings: BenchSettings, output_dir):
    """The Booster arm: the same alignment data, schedule and optimizer as `sft`, plus Booster's regularizer.

    The harmful data is the defender's own: the alignment prompts paired with their harmful answers.
    """
    from hf_immunize.methods.booster import BoosterConfig, BoosterTrainer
    from hf_immunize.utils import CPU_TRAINING_DEFAULTS

    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    args = BoosterConfig(
        output_dir=str(Path(output_dir) / "booster"),
        max_steps=settings.align_steps,
        learning_rate=settings.align_lr,
        per_device_train_batch_size=settings.batch_size,
        seed=settings.seed,
        data_seed=settings.seed,
        max_length=settings.max_length,
        regularizer_weight=settings.booster_regularizer_weight,
        perturbation_step_size=settings.booster_perturbation_step_size,
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


def _register_method_arms() -> None:
    """Defenses that have landed register their benchmark arm here (kept out of import time: they are heavy)."""
    register_arm("booster", booster_align)


def demo_report(results: dict, arm: str, output_dir: str | os.PathLike) -> dict:
    """Card-ready report of one arm against the undefended SFT baseline (JSON + PNG)."""
    from hf_immunize.evaluation.attack import AttackResult

    per_seed = results["per_seed"].values()
    defended = [AttackResult.from_dict(s[arm]["attack"]) for s in per_seed]
    undefended = [AttackResult.from_dict(s["sft"]["attack"]) for s in per_seed] if arm != "sft" else []
    report = ImmunizationReport.from_results(arm, "tiny-llama-safety-world", defended, undefended)
    return report.save(output_dir)
