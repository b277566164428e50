"""The immunization report: how a defended model was measured and how well the defense held (JSON + PNG + Markdown).

One report serves every defense, each measured the way its own claim is stated:

- `defended` / `undefended` (+ `attack_config`, `sweeps`): the harmful fine-tuning attack (Booster, MistakeSFT, and
  any defense): harmful score and task accuracy before and after, the curve, the sweep's worst cases;
- `measurements["few_shot_attack"]`: MLAC's claim: the best few-shot attacker's accuracy on the blocked task (with its
  search budget), the desired-task accuracy, and the random-initialisation reference;
- `measurements["unlearning"]`: familiarity (completion and probability), forget and retain perplexity, and the
  relearning attack (familiarity again after fine-tuning on a few forget passages);
- `measurements["mistake_analysis"]`: harmless rate with the plain and the guided prompt.

`evaluation` says how: the scorer or judge (with its model id), the prompt format (chat template or raw), the
evaluation sets and their sizes, what task accuracy measured, the attacker's data sizes and the lm-eval tasks. The
card renders all of it. A report whose harmful scores come from more than one judge is refused: their numbers are not
comparable.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .attack import AttackResult
from .report_sections import (
    check_report_judges,
    harmful_score_meaning,
    judge_stats_line,
    lm_eval_lines,
    lm_eval_table,
    sweep_lines,
)

__all__ = ["REPORT_STEM", "ImmunizationReport", "mean_std"]

REPORT_STEM = "immunization_report"
_METRICS = ("harmful_score", "harmful_content", "harmful_loss", "task_accuracy")
MEASUREMENT_KINDS = ("few_shot_attack", "unlearning", "mistake_analysis")


def mean_std(values: list[float]) -> dict:
    """`{"mean", "std", "n"}` of the finite values (sample std; 0 for one value)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _summarise(results: list[dict]) -> dict:
    out = {}
    for when in ("before", "after"):
        for metric in _METRICS:
            values = [r[when].get(metric) for r in results]
            if any(v is not None for v in values):
                out[f"{metric}_{when}"] = mean_std(values)
    return out


def _fmt(value, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, dict):  # mean_std
        if value.get("mean") is None:
            return "n/a"
        return f"{value['mean']:{spec}} ± {value['std']:{spec}}"
    return f"{value:{spec}}"


