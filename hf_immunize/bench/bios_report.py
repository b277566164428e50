"""Summary, goal check, Markdown table and result merging of the bios world (`hf-immunize bench --world bios`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from hf_immunize.bench.results import replace_world, write_efficacy

__all__ = ["ARMS", "GOALS", "goals", "import_summary", "markdown", "merge_dumps", "summarise", "write_results"]

ARMS = ("pretrained", "random_init", "mlac", "mlac_k0")
GOALS = {"attacker_within_points_of_random_init": 3.0, "desired_within_points_of_pretrained": 1.0}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarise(per_seed: dict) -> dict:
    """Per arm, means over seeds (percent): `attacker_accuracy` = the strongest attacker over n (mean of its
    repeats), `attacker_accuracy_by_n`, `desired_accuracy`, each with `_std` (over seeds), and the majority rate."""
    arms = [a for a in ARMS if any(a in s for s in per_seed.values())]
    summary = {}
    for arm in arms:
        runs = [s[arm] for s in per_seed.values() if arm in s]
        ns = list(runs[0]["attacker"])
        by_n = {n: _mean_std([100 * r["attacker"][n]["mean"] for r in runs]) for n in ns}
        best = [max(100 * r["attacker"][n]["mean"] for n in ns) for r in runs]
        desired = _mean_std([r["desired_accuracy"] for r in runs])
        trial = {
            n: _mean_std([100 * max(t["best_accuracy"] for t in r["attacker"][n]["trials"]) for r in runs]) for n in ns
        }
        summary[arm] = {
            "attacker_accuracy": round(_mean_std(best)[0], 2),
            "attacker_accuracy_std": round(_mean_std(best)[1], 2),
            "attacker_accuracy_by_n": {n: round(m, 2) for n, (m, _) in by_n.items()},
            "attacker_accuracy_by_n_std": {n: round(s, 2) for n, (_, s) in by_n.items()},
            "attacker_best_trial_by_n": {n: round(m, 2) for n, (m, _) in trial.items()},
            "desired_accuracy": round(desired[0], 2),
            "desired_accuracy_std": round(desired[1], 2),
            "majority_rate": round(100 * statistics.fmean(r["attacker"][ns[0]]["majority_rate"] for r in runs), 2),
            "n_seeds": len(runs),
        }
    return summary


def goals(summary: dict) -> dict:
    out = {}
    if {"mlac", "random_init"} <= summary.keys():
        gap = summary["mlac"]["attacker_accuracy"] - summary["random_init"]["attacker_accuracy"]
        out["mlac_attacker_minus_random_init"] = round(gap, 2)
        out["attacker_goal_met"] = gap <= GOALS["attacker_within_points_of_random_init"]
    if {"mlac", "pretrained"} <= summary.keys():
        # Not a goal, the context: what MLAC buys over the undefended model against the same attacker.
        edge = summary["mlac"]["attacker_accuracy"] - summary["pretrained"]["attacker_accuracy"]
        out["mlac_attacker_minus_pretrained"] = round(edge, 2)
        gap = summary["pretrained"]["desired_accuracy"] - summary["mlac"]["desired_accuracy"]
        out["pretrained_minus_mlac_desired"] = round(gap, 2)
        out["desired_goal_met"] = gap <= GOALS["desired_within_points_of_pretrained"]
    return out


def markdown(data: dict, world: str = "bios") -> str:
    summary, settings = data["summary"][world], data["settings"][world]
    ns = list(next(iter(summary.values()))["attacker_accuracy_by_n"])
    lines = [
        "<!-- written by `hf-immunize bench --world bios`; do not edit by hand -->",
        f"Bios toy world ({settings['n_bios']} bios, pronouns scrubbed: {settings['scrub_pronouns']}), seeds "
        f"{data['seeds'][world]}; tiny BERT (hidden {settings['hidden_size']}, {settings['num_layers']} layers), base "
        + (
            f"pretrained on profession x gender for {settings['pretrain_gender_steps']} steps; "
            if settings.get("pretrain_gender_steps")
            else "randomly initialised; "
        )
        + f"{settings['train_steps']} steps, batch {settings['batch_size']}, lr {settings['learning_rate']}; MLAC "
        f"K={settings['inner_steps']} {settings['meta_gradient']}, weights c={settings['adapted_loss_weight']} "
        f"d={settings['grad_norm_weight']} e={settings['head_adjusted_loss_weight']}. Attacker: grid over lr "
        f"{settings['attack_lr_range']} ({settings['attack_lr_grid']} points) x linear probe / full, "
        f"{settings['attack_steps']} steps, batch {settings['attack_batch_sizes']}, best setting re-run "
        f"{settings['attack_repeats']}x. Gender accuracy on val2 (percent, mean ± std over seeds); desired = "
        "profession accuracy of the model's own head on the test split.",
        "",
        "| arm | best attacker | " + " | ".join(f"n={n}" for n in ns) + " | desired accuracy | majority rate |",
        "| --- | --- | " + " | ".join("---" for _ in ns) + " | --- | --- |",
    ]
    for arm, entry in summary.items():
        cells = [
            f"{entry['attacker_accuracy_by_n'][n]:.1f} ± {entry['attacker_accuracy_by_n_std'][n]:.1f}" for n in ns
        ]
        lines.append(
            f"| {arm} | {entry['attacker_accuracy']:.1f} ± {entry['attacker_accuracy_std']:.1f} | "
            + " | ".join(cells)
            + f" | {entry['desired_accuracy']:.1f} ± {entry['desired_accuracy_std']:.1f}"
            + f" | {entry['majority_rate']:.1f} |"
        )
    lines += [
        "",
        "Best single trial of each search (one run, selected and scored on val2: optimistic for the attacker), mean "
        "over seeds:",
        "",
        "| arm | " + " | ".join(f"n={n}" for n in ns) + " |",
        "| --- | " + " | ".join("---" for _ in ns) + " |",
    ]
    for arm, entry in summary.items():
        trials = entry.get("attacker_best_trial_by_n", {})
        lines.append(f"| {arm} | " + " | ".join(f"{trials[n]:.1f}" if n in trials else "–" for n in ns) + " |")
    explorations = data.get("exploration", {}).get(world, {})
    if explorations:
        lines += [
            "",
            "Exploration (other settings; per run: seeds, base, K, mode, weights; best attacker / n=20 / n=200 and "
            "desired accuracy per arm, percent):",
            "",
            "| run | setting | pretrained | random_init | mlac | mlac_k0 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for tag, run in explorations.items():
            if "summary" not in run:  # a study with its own table (e.g. `spread`: benchmarks/results/mlac_spread.md)
                continue
            st, sm = run["settings"], run["summary"]
            base = (
                f"gender-aware base ({st['pretrain_gender_steps']} steps)"
                if st.get("pretrain_gender_steps")
                else "random base"
            )
            setting = (
                f"seeds {st['seeds']}, {base}, {st['train_steps']} steps, "
                f"K={st['inner_steps']} {st['meta_gradient']}, "
                f"c={st['adapted_loss_weight']} d={st['grad_norm_weight']} e={st['head_adjusted_loss_weight']}; "
                f"attacker steps {st['attack_steps']}, {st['attack_budget']} trials"
            )

            def cell(arm, sm=sm):
                if arm not in sm:
                    return "–"
                by_n = sm[arm]["attacker_accuracy_by_n"]
                parts = [f"{sm[arm]['attacker_accuracy']:.1f}"] + [
                    f"{by_n[n]:.1f}" for n in ("20", "200") if n in by_n
                ]
                return " / ".join(parts) + f" (desired {sm[arm]['desired_accuracy']:.0f})"

            lines.append(f"| {tag} | {setting} | " + " | ".join(cell(a) for a in ARMS) + " |")
    check = data.get("goals", {}).get(world)
    if check:
        lines += [
            "",
            f"Goals: MLAC attacker − random init = {check.get('mlac_attacker_minus_random_init')} points (goal ≤ 3: "
            f"{check.get('attacker_goal_met')}); pretrained − MLAC desired = "
            f"{check.get('pretrained_minus_mlac_desired')} points (goal ≤ 1: {check.get('desired_goal_met')}). "
            f"For context, MLAC attacker − undefended (pretrained) attacker = "
            f"{check.get('mlac_attacker_minus_pretrained')} points.",
            "How to read these numbers: docs/mlac.md, section Measured.",
        ]
    return "\n".join(lines) + "\n"


def write_results(world: str, results: dict, path: Path) -> dict:
    """Merges the run into the efficacy JSON (summary recomputed over every stored seed), plus the goal check."""

    def goal_check(data):
        data.setdefault("goals", {})[world] = goals(data["summary"][world])

    return write_efficacy(world, results, path, summarise=summarise, finish=goal_check)


def merge_dumps(dumps: list[dict]) -> dict:
    """One result from `--summary_json` dumps of runs that split the seeds and arms between them (same settings
    otherwise: checked)."""
    ignore = {"seeds", "arms", "seconds", "command"}
    first = {k: v for k, v in dumps[0]["settings"].items() if k not in ignore}
    per_seed: dict = {}
    for dump in dumps:
        other = {k: v for k, v in dump["settings"].items() if k not in ignore}
        if other != first:
            changed = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(f"the dumps were run with different settings: {changed}.")
        for seed, arms in dump["per_seed"].items():
            per_seed.setdefault(seed, {}).update(arms)
    seeds = sorted(int(s) for s in per_seed)
    settings = {
        **dumps[0]["settings"],
        "seeds": seeds,
        "arms": [a for a in ARMS if any(a in arms for arms in per_seed.values())],
        "seconds": sum(d["settings"].get("seconds", 0) for d in dumps),
        "command": " + ".join(sorted({d["settings"].get("command", "") for d in dumps})),
    }
    per_seed = {str(s): per_seed[str(s)] for s in seeds}
    return {"summary": summarise(per_seed), "settings": settings, "seeds": seeds, "per_seed": per_seed}


def import_summary(paths: list[Path], output: Path, table: Path, previous_tag: str | None) -> dict:
    """Makes the merged dumps `summary.bios`; the result they replace is kept under `exploration.bios.<tag>`."""
    results = merge_dumps([json.loads(p.read_text()) for p in paths])
    replace_world("bios", output, previous_tag)
    data = write_results("bios", results, output)
    table.write_text(markdown(data))
    print(table.read_text())
    return data
