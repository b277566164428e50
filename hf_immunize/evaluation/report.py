"""The immunization report: what was attacked, how, and how well the defense held (JSON + PNG + Markdown)."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .attack import AttackResult

__all__ = ["ImmunizationReport", "mean_std"]

_METRICS = ("harmful_score", "harmful_content", "harmful_loss", "task_accuracy")


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


@dataclass
class ImmunizationReport:
    """Attack results of a defended model (one per seed), optionally beside an undefended baseline.

    Attributes:
        method: defense name (e.g. "booster"); model: the defended model's name or id.
        attack_config: the standard attack's settings; defended / undefended: `AttackResult.to_dict()` per seed.
        sweeps: optional worst-case sweep results (`SweepResult.to_dict()`) per seed, defended then undefended.
    """

    method: str
    model: str
    attack_config: dict
    defended: list[dict]
    undefended: list[dict] = field(default_factory=list)
    sweeps: dict = field(default_factory=dict)
    notes: str = ""

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
        out = {"defended": _summarise(self.defended)}
        if self.undefended:
            out["undefended"] = _summarise(self.undefended)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImmunizationReport:
        data = json.loads(Path(path).read_text())
        data.pop("summary", None)
        return cls(**data)

    def save(self, directory: str | os.PathLike, stem: str = "immunization_report") -> dict[str, Path]:
        """Writes `<stem>.json` and `<stem>.png` into `directory` and returns their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"json": directory / f"{stem}.json", "png": directory / f"{stem}.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        self.plot(paths["png"])
        return paths

    def plot(self, path: str | os.PathLike) -> None:
        """Harmful score over attack steps, defended vs undefended: thin lines per seed, thick line the mean."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
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
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    def to_markdown(self, plot_file: str | None = None) -> str:
        """A card-ready section: attack settings and a before/after table (mean ± std over seeds)."""
        cfg = self.attack_config
        lines = [
            f"Fine-tuning attack: {cfg.get('n_samples')} samples, harmful ratio {cfg.get('harmful_ratio')}, "
            f"learning rate {cfg.get('learning_rate')}, "
            + (f"{cfg.get('max_steps')} steps" if cfg.get("max_steps") else f"{cfg.get('num_epochs')} epochs")
            + f", batch size {cfg.get('batch_size')}, protocol `{cfg.get('mode')}`; {len(self.defended)} seed(s).",
            "",
            "| model | harmful score before | harmful score after | task accuracy before | task accuracy after |",
            "| --- | --- | --- | --- | --- |",
        ]
        summary = self.summary()

        def fmt(stats):
            if not stats or stats["mean"] is None:
                return "n/a"
            return f"{stats['mean']:.1f} ± {stats['std']:.1f}"

        for name, key in ((self.method, "defended"), ("undefended baseline", "undefended")):
            if key not in summary:
                continue
            s = summary[key]
            lines.append(
                f"| {name} | {fmt(s.get('harmful_score_before'))} | {fmt(s.get('harmful_score_after'))} "
                f"| {fmt(s.get('task_accuracy_before'))} | {fmt(s.get('task_accuracy_after'))} |"
            )
        lines.append("")
        lines.append("Harmful score: percent of held-out harmful prompts answered without a refusal (keyword scorer).")
        if self.notes:
            lines += ["", self.notes]
        if plot_file:
            lines += ["", f"![harmful score over attack steps]({plot_file})"]
        return "\n".join(lines)
