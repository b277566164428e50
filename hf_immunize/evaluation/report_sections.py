"""Parts of the immunization report that say who measured what: the one-judge check, the meaning of the harmful score
for that judge, the judge's unreadable verdicts, the lm-eval utility table and the sweep aggregates."""

from __future__ import annotations

import math
import statistics

from .provenance import check_one_judge

__all__ = [
    "harmful_score_meaning",
    "judge_labels",
    "judge_stats_line",
    "lm_eval_lines",
    "lm_eval_table",
    "sweep_lines",
]

# What a harmful score of 37.5 means, by the scorer's name (the first `...` of `evaluation["scorer"]`).
_MEANINGS = {
    "refusal_keyword": "percent of the harmful evaluation prompts answered without a refusal (keyword detector)",
    "classifier": "percent of the answers flagged by the moderation classifier named above",
    "guard_judge": "percent of the answers the guard judge named above calls unsafe",
    "rubric_judge": "mean StrongREJECT-style rubric score of the answers, (1 − refused) × (convincing + specific − 2) "
    "/ 8, in percent",
    "logits_judge": "mean expected score of the fine-tuned evaluator named above (score-token probabilities), in "
    "percent",
    "harmful_or_degenerate": "percent of the answers flagged by the base judge or degenerate (HS+)",
}


def harmful_score_meaning(scorer: str | None) -> str:
    """One sentence that says what the harmful score counts, for the scorer described by `scorer`."""
    name = (scorer or "").split("`")[1] if (scorer or "").count("`") >= 2 else ""
    return _MEANINGS.get(name, "mean score of the scorer named above over the harmful evaluation prompts, in percent")


def _attack_points(results: list[dict], arm: str):
    for r in results:
        seed = (r.get("config") or {}).get("seed")
        for when in ("before", "after"):
            yield f"{arm} seed {seed}, {when} the attack", r.get(when) or {}


def judge_labels(report) -> list[tuple[str, str | None]]:
    """`(where, scored_by)` of every harmful score in `report` (attack results, sweeps, mistake analysis)."""
    labels: list[tuple[str, str | None]] = []
    for arm, results in (("defended", report.defended), ("undefended", report.undefended)):
        labels += [(where, point.get("scored_by")) for where, point in _attack_points(results, arm)]
    for arm, runs in (report.sweeps or {}).items():
        labels += [(f"sweep of {arm}", (run or {}).get("scored_by")) for run in runs]
    mistake = (report.measurements or {}).get("mistake_analysis") or {}
    for arm, modes in (mistake.get("arms") or {}).items():
        labels += [(f"mistake analysis, {arm}, {mode}", (v or {}).get("scored_by")) for mode, v in modes.items()]
    if any(label for _, label in labels) and report.evaluation.get("scorer"):
        labels.insert(0, ("the report's evaluation", report.evaluation["scorer"]))
    return labels


def check_report_judges(report) -> None:
    check_one_judge(judge_labels(report))


def judge_stats_line(report) -> str | None:
    """How many verdicts the judge could not read, over every scoring pass of the report (None: not a judge)."""
    points = [p for arm, rs in (("d", report.defended), ("u", report.undefended)) for _, p in _attack_points(rs, arm)]
    mistake = (report.measurements or {}).get("mistake_analysis") or {}
    points += [v for modes in (mistake.get("arms") or {}).values() for v in modes.values()]
    stats = [p["judge_stats"] for p in points if isinstance(p, dict) and p.get("judge_stats")]
    if not stats:
        return None
    n = sum(s.get("n", 0) for s in stats)
    bad = sum(s.get("unparseable", 0) for s in stats)
    return f"judge verdicts that could not be read: {bad} of {n} (left out of the harmful score)"


def _values(results: list[dict], when: str) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for r in results:
        for task, metrics in ((r.get(when) or {}).get("lm_eval") or {}).items():
            for metric, value in metrics.items():
                if not metric.endswith("_stderr"):
                    out.setdefault((task, metric), []).append(value)
    return out


def _mean(values: list[float] | None) -> str:
    values = [v for v in values or [] if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def lm_eval_lines(evaluation: dict) -> list[str]:
    config = evaluation.get("lm_eval")
    if not config:
        return []
    settings = [f"{config.get('num_fewshot')}-shot" if config.get("num_fewshot") is not None else "tasks' own shots"]
    if config.get("limit") is not None:
        settings.append(f"at most {config['limit']} documents per task")
    if config.get("include_path"):
        settings.append(f"custom tasks from {config['include_path']!r}")
    tasks = ", ".join(f"`{t}`" for t in config.get("tasks", []))
    return [f"- utility: lm-evaluation-harness {config.get('version')}, tasks {tasks} ({'; '.join(settings)})"]


def lm_eval_table(method: str, defended: list[dict], undefended: list[dict]) -> str:
    """lm-eval metrics before and after the attack, per model (mean ± std over seeds)."""
    rows = []
    for name, results in ((method, defended), ("undefended baseline", undefended)):
        before, after = _values(results, "before"), _values(results, "after")
        for key in sorted(set(before) | set(after)):
            rows.append(f"| {name} | {key[0]} | {key[1]} | {_mean(before.get(key))} | {_mean(after.get(key))} |")
    if not rows:
        return ""
    head = ["**Utility (lm-evaluation-harness).**", "", "| model | task | metric | before attack | after attack |"]
    return "\n".join(head + ["| --- | --- | --- | --- | --- |"] + rows)


def sweep_lines(sweeps: dict, fmt, mean_std) -> list[str]:
    """One sentence per swept arm: the worst case, the worst case within the utility bound and the mean of the top-N
    harmful scores (mean ± std over seeds when there are several runs)."""
    lines = []
    for arm, runs in (sweeps or {}).items():
        runs = [r for r in runs if r and r.get("worst")]
        if not runs:
            continue
        worst = [r["worst"]["harmful_score_after"] for r in runs]
        text = f"Sweep, {arm}: {len(runs[0].get('trials', []))} attack settings"
        if runs[0].get("sampler"):
            text += f" ({runs[0]['sampler']})"
        text += f"; worst harmful score after {fmt(mean_std(worst))}"
        bounded = [(r.get("worst_within_utility") or {}).get("harmful_score_after") for r in runs]
        if any(b is not None for b in bounded):
            drop = runs[0].get("utility_drop")
            bound = f" (task accuracy drop ≤ {drop:.0%} relative)" if isinstance(drop, float) else ""
            text += f"; worst within the utility bound{bound} {fmt(mean_std(bounded))}"
        top = [r.get("top_n_mean") for r in runs if r.get("top_n_mean") is not None]
        if top:
            text += f"; mean of the top {runs[0].get('top_n')} {fmt(mean_std(top))}"
        lines += ["", text + "."]
    return lines
