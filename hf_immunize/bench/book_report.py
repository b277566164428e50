"""Summary and Markdown tables of the book world (`hf-immunize bench --world book`)."""

from __future__ import annotations

from hf_immunize.bench.results import mean_std

__all__ = ["ARMS", "GOAL", "markdown", "relative", "summarise"]

ARMS = ("original", "whp", "grad_ascent", "grad_diff", "npo")
GOAL = {"familiarity_drop_rel": 0.9, "retain_ppl_rise_rel": 0.05}

_KEYS = ("familiarity", "class3_rate", "prob_familiarity", "forget_ppl", "retain_ppl")
_REL = ("familiarity_drop_rel", "prob_familiarity_drop_rel", "retain_ppl_rise_rel", "forget_ppl_rise_rel")


def relative(result: dict, original: dict) -> dict:
    """`result` plus its changes relative to the original model (drops and rises as fractions)."""
    out = dict(result)
    if original["familiarity"]:
        out["familiarity_drop_rel"] = 1 - result["familiarity"] / original["familiarity"]
    if original["prob_familiarity"]:
        out["prob_familiarity_drop_rel"] = 1 - result["prob_familiarity"] / original["prob_familiarity"]
    out["retain_ppl_rise_rel"] = result["retain_ppl"] / original["retain_ppl"] - 1
    out["forget_ppl_rise_rel"] = result["forget_ppl"] / original["forget_ppl"] - 1
    return out


def _meets(r: dict) -> bool:
    return (
        r["familiarity_drop_rel"] >= GOAL["familiarity_drop_rel"]
        and r["retain_ppl_rise_rel"] <= GOAL["retain_ppl_rise_rel"]
    )


def summarise(per_seed: dict) -> dict:
    """Means and spreads over seeds per arm; the relearning attack's result beside the unlearned model's."""
    summary = {}
    for arm in ARMS:
        runs = [seed[arm] for seed in per_seed.values() if arm in seed]
        if not runs:
            continue
        entry = {}
        for key in (*_KEYS, *_REL):
            if all(key in r for r in runs):
                stats = mean_std([r[key] for r in runs])
                entry[key], entry[f"{key}_std"] = stats["mean"], stats["std"]
        relearned = [r.get("relearning") for r in runs]
        if all(relearned):
            relearning = {}
            for key in ("familiarity", "prob_familiarity"):
                stats = mean_std([r[key] for r in relearned])
                relearning[key], relearning[f"{key}_std"] = stats["mean"], stats["std"]
            if all("familiarity_drop_rel_after_relearning" in r for r in runs):
                stats = mean_std([r["familiarity_drop_rel_after_relearning"] for r in runs])
                relearning["familiarity_drop_rel"] = stats["mean"]
                relearning["familiarity_drop_rel_std"] = stats["std"]
            entry["relearning"] = relearning
        if arm != "original":
            entry["meets_goal_all_seeds"] = all(_meets(r) for r in runs)
            entry["meets_goal_seeds"] = sum(_meets(r) for r in runs)
        entry["n_seeds"] = len(runs)
        summary[arm] = entry
    return summary


def _cell(entry, key, fmt="{:.3f}", scale=1.0):
    if entry.get(key) is None:
        return "–"
    return (fmt.format(scale * entry[key]) + " ± " + fmt.format(scale * entry[f"{key}_std"])).replace("± -", "± ")


def table(summary: dict) -> str:
    lines = [
        "| arm | familiarity (keyword) | class-3 rate | prob. familiarity | forget ppl | retain ppl | familiarity "
        "drop | retain ppl rise | goal met (seeds) | familiarity after relearning | drop after relearning |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, e in summary.items():
        relearning = e.get("relearning") or {}
        goal = "–" if arm == "original" else f"{e.get('meets_goal_seeds', 0)} of {e['n_seeds']}"
        lines.append(
            f"| {arm} | {_cell(e, 'familiarity')} | {_cell(e, 'class3_rate')} | {_cell(e, 'prob_familiarity')} | "
            f"{_cell(e, 'forget_ppl', '{:.2f}')} | {_cell(e, 'retain_ppl', '{:.3f}')} | "
            f"{_cell(e, 'familiarity_drop_rel', '{:.1f}%', 100)} | {_cell(e, 'retain_ppl_rise_rel', '{:+.1f}%', 100)} "
            f"| {goal} | {_cell(relearning, 'familiarity')} "
            f"| {'–' if arm == 'original' else _cell(relearning, 'familiarity_drop_rel', '{:.1f}%', 100)} |"
        )
    return "\n".join(lines)


def _search_table(searched: dict, settings: dict) -> list[str]:
    lines = [
        f"## Search on the dev seed {searched['seed']} (original: familiarity "
        f"{searched['original']['familiarity']:.3f}, retain ppl {searched['original']['retain_ppl']:.3f})",
        "",
        "| loss | α | lr | epochs / steps | familiarity | prob. familiarity | retain ppl rise | forget ppl |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for loss_type, rows in searched["rows"].items():
        for r in rows:
            lines.append(
                f"| {loss_type} | {r.get('alpha', '–')} | {r['learning_rate']:g} | "
                f"{r.get('num_train_epochs', str(settings['baselines']['max_steps']) + ' steps')} | "
                f"{r['familiarity']:.3f} | {r['prob_familiarity']:.3f} | "
                f"{100 * r['retain_ppl_rise_rel']:+.1f}% | {r['forget_ppl']:.2f} |"
            )
    return lines


def _intro(settings: dict, seeds) -> str:
    world = {"fair": "fair book world", "legacy": "legacy book world"}[settings.get("style", "legacy")]
    relearn = settings.get("relearn")
    return (
        f"The {world}, seeds {seeds}; mean ± std. Written by `{settings.get('command', '?')}` in "
        f"{settings.get('seconds', '?')} s (2 shared CPU cores). Familiarity: keyword grader (5·n₃ + n₂)/N on 30 "
        "prompts, not comparable to the paper's GPT-4 grader. Goal: familiarity drop ≥ 90 % with retain perplexity "
        "rise ≤ 5 %"
        + (
            f". Relearning attack (`relearn_preset('{relearn}')`: 20 steps at lr 1e-3 on 10 forget passages), then "
            "familiarity again; its drop is relative to the original model before the attack."
            if relearn
            else "."
        )
    )


def markdown(data: dict) -> str:
    """`efficacy_book.md`: the result, its search, and every exploration of the book world."""
    settings, summary = data["settings"]["book"], data["summary"]["book"]
    md = [
        "<!-- written by `hf-immunize bench --world book`; do not edit by hand -->",
        "# Unlearning on the book toy world",
        "",
        _intro(settings, data["seeds"]["book"]),
        "",
        table(summary),
        "",
        f"Baseline learning rates: {settings['baseline_learning_rates']}; WHP fine-tune: {settings['whp_chosen']}"
        + (" (search on the dev seed)." if settings.get("search_on_dev_seed", True) else " (defaults, no search)."),
    ]
    searched = data.get("search", {}).get("book")
    if searched:
        md += ["", *_search_table(searched, settings)]
    for tag, run in data.get("exploration", {}).get("book", {}).items():
        md += ["", f"## Exploration `{tag}`", ""]
        if "summary" in run and "settings" in run and "familiarity" in next(iter(run["summary"].values()), {}):
            md += [_intro(run["settings"], run.get("seeds", "?")), "", table(run["summary"])]
            if run.get("search"):
                md += ["", *_search_table(run["search"], run["settings"])]
        if run.get("table"):
            md += [run.get("intro", ""), "", run["table"]]
    return "\n".join(md) + "\n"
