"""Why MLAC's result spreads over seeds (`hf-immunize bench --world bios --study spread`).

For every seed and arm: the arm's model (trained once and kept under `--model_dir`, so the headline run and this
study measure the same models), its MLAC training log, and the attacker's accuracy curve at every point of its grid
(learning rate x linear probe / full), run for the largest step count. The result of a shorter step count is the same
run's best accuracy up to that step: the attack is deterministic and its first steps do not depend on how many follow
(constant learning rate, batch order drawn step by step from the seeded generator). From these curves the study
replays the search exactly as `search_classifier_attack` runs it (the grid in its seeded order, the stopping rules)
with the patience of the stored result and with the whole grid, and says where each stops and what it finds.

Writes `exploration.bios.spread` in the efficacy JSON and `benchmarks/results/mlac_spread.md`.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from hf_immunize.bench.bios_arms import Settings, desired_accuracy, shared_base, train_arm
from hf_immunize.bench.results import record_exploration

__all__ = ["grid_curves", "main", "replay_search"]


def _space(settings: Settings):
    from hf_immunize.evaluation.classifier_attack import ClassifierSearchSpace

    return ClassifierSearchSpace(
        learning_rate=tuple(settings.attack_lr_range),
        steps=tuple(settings.attack_steps),
        batch_sizes=tuple(settings.attack_batch_sizes),
        lr_grid_size=settings.attack_lr_grid,
    )


def grid_curves(model, tokenizer, world, settings: Settings, seed: int, n: int) -> list[dict]:
    """The attacker's curve at every (learning rate, batch size, mode) of the grid, for the largest step count."""
    from hf_immunize.data.toy import BiosWorld
    from hf_immunize.evaluation.classifier_attack import ClassifierAttackConfig, attack_classifier

    pool = BiosWorld.with_label(world.val1, "gender")
    evaluation = BiosWorld.with_label(world.val2, "gender")
    base = ClassifierAttackConfig(
        max_length=settings.max_length, n_examples=min(n, len(pool)), num_labels=2, seed=seed
    )
    longest = max(settings.attack_steps)
    points = {(p["learning_rate"], p["batch_size"], p["mode"]) for p in _space(settings).grid()}
    out = []
    for lr, batch_size, mode in sorted(points):
        config = replace(base, learning_rate=lr, steps=longest, batch_size=batch_size, mode=mode)
        result = attack_classifier(model, tokenizer, config, pool, evaluation)
        out.append({"learning_rate": lr, "batch_size": batch_size, "mode": mode, "curve": result.curve})
    return out


def _trial_accuracy(curves: list[dict], point: dict) -> float:
    """A grid point's best accuracy: the longest run's curve up to the point's step count."""
    run = next(
        c
        for c in curves
        if (c["learning_rate"], c["batch_size"], c["mode"])
        == (point["learning_rate"], point["batch_size"], point["mode"])
    )
    return max(acc for step, acc in run["curve"] if step <= point["steps"])


def replay_search(curves: list[dict], settings: Settings, seed: int, patience: int, budget: int | None = None) -> dict:
    """`search_classifier_attack`'s grid search (sampler "grid") replayed on the curves: same order, same rules
    (`budget` defaults to the settings' attacker budget)."""
    points = _space(settings).grid()
    random.Random(seed).shuffle(points)  # the grid proposer's order
    trials, best, since, stop = [], 0, 0, "budget"
    for index in range(settings.attack_budget if budget is None else budget):
        if index >= len(points):
            stop = "exhausted"
            break
        accuracy = _trial_accuracy(curves, points[index])
        trials.append({**points[index], "best_accuracy": accuracy})
        if accuracy > trials[best]["best_accuracy"]:
            best = index
        since = 0 if best == index else since + 1
        if accuracy >= 1.0 or (index == 0 and accuracy >= 0.99):
            stop = "solved"
            break
        if since >= patience:
            stop = "patience"
            break
    top = max(points, key=lambda p: _trial_accuracy(curves, p))
    return {
        "patience": patience,
        "trials": trials,
        "stop_reason": stop,
        "best": trials[best],
        "grid_best": {**top, "best_accuracy": _trial_accuracy(curves, top)},
        "visited_grid_best": any(
            all(t[k] == top[k] for k in ("learning_rate", "steps", "batch_size", "mode")) for t in trials
        ),
    }


def _repeats(model, tokenizer, world, settings: Settings, point: dict, n: int) -> list[float]:
    from hf_immunize.data.toy import BiosWorld
    from hf_immunize.evaluation.classifier_attack import ClassifierAttackConfig, attack_classifier

    pool = BiosWorld.with_label(world.val1, "gender")
    evaluation = BiosWorld.with_label(world.val2, "gender")
    keys = ("learning_rate", "steps", "batch_size", "mode")
    config = ClassifierAttackConfig(max_length=settings.max_length, n_examples=min(n, len(pool)))
    return [
        attack_classifier(
            model, tokenizer, replace(config, seed=s, **{k: point[k] for k in keys}), pool, evaluation
        ).best_accuracy
        for s in range(settings.attack_repeats)
    ]


def _stored_curves(previous: dict | None, settings: Settings, seed: int, arm: str) -> list[dict] | None:
    """Curves of an earlier run of this study with the same settings (they depend on nothing else)."""
    if not previous:
        return None
    keep = ("seeds", "arms", "attack_patience", "attack_budget", "attack_repeats")
    same = {k: v for k, v in previous.get("settings", {}).items() if k not in keep} == {
        k: v for k, v in asdict(settings).items() if k not in keep
    }
    return previous.get("per_seed", {}).get(str(seed), {}).get(arm, {}).get("curves") if same else None


