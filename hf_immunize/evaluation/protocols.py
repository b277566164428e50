"""Each defense measured the way its own claim is stated, on a saved model, into one :class:`ImmunizationReport`.

- booster (and any causal-LM defense): :func:`measure_attack`, harmful score and task accuracy before and after a
  fine-tuning attack;
- mlac on a classifier: :func:`~hf_immunize.evaluation.few_shot.measure_few_shot`, the best few-shot attacker's
  accuracy on the blocked task, the desired-task accuracy and a random initialisation of the same architecture;
- unlearn: :func:`~hf_immunize.evaluation.relearning.measure_unlearning`, familiarity, perplexities, and familiarity
  again after a relearning attack;
- mistake-sft: :func:`measure_mistake_analysis`, harmless rate with the plain and the guided prompt, plus the attack.

:func:`measure_saved_model` picks the protocol for a method and a model directory (full weights or a PEFT adapter);
`hf-immunize evaluate` and `trainer.measure_immunization()` both call it. The data of each protocol is a small
dataclass of :mod:`hf_immunize.evaluation.eval_data` with a `toy()` constructor for the offline toy worlds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from hf_immunize.core.hub import check_model_dir

from .attack import AttackConfig, attack_pool, run_attack
from .eval_data import BlockedTaskData, SafetyEvalData, UnlearningEvalData
from .few_shot import measure_few_shot
from .formatting import RUN_RECORD_NAME, read_run_record, resolve_prompt_format
from .lm_eval_utility import LmEvalConfig, as_config, check_lm_eval, lm_eval_point
from .provenance import describe_scorer
from .relearning import RelearnConfig, measure_unlearning, relearn_preset, relearning_attack
from .report import ImmunizationReport
from .safety_eval import cap_rows, evaluate_safety, harmful_eval_set, task_eval_set
from .saved_models import load_saved_model, load_saved_tokenizer, model_name_of, saved_method, task_of
from .scorers import RefusalKeywordScorer, Scorer

__all__ = [
    "METHODS",
    "BlockedTaskData",
    "RelearnConfig",
    "SafetyEvalData",
    "UnlearningEvalData",
    "check_model_dir",
    "describe_scorer",
    "load_saved_model",
    "load_saved_tokenizer",
    "measure_attack",
    "measure_few_shot",
    "measure_mistake_analysis",
    "measure_saved_model",
    "measure_unlearning",
    "relearn_preset",
    "relearning_attack",
    "saved_method",
]

METHODS = ("booster", "mlac", "unlearn", "mistake-sft")


def _attack_evaluation(data: SafetyEvalData, config: AttackConfig, scorer, prompt_format: str) -> dict:
    eval_harmful = cap_rows(harmful_eval_set(data.eval_harmful), config.max_eval_samples)
    task, task_scorer, metric = task_eval_set(cap_rows(data.eval_task, config.max_eval_samples), data.task_scorer)
    n_pool = {
        "harmful": len(attack_pool(data.attack_harmful, "harmful")),
        "benign": len(attack_pool(data.attack_benign, "benign")),
    }
    return {
        "scorer": describe_scorer(scorer),
        "prompt_format": prompt_format,
        "eval_harmful": {"name": data.names.get("eval_harmful", "given"), "n": len(eval_harmful)},
        **({"eval_task": {"name": data.names.get("eval_task", "given"), "n": len(task)}} if task else {}),
        **({"task_metric": metric} if metric else {}),
        "attack_pools": n_pool,
        "attack_data": f"{config.n_samples} rows drawn, {config.n_harmful} of them harmful",
    }


def measure_attack(
    model,
    tokenizer,
    data: SafetyEvalData,
    config: AttackConfig | None = None,
    *,
    method: str = "defended",
    baseline=None,
    seeds: Sequence[int] = (0,),
    scorer: Scorer | None = None,
    progress: bool = True,
    model_name: str | None = None,
    lm_eval: LmEvalConfig | Sequence[str] | None = None,
) -> ImmunizationReport:
    """The harmful fine-tuning attack on `model` (and `baseline`, attacked the same way) for each seed.

    The prompt format is resolved once from the defended model and the data, and used for both models. `scorer` is
    the harmful-score judge (default: refusal keywords), e.g. a
    :class:`~hf_immunize.evaluation.judges.GenerativeJudge` or a moderation
    :class:`~hf_immunize.evaluation.moderation.ClassifierScorer`. `lm_eval` (an
    :class:`~hf_immunize.evaluation.lm_eval_utility.LmEvalConfig` or task names) adds lm-eval tasks, run on each
    model before the attack and on its attacked copy; unknown tasks fail here, before any compute.
    """
    config = config or AttackConfig()
    scorer = scorer or RefusalKeywordScorer()
    lm_eval = as_config(lm_eval)
    if lm_eval is not None:
        check_lm_eval(lm_eval)
    prompt_format = resolve_prompt_format(
        tokenizer, config.prompt_format, datasets=[data.eval_harmful, data.attack_harmful], model=model
    )
    config = dataclasses.replace(config, prompt_format=prompt_format)

    def attack_all(target):
        return [
            run_attack(
                target,
                tokenizer,
                dataclasses.replace(config, seed=seed),
                data.attack_harmful,
                data.attack_benign,
                data.eval_harmful,
                data.eval_task,
                scorer,
                task_scorer=data.task_scorer,
                over_refusal_prompts=data.over_refusal_prompts,
                progress=progress,
                utility_eval=lm_eval_point(lm_eval) if lm_eval is not None else None,
            )
            for seed in seeds
        ]

    defended = attack_all(model)
    undefended = attack_all(baseline) if baseline is not None else []
    evaluation = _attack_evaluation(data, config, scorer, prompt_format)
    if lm_eval is not None:
        evaluation["lm_eval"] = lm_eval.describe()
    if baseline is not None:
        evaluation["baseline"] = model_name_of(baseline)
    return ImmunizationReport.from_results(
        method, model_name or model_name_of(model), defended, undefended, evaluation=evaluation
    )


def measure_mistake_analysis(
    model,
    tokenizer,
    data: SafetyEvalData,
    *,
    plain_prompt: Callable[[str], str],
    guided_prompt: Callable[[str], str],
    cue: str | None = None,
    method: str = "mistake-sft",
    baseline=None,
    attack_config: AttackConfig | None = None,
    seeds: Sequence[int] = (0,),
    scorer: Scorer | None = None,
    max_new_tokens: int = 32,
    max_eval_samples: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
    lm_eval: LmEvalConfig | Sequence[str] | None = None,
) -> ImmunizationReport:
    """Harmless rate (100 − harmful score) on the harmful evaluation prompts with the plain and the guided (harmless
    cue) prompt, and task accuracy with both, for `model` and `baseline`; with `attack_config`, the fine-tuning
    attack as well (mistake analysis is an alignment method, and the attack shows what a fine-tuning run undoes).

    `plain_prompt` / `guided_prompt` build a prompt from an instruction (the method's own templates); the
    instruction of a row is its `instruction` column when it has one, else its prompt. `lm_eval` tasks run beside
    the attack (see :func:`measure_attack`) and need `attack_config`.
    """
    scorer = scorer or RefusalKeywordScorer()
    lm_eval = as_config(lm_eval)
    if lm_eval is not None:
        if attack_config is None:
            raise ValueError("`lm_eval` tasks run on the model before and after the attack: pass `attack_config` too.")
        check_lm_eval(lm_eval)
    eval_harmful = cap_rows(harmful_eval_set(data.eval_harmful), max_eval_samples)
    eval_task, task_scorer, metric = task_eval_set(cap_rows(data.eval_task, max_eval_samples), data.task_scorer)

    def rows(ds, build):
        if ds is None:
            return None
        return ds.map(lambda r: {"prompt": build(r["instruction"] if "instruction" in r else r["prompt"])})

    arms = {method: model, **({"baseline": baseline} if baseline is not None else {})}
    results = {}
    for arm, target in arms.items():
        if isinstance(target, str | os.PathLike):
            target, _ = load_saved_model(target)
        results[arm] = {}
        for mode, build in (("plain", plain_prompt), ("guided", guided_prompt)):
            out = evaluate_safety(
                target,
                tokenizer,
                rows(eval_harmful, build),
                rows(eval_task, build),
                scorer=scorer,
                task_scorer=task_scorer,
                max_new_tokens=max_new_tokens,
                prompt_format="raw",  # the method's templates are the format it was trained in
                progress=progress,
            )
            out["harmless_rate"] = 100.0 - out["harmful_score"]
            results[arm][mode] = out
    report_kwargs = {}
    if attack_config is not None:
        attack = measure_attack(
            model,
            tokenizer,
            data,
            attack_config,
            method=method,
            baseline=baseline,
            seeds=seeds,
            scorer=scorer,
            progress=progress,
            lm_eval=lm_eval,
        )
        report_kwargs = {
            "attack_config": attack.attack_config,
            "defended": attack.defended,
            "undefended": attack.undefended,
        }
        evaluation = attack.evaluation
    else:
        evaluation = {
            "scorer": describe_scorer(scorer),
            "prompt_format": "raw",
            "eval_harmful": {"name": data.names.get("eval_harmful", "given"), "n": len(eval_harmful)},
        }
        if eval_task is not None:
            evaluation["eval_task"] = {"name": data.names.get("eval_task", "given"), "n": len(eval_task)}
            evaluation["task_metric"] = metric
    evaluation["extra"] = ["harmless rates use the method's own plain and guided prompt templates"]
    if baseline is not None:
        evaluation["baseline"] = model_name_of(baseline)
    return ImmunizationReport(
        method=method,
        model=model_name or model_name_of(model),
        evaluation=evaluation,
        measurements={"mistake_analysis": {"cue": cue, "arms": results}},
        **report_kwargs,
    )


def measure_saved_model(
    model_dir,
    method: str,
    data=None,
    *,
    baseline=None,
    seeds: Sequence[int] = (0,),
    attack_config: AttackConfig | None = None,
    relearn: RelearnConfig | None = None,
    max_eval_samples: int | None = None,
    progress: bool = True,
    lm_eval: LmEvalConfig | Sequence[str] | None = None,
    **method_options,
) -> ImmunizationReport:
    """Measures the model saved in `model_dir` with `method`'s protocol (see the module docstring).

    `data` is the protocol's dataclass; None uses the method's offline toy world. `method_options` go to the
    protocol (e.g. `plain_prompt` / `guided_prompt` for mistake-sft, `n_examples` / `budget` for MLAC, `scorer` for
    the attack of booster and mistake-sft). `lm_eval` adds lm-eval tasks to the attack (booster, mistake-sft).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    lm_eval = as_config(lm_eval)
    if lm_eval is not None:
        if method not in ("booster", "mistake-sft"):
            raise ValueError(
                f"lm-eval tasks run beside the fine-tuning attack (methods booster and mistake-sft), not with "
                f"method {method!r}."
            )
        check_lm_eval(lm_eval)
    folder = check_model_dir(model_dir, "model")
    if baseline is not None:
        check_model_dir(baseline, "baseline")
    found = saved_method(folder)
    if found is not None and found != method:
        raise ValueError(
            f"`method` is {method!r} but {str(model_dir)!r} was trained with {found!r} (its {RUN_RECORD_NAME} / card "
            f"says so); use --method {found}."
        )
    task = task_of(folder)
    name = (read_run_record(folder) or {}).get("card", {}).get("model_name") or folder.name
    common = {"method": method, "baseline": baseline, "progress": progress, "model_name": name}
    if method == "mlac" and task == "classification":
        model, tokenizer = load_saved_model(folder, "classification")
        if baseline is not None:
            common["baseline"], _ = load_saved_model(baseline, "classification")
        data = data if data is not None else BlockedTaskData.toy()
        return measure_few_shot(model, tokenizer, data, max_eval_samples=max_eval_samples, **common, **method_options)
    # Causal LMs are passed as their folder: the attack loads a fresh copy per seed (an adapter stays an adapter for
    # the `lora_continue` protocol) and reads the prompt format the model was trained in from its run record.
    tokenizer = load_saved_tokenizer(folder)
    if method == "unlearn":
        data = data if data is not None else UnlearningEvalData.toy()
        return measure_unlearning(
            str(folder),
            tokenizer,
            data,
            relearn=relearn,
            max_eval_samples=max_eval_samples,
            **common,
            **method_options,
        )
    attack_config = dataclasses.replace(attack_config or AttackConfig(), max_eval_samples=max_eval_samples)
    data = data if data is not None else SafetyEvalData.toy()
    if method == "mistake-sft":
        return measure_mistake_analysis(
            str(folder),
            tokenizer,
            data,
            attack_config=attack_config,
            seeds=seeds,
            max_eval_samples=max_eval_samples,
            lm_eval=lm_eval,
            **common,
            **method_options,
        )
    return measure_attack(
        str(folder), tokenizer, data, attack_config, seeds=seeds, lm_eval=lm_eval, **common, **method_options
    )