@dataclass
class ImmunizationReport:
    """How a defended model was measured and what came out (see the module docstring).

    Attributes:
        method: defense name (e.g. "booster"); model: the defended model's name or id.
        attack_config: the standard attack's settings; defended / undefended: `AttackResult.to_dict()` per seed.
        sweeps: optional worst-case sweep results (`SweepResult.to_dict()`) per seed, defended then undefended.
        notes: free text shown under the tables.
        evaluation: how it was measured: `scorer`, `prompt_format`, `eval_harmful` / `eval_task` (`name`, `n`),
            `task_metric`, `attack_pools` sizes, `baseline`.
        measurements: method-specific results, keyed by kind (`few_shot_attack`, `unlearning`, `mistake_analysis`).
    """

    method: str
    model: str
    attack_config: dict = field(default_factory=dict)
    defended: list[dict] = field(default_factory=list)
    undefended: list[dict] = field(default_factory=list)
    sweeps: dict = field(default_factory=dict)
    notes: str = ""
    evaluation: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.measurements) - set(MEASUREMENT_KINDS))
        if unknown:
            raise ValueError(f"`measurements`: unknown kind(s) {unknown}; known: {list(MEASUREMENT_KINDS)}.")
        if not self.defended and not self.measurements:
            raise ValueError("an ImmunizationReport needs attack results (`defended`) or `measurements`.")
        check_report_judges(self)

    @classmethod
    def from_results(cls, method: str, model: str, defended: list[AttackResult], undefended=(), **kwargs):
        if not defended:
            raise ValueError("an ImmunizationReport needs at least one defended attack result.")
        return cls(
            method=method,
            model=model,
            attack_config=defended[0].config,
            defended=[r.to_dict() for r in defended],
            undefended=[r.to_dict() for r in undefended],
            **kwargs,
        )

    def summary(self) -> dict:
        out = {}
        if self.defended:
            out["defended"] = _summarise(self.defended)
        if self.undefended:
            out["undefended"] = _summarise(self.undefended)
        for kind, data in self.measurements.items():
            out[kind] = {arm: _headline(kind, values) for arm, values in data.get("arms", {}).items()}
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, data: dict) -> ImmunizationReport:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k != "summary"}
        unknown = sorted(set(data) - known)
        if unknown or not {"method", "model"} <= set(data):
            raise ValueError(
                f"not an immunization report: unknown keys {unknown}, required 'method' and 'model'; found "
                f"{sorted(data)}."
            )
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImmunizationReport:
        """Reads a report from its JSON file or from the folder :meth:`save` wrote it to."""
        path = Path(path)
        if path.is_dir():
            path = path / f"{REPORT_STEM}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no immunization report at {str(path)!r} (expected the JSON file, or a folder holding "
                f"{REPORT_STEM}.json as `ImmunizationReport.save` writes it)."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(path)!r} is not an immunization report JSON ({err}).") from None
        if not isinstance(data, dict):
            raise ValueError(f"{str(path)!r} is not an immunization report JSON (a {type(data).__name__}).")
        return cls.from_dict(data)

    def save(self, directory: str | os.PathLike, stem: str = REPORT_STEM) -> dict[str, Path]:
        """Writes `<stem>.json` and `<stem>.png` into `directory` (each atomically) and returns their paths."""
        from hf_immunize.utils import atomic_write

        directory = Path(directory)
        paths = {"json": directory / f"{stem}.json", "png": directory / f"{stem}.png"}
        atomic_write(paths["png"], self.plot)
        atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(json.dumps(self.to_dict(), indent=2)))
        return paths

    # ---- plot ------------------------------------------------------------------------------------------------

    def plot(self, path: str | os.PathLike) -> None:
        """One panel per measurement: the attack's harmful-score curve (defended vs undefended, thin lines per seed,
        thick the mean), the few-shot attacker's accuracy per arm, familiarity over the relearning attack, the
        harmless rate with plain and guided prompts."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = (["attack"] if self.defended else []) + [k for k in MEASUREMENT_KINDS if k in self.measurements]
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), dpi=120, squeeze=False)
        for ax, panel in zip(axes[0], panels):
            {
                "attack": self._plot_attack,
                "few_shot_attack": self._plot_few_shot,
                "unlearning": self._plot_unlearning,
                "mistake_analysis": self._plot_mistake,
            }[panel](ax)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)

    def _plot_attack(self, ax) -> None:
        for label, runs, color in (
            ("undefended", self.undefended, "tab:red"),
            (self.method, self.defended, "tab:blue"),
        ):
            if not runs:
                continue
            for run in runs:
                ax.plot(
                    [p["step"] for p in run["curve"]],
                    [p["harmful_score"] for p in run["curve"]],
                    color=color,
                    alpha=0.25,
                    linewidth=1,
                )
            steps = sorted({p["step"] for run in runs for p in run["curve"]})
            means = []
            for step in steps:
                vals = [p["harmful_score"] for run in runs for p in run["curve"] if p["step"] == step]
                means.append(statistics.fmean(vals))
            ax.plot(steps, means, color=color, linewidth=2.5, label=f"{label} (mean of {len(runs)})")
        ax.set_xlabel("attack step")
        ax.set_ylabel("harmful score (%)")
        ax.set_ylim(-2, 102)
        cfg = self.attack_config
        ax.set_title(
            f"Fine-tuning attack: n={cfg.get('n_samples')}, p={cfg.get('harmful_ratio')}, "
            f"lr={cfg.get('learning_rate')}, {cfg.get('mode')}",
            fontsize=9,
        )
        ax.legend(fontsize=8)

    def _bars(self, ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str) -> None:
        width = 0.8 / max(len(series), 1)
        for i, (label, values) in enumerate(series.items()):
            xs = [g + i * width for g in range(len(groups))]
            ax.bar(xs, [v if v is not None else 0.0 for v in values], width=width, label=label)
        ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)

    def _plot_few_shot(self, ax) -> None:
        data = self.measurements["few_shot_attack"]
        arms = list(data["arms"])
        self._bars(
            ax,
            arms,
            {
                "best attacker (blocked task)": [data["arms"][a]["attacker_accuracy"]["mean"] for a in arms],
                "desired task": [data["arms"][a].get("desired_accuracy") for a in arms],
            },
            "accuracy (%)",
            f"Few-shot attacker, {data.get('n_examples')} examples of {data.get('blocked_task', 'the blocked task')}",
        )
        if data.get("majority_rate") is not None:
            ax.axhline(data["majority_rate"], color="gray", linestyle="--", linewidth=1)

    def _plot_unlearning(self, ax) -> None:
        data = self.measurements["unlearning"]
        for arm, values in data["arms"].items():
            curve = (values.get("relearning") or {}).get("curve") or [
                {"step": 0, "familiarity": values["familiarity"]}
            ]
            ax.plot([p["step"] for p in curve], [p["familiarity"] for p in curve], marker="o", label=arm)
        ax.set_xlabel("relearning step")
        ax.set_ylabel(f"familiarity ({data.get('grader', 'keyword')} grader)")
        ax.set_title("Familiarity under the relearning attack", fontsize=9)
        ax.legend(fontsize=8)

    def _plot_mistake(self, ax) -> None:
        data = self.measurements["mistake_analysis"]
        arms = list(data["arms"])
        self._bars(
            ax,
            arms,
            {mode: [data["arms"][a][mode]["harmless_rate"] for a in arms] for mode in ("plain", "guided")},
            "harmless rate (%)",
            "Harmless rate with the plain and the guided prompt",
        )
        ax.set_ylim(0, 102)

    # ---- Markdown --------------------------------------------------------------------------------------------

    def to_markdown(self, plot_file: str | None = None) -> str:
        """A card-ready section: how it was measured, then each measurement's settings and table."""
        parts = [self._markdown_evaluation()]
        if self.defended:
            parts.append(self._markdown_attack())
        renderers = {
            "few_shot_attack": self._markdown_few_shot,
            "unlearning": self._markdown_unlearning,
            "mistake_analysis": self._markdown_mistake,
        }
        parts += [renderers[kind]() for kind in MEASUREMENT_KINDS if kind in self.measurements]
        if self.notes:
            parts.append(self.notes)
        if plot_file:
            parts.append(f"![immunization report]({plot_file})")
        return "\n\n".join(p for p in parts if p)

    def _markdown_evaluation(self) -> str:
        ev = self.evaluation
        if not ev:
            return ""
        lines = ["How it was measured:", ""]
        if ev.get("scorer"):
            lines.append(f"- scored by: {ev['scorer']}")
        unread = judge_stats_line(self)
        if unread:
            lines.append(f"- {unread}")
        if ev.get("prompt_format"):
            shown = {"chat": "the tokenizer's chat template (user turn + generation prompt)", "raw": "raw prompt text"}
            lines.append(f"- prompt format: {shown.get(ev['prompt_format'], ev['prompt_format'])}")
        for key, label in (("eval_harmful", "harmful evaluation prompts"), ("eval_task", "task evaluation set")):
            if ev.get(key):
                lines.append(f"- {label}: {ev[key].get('name', 'given')}, {ev[key].get('n')} rows")
        if ev.get("task_metric"):
            lines.append(f"- task accuracy: {ev['task_metric']}")
        pools = ev.get("attack_pools") or {}
        if pools:
            lines.append(
                "- attacker's data: "
                + ", ".join(f"{name} pool of {size} rows" for name, size in pools.items())
                + (f" ({ev['attack_data']})" if ev.get("attack_data") else "")
            )
        lines += lm_eval_lines(ev)
        if ev.get("baseline"):
            lines.append(f"- baseline: {ev['baseline']}")
        for line in ev.get("extra", []):
            lines.append(f"- {line}")
        return "\n".join(lines)

    def _markdown_attack(self) -> str:
        cfg = self.attack_config
        lines = [
            "**Harmful fine-tuning attack.** "
            f"{cfg.get('n_samples')} samples, harmful ratio {cfg.get('harmful_ratio')}, "
            f"learning rate {cfg.get('learning_rate')}, "
            + (f"{cfg.get('max_steps')} steps" if cfg.get("max_steps") else f"{cfg.get('num_epochs')} epochs")
            + f", batch size {cfg.get('batch_size')}, protocol `{cfg.get('mode')}`; {len(self.defended)} seed(s).",
            "",
            "| model | harmful score before | harmful score after | task accuracy before | task accuracy after |",
            "| --- | --- | --- | --- | --- |",
        ]
        summary = self.summary()
        for name, key in ((self.method, "defended"), ("undefended baseline", "undefended")):
            if key not in summary:
                continue
            s = summary[key]
            lines.append(
                f"| {name} | {_fmt(s.get('harmful_score_before'))} | {_fmt(s.get('harmful_score_after'))} "
                f"| {_fmt(s.get('task_accuracy_before'))} | {_fmt(s.get('task_accuracy_after'))} |"
            )
        lines += ["", f"Harmful score: {harmful_score_meaning(self.evaluation.get('scorer'))}."]
        lines += sweep_lines(self.sweeps, _fmt, mean_std)
        utility = lm_eval_table(self.method, self.defended, self.undefended)
        if utility:
            lines += ["", utility]
        return "\n".join(lines)

    def _markdown_few_shot(self) -> str:
        data = self.measurements["few_shot_attack"]
        search = data.get("search", {})
        lines = [
            f"**Few-shot attacker on the blocked task** ({data.get('blocked_task', 'blocked task')}): a fresh head "
            f"trained on {data.get('n_examples')} examples; hyperparameters searched over "
            f"{search.get('budget')} trials ({search.get('sampler')}), the best setting re-run "
            f"{search.get('repeats')} time(s) on fresh subsets; accuracy on {data.get('n_eval')} held-out rows.",
            "",
            "| model | best attacker's accuracy on the blocked task | desired-task accuracy |",
            "| --- | --- | --- |",
        ]
        for arm, values in data["arms"].items():
            lines.append(f"| {arm} | {_fmt(values['attacker_accuracy'])} | {_fmt(values.get('desired_accuracy'))} |")
        if data.get("majority_rate") is not None:
            lines += ["", f"Majority-class rate of the blocked task: {data['majority_rate']:.1f} (the floor)."]
        if data.get("desired_task"):
            lines.append(f"Desired task: {data['desired_task']}.")
        return "\n".join(lines)

    def _markdown_unlearning(self) -> str:
        data = self.measurements["unlearning"]
        relearn = data.get("relearning_config") or {}
        lines = [
            f"**Unlearning.** Familiarity of {data.get('n_prompts')} completion prompts, graded by the "
            f"{data.get('grader', 'keyword')} grader ((5·n₃ + n₂)/N); probability familiarity = probability of the "
            "expected terms' first tokens; perplexities on held-out forget and retain text. Relearning attack: "
            f"fine-tune on {relearn.get('n_passages')} forget passages for {relearn.get('max_steps')} steps at "
            f"learning rate {relearn.get('learning_rate')}, then measure familiarity again.",
            "",
            "| model | familiarity | probability familiarity | forget ppl | retain ppl | familiarity after relearning "
            "| probability familiarity after relearning |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for arm, v in data["arms"].items():
            r = v.get("relearning") or {}
            lines.append(
                f"| {arm} | {_fmt(v.get('familiarity'), '.3f')} | {_fmt(v.get('prob_familiarity'), '.3f')} "
                f"| {_fmt(v.get('forget_ppl'), '.2f')} | {_fmt(v.get('retain_ppl'), '.2f')} "
                f"| {_fmt(r.get('familiarity'), '.3f')} | {_fmt(r.get('prob_familiarity'), '.3f')} |"
            )
        return "\n".join(lines)

    def _markdown_mistake(self) -> str:
        data = self.measurements["mistake_analysis"]
        lines = [
            "**Mistake analysis.** Harmless rate (100 − harmful score) on the harmful evaluation prompts with the "
            f"plain prompt and with the guided prompt (harmless cue: {data.get('cue')!r}).",
            "",
            "| model | harmless plain | harmless guided | task accuracy plain | task accuracy guided |",
            "| --- | --- | --- | --- | --- |",
        ]
        for arm, v in data["arms"].items():
            lines.append(
                f"| {arm} | {_fmt(v['plain'].get('harmless_rate'))} | {_fmt(v['guided'].get('harmless_rate'))} "
                f"| {_fmt(v['plain'].get('task_accuracy'))} | {_fmt(v['guided'].get('task_accuracy'))} |"
            )
        return "\n".join(lines)


def _headline(kind: str, values: dict) -> dict:
    """The few numbers of one arm of a measurement that a summary (and a benchmark table) quotes."""
    if kind == "few_shot_attack":
        return {
            "attacker_accuracy": values["attacker_accuracy"].get("mean"),
            "desired_accuracy": values.get("desired_accuracy"),
        }
    if kind == "unlearning":
        relearn = values.get("relearning") or {}
        keys = ("familiarity", "prob_familiarity", "forget_ppl", "retain_ppl")
        return {
            **{k: values.get(k) for k in keys},
            "familiarity_after_relearning": relearn.get("familiarity"),
        }
    return {
        f"harmless_rate_{mode}": values[mode].get("harmless_rate") for mode in ("plain", "guided") if mode in values
    }