def run(settings: Settings, model_dir: Path | None, log=print, previous: dict | None = None) -> dict:
    from hf_immunize.data.toy import make_bios_world
    from hf_immunize.evaluation.classifier_attack import ClassifierAttackConfig
    from hf_immunize.testing import tiny_tokenizer

    every = ClassifierAttackConfig().eval_every
    if any(steps % every for steps in settings.attack_steps):
        raise ValueError(
            f"--study spread reads every step count off the longest run's curve, evaluated every {every} steps: "
            f"`--attack_steps` must be multiples of {every}, got {settings.attack_steps}."
        )

    n = max(settings.attack_ns)
    per_seed = {}
    for seed in settings.seeds:
        world = make_bios_world(seed=seed, n=settings.n_bios, scrub_pronouns=settings.scrub_pronouns)
        tokenizer = tiny_tokenizer()
        per_seed[str(seed)] = {}
        with tempfile.TemporaryDirectory() as tmp:
            base = shared_base(settings, seed, world, tokenizer, tmp)
            for arm in settings.arms:
                t0 = time.time()
                model, extra = train_arm(arm, base, tokenizer, world, settings, seed, tmp, model_dir)
                curves = _stored_curves(previous, settings, seed, arm)
                if curves is None:
                    curves = grid_curves(model, tokenizer, world, settings, seed, n)
                size = len(_space(settings).grid())
                searches = {
                    "stored_patience": replay_search(curves, settings, seed, settings.attack_patience),
                    "whole_grid": replay_search(curves, settings, seed, size, budget=size),
                }
                repeats = {
                    name: _repeats(model, tokenizer, world, settings, search["best"], n)
                    for name, search in searches.items()
                }
                per_seed[str(seed)][arm] = {
                    "desired_accuracy": 100 * desired_accuracy(model, tokenizer, world.test, settings.max_length),
                    "training_log": extra.get("training_log"),
                    "curves": curves,
                    "searches": searches,
                    "repeats": repeats,
                    "seconds": round(time.time() - t0, 1),
                }
                log(
                    f"seed {seed} {arm:<12} grid best {100 * searches['whole_grid']['grid_best']['best_accuracy']:.1f}"
                    f" | patience {settings.attack_patience}: {len(searches['stored_patience']['trials'])} trials, "
                    f"stop {searches['stored_patience']['stop_reason']}, repeats "
                    f"{100 * statistics.fmean(repeats['stored_patience']):.1f} | whole grid: repeats "
                    f"{100 * statistics.fmean(repeats['whole_grid']):.1f}"
                )
    return per_seed


def markdown(run: dict) -> str:
    """The study's tables: per seed and arm, the attacker's best accuracy per grid point (from its curve), where the
    search with the stored patience stopped, and the result with the whole grid; MLAC's training log."""
    settings = run["settings"]
    lines = [
        f"<!-- written by `{run['command']}` -->",
        "# MLAC on the bios world: the spread over seeds",
        "",
        f"Seeds {settings['seeds']}, n = {max(settings['attack_ns'])} attacker examples, grid of "
        f"{settings['attack_lr_grid']} learning rates x {settings['attack_steps']} steps x linear probe / full, "
        f"{settings['attack_repeats']} repeats of the chosen setting. Gender accuracy on val2, percent.",
        "",
        "## The search with the stored patience against the whole grid",
        "",
        "| seed | arm | patience "
        f"{settings['attack_patience']}: trials, stop | its pick | its result | best grid point | whole-grid result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def point(p):
        return f"lr {p['learning_rate']:.0e}, {p['steps']} steps, {p['mode']}"

    for seed, arms in run["per_seed"].items():
        for arm, r in arms.items():
            short, whole = r["searches"]["stored_patience"], r["searches"]["whole_grid"]
            lines.append(
                f"| {seed} | {arm} | {len(short['trials'])}, {short['stop_reason']}"
                f"{'' if short['visited_grid_best'] else ' (best point never tried)'} | {point(short['best'])} "
                f"| {100 * statistics.fmean(r['repeats']['stored_patience']):.1f} | {point(whole['grid_best'])}: "
                f"{100 * whole['grid_best']['best_accuracy']:.1f} "
                f"| {100 * statistics.fmean(r['repeats']['whole_grid']):.1f} |"
            )
    lines += ["", "## The attacker's curves (accuracy at each evaluation step, full fine-tuning)", ""]
    for seed, arms in run["per_seed"].items():
        for arm, r in arms.items():
            for c in r["curves"]:
                if c["mode"] != "full":
                    continue
                curve = " ".join(f"{100 * acc:.0f}" for _, acc in c["curve"])
                lines.append(f"- seed {seed}, {arm}, lr {c['learning_rate']:.0e}: {curve}")
    lines += ["", "## MLAC's training log (every logging window)", ""]
    for seed, arms in run["per_seed"].items():
        for arm, r in arms.items():
            log = r.get("training_log")
            if not log:
                continue
            for key, values in log.items():
                lines.append(f"- seed {seed}, {arm}, `{key}`: " + " ".join(f"{v:.3g}" for v in values))
    return "\n".join(lines) + "\n"


def main(settings: Settings, model_dir: Path | None, output: Path, command: str) -> dict:
    from hf_immunize.bench.results import load

    t0 = time.time()
    previous = load(output).get("exploration", {}).get("bios", {}).get("spread")
    per_seed = run(settings, model_dir, log=lambda m: print(m, flush=True), previous=previous)
    result = {
        "command": command,
        "settings": asdict(settings),
        "seconds": round(time.time() - t0),
        "per_seed": per_seed,
    }
    record_exploration("bios", "spread", result, output)
    text = markdown(result)
    Path(output).with_name("mlac_spread.md").write_text(text)  # beside the efficacy JSON
    print(text)
    return result
