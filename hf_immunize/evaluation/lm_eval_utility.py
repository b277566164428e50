"""Utility through lm-evaluation-harness: lm-eval tasks on the defended model and on its attacked copy.

A defense that keeps a model harmless by breaking it has not won much, so the release measurement can add any
lm-eval task (built-in ones such as ``mmlu`` or ``arc_easy``, or your own YAML tasks in `include_path`) to the
attack: the tasks run on the model before the attack and on the attacked copy after it, and the card shows the task
names, the metrics and the lm-eval version. ``lm-eval`` is an optional extra (``pip install hf_immunize[lm_eval]``).

Built-in tasks download their data sets from the Hugging Face Hub when they run; a custom task reads local files
(``dataset_path: json`` with ``dataset_kwargs: {data_files: ...}``) and runs offline.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["LmEvalConfig", "check_lm_eval", "lm_eval_version", "run_lm_eval"]

_TASK_MANAGERS: dict = {}


@dataclass
class LmEvalConfig:
    r"""
    lm-eval tasks to run beside the attack.

    Parameters:
        tasks (`list[str]`): lm-eval task (or group) names.
        include_path (`str`, *optional*): a folder of your own task YAML files, searched before the built-in tasks.
        num_fewshot (`int`, *optional*): few-shot examples per prompt; None: each task's own setting.
        limit (`int` or `float`, *optional*): at most this many documents per task (a fraction when below 1).
        batch_size (`int`, defaults to `8`): lm-eval's batch size.
    """

    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int = 8

    def __post_init__(self):
        if isinstance(self.tasks, str) or not self.tasks or not all(isinstance(t, str) and t for t in self.tasks):
            raise ValueError(f"LmEvalConfig: `tasks` must be a non-empty list of task names, got {self.tasks!r}.")
        self.tasks = list(self.tasks)
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise ValueError(f"LmEvalConfig: `include_path` {str(self.include_path)!r} is not a folder.")
        if self.num_fewshot is not None and (isinstance(self.num_fewshot, bool) or self.num_fewshot < 0):
            raise ValueError(f"LmEvalConfig: `num_fewshot` must be an integer >= 0, got {self.num_fewshot!r}.")
        limit = self.limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Real) or limit <= 0):
            raise ValueError(f"LmEvalConfig: `limit` must be a number > 0, got {limit!r}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"LmEvalConfig: `batch_size` must be an integer >= 1, got {self.batch_size!r}.")

    def describe(self) -> dict:
        """How the tasks were run, for the report (the include folder by name, never its path)."""
        out = {**asdict(self), "version": lm_eval_version()}
        if self.include_path is not None:
            out["include_path"] = Path(self.include_path).name
        return out


def lm_eval_version() -> str:
    """The installed lm-eval version, or a ValueError that says how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise ValueError(
            "lm-eval tasks need lm-evaluation-harness: pip install 'hf_immunize[lm_eval]' (or pip install lm-eval)."
        ) from None
    return getattr(lm_eval, "__version__", "unknown")


def _manager(include_path: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    key = (include_path, defaults)
    if key not in _TASK_MANAGERS:
        _TASK_MANAGERS[key] = TaskManager(include_path=include_path, include_defaults=defaults)
    return _TASK_MANAGERS[key]


def check_lm_eval(config: LmEvalConfig):
    """Before any compute: lm-eval is installed and knows every task (a typo names the closest known tasks).
    Returns a TaskManager that knows them: the include folder alone when it holds them all (indexing the ~15,000
    built-in task files takes tens of seconds, once per process), else the built-in tasks too."""
    import difflib

    if not isinstance(config, LmEvalConfig):
        raise TypeError(f"`lm_eval` must be an LmEvalConfig, got {type(config).__name__}.")
    lm_eval_version()
    own = _manager(config.include_path, False).all_tasks if config.include_path else []
    if own and all(t in own for t in config.tasks):
        return _manager(config.include_path, False)
    builtin = _manager(None, True).all_tasks
    known = set(own) | set(builtin)
    unknown = [t for t in config.tasks if t not in known]
    if unknown:
        hints = {t: difflib.get_close_matches(t, sorted(known), n=3) for t in unknown}
        where = f" (searched {Path(config.include_path).name!r} and the built-in tasks)" if config.include_path else ""
        listed = "; ".join(f"{t!r} (close: {hints[t]})" for t in unknown)
        raise ValueError(f"unknown lm-eval task(s){where}: {listed}.")
    return _manager(config.include_path, True) if own else _manager(None, True)


def _metrics(results: dict) -> dict:
    """`{task: {metric: value}}` from lm-eval's results, the filter kept in the name when it is not `none`."""
    out = {}
    for task, values in results.items():
        metrics = {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, numbers.Real) or isinstance(value, bool):
                continue
            metric, filter_name = key.split(",", 1)
            metrics[metric if filter_name == "none" else f"{metric} ({filter_name})"] = float(value)
        out[task] = metrics
    return out


def run_lm_eval(model, tokenizer, config: LmEvalConfig) -> dict:
    """Runs `config.tasks` on `model` (in eval mode; its mode is restored) and returns `{task: {metric: value}}`."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = check_lm_eval(config)
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, device=str(model.device))
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=config.tasks,
            num_fewshot=config.num_fewshot,
            limit=config.limit,
            task_manager=manager,
            log_samples=False,
            verbosity="ERROR",
        )
    finally:
        model.train(was_training)
    return _metrics(output["results"])


def lm_eval_point(config: LmEvalConfig):
    """A `utility_eval` for :func:`~hf_immunize.evaluation.attack.run_attack`: `{"lm_eval": {task: {metric: v}}}`."""

    def evaluate(model, tokenizer) -> dict:
        return {"lm_eval": run_lm_eval(model, tokenizer, config)}

    return evaluate


def as_config(value) -> LmEvalConfig | None:
    """An LmEvalConfig from None, a config, or a list of task names."""
    if value is None or isinstance(value, LmEvalConfig):
        return value
    if isinstance(value, str | os.PathLike):
        raise ValueError(f"`lm_eval` must be an LmEvalConfig or a list of task names, got the string {value!r}.")
    return LmEvalConfig(tasks=list(value))
