"""Each defense measured the way its own claim is stated, on a saved model, into one :class:`ImmunizationReport`.

- booster (and any causal-LM defense): :func:`measure_attack`, harmful score and task accuracy before and after a
  fine-tuning attack;
- mlac on a classifier: :func:`measure_few_shot`, the best few-shot attacker's accuracy on the blocked task, the
  desired-task accuracy and a random initialisation of the same architecture;
- unlearn: :func:`measure_unlearning`, familiarity, perplexities, and familiarity again after a relearning attack;
- mistake-sft: :func:`measure_mistake_analysis`, harmless rate with the plain and the guided prompt, plus the attack.

:func:`measure_saved_model` picks the protocol for a method and a model directory (full weights or a PEFT adapter);
`hf-immunize evaluate` and `trainer.measure_immunization()` both call it. The data of each protocol is a small
dataclass (:class:`SafetyEvalData`, :class:`BlockedTaskData`, :class:`UnlearningEvalData`) with a `toy()` constructor
for the offline toy worlds; users pass their own sets in any layout of :mod:`hf_immunize.data`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from hf_immunize.core.hub import check_model_dir

from .attack import AttackConfig, attack_pool, run_attack
from .formatting import RUN_RECORD_NAME, read_run_record, resolve_prompt_format
from .report import ImmunizationReport
from .safety_eval import cap_rows, evaluate_safety, harmful_eval_set, task_eval_set
from .scorers import RefusalKeywordScorer, Scorer

__all__ = [
    "METHODS",
    "BlockedTaskData",
    "RelearnConfig",
    "SafetyEvalData",
    "UnlearningEvalData",
    "check_model_dir",
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


def _describe_scorer(scorer: Scorer) -> str:
    return f"`{getattr(scorer, 'name', type(scorer).__name__)}` ({scorer!r})"


# ---- saved models ---------------------------------------------------------------------------------------------------


def load_saved_model(path, task: str = "causal_lm"):
    """`(model, tokenizer)` from a saved folder; a PEFT adapter is loaded on its base model and merged (the measured
    model is the one a user of the published checkpoint would run)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = check_model_dir(path)
    if (folder / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

        cls = AutoPeftModelForCausalLM if task == "causal_lm" else AutoPeftModelForSequenceClassification
        model = cls.from_pretrained(folder).merge_and_unload()
    else:
        cls = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
        model = cls.from_pretrained(folder)
    return model, load_saved_tokenizer(folder)


def load_saved_tokenizer(path):
    """The tokenizer saved beside a model, with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"`model`: {str(path)!r} has no loadable tokenizer ({err}); save it with the model."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _task_of(path) -> str:
    """`"classification"` for a saved sequence classifier, else `"causal_lm"`."""
    record = read_run_record(path) or {}
    if record.get("task"):
        return "classification" if record["task"] == "text-classification" else "causal_lm"
    config_file = Path(path) / "config.json"
    if not config_file.is_file():  # an adapter: its base model's task
        adapter = json.loads((Path(path) / "adapter_config.json").read_text())
        return "classification" if adapter.get("task_type") == "SEQ_CLS" else "causal_lm"
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    return "classification" if any("SequenceClassification" in a for a in architectures) else "causal_lm"


# ---- data -----------------------------------------------------------------------------------------------------------


@dataclass
class SafetyEvalData:
    """What a harmful fine-tuning attack needs: the attacker's pools and the held-out evaluation sets.

    Any layout of :mod:`hf_immunize.data` plugs in: `attack_harmful` as prompt/completion or refusal triples (its
    harmful answers) or BeaverTails (unsafe rows); `attack_benign` as prompt/completion; `eval_harmful` as a harmful
    prompt list; `eval_task` with `answer`, `final_answer` (GSM8K) or a label task's `label` + `completion`.
    `names` labels the sets on the card (e.g. `{"eval_harmful": "walledai/AdvBench"}`).
    """

    attack_harmful: Dataset
    attack_benign: Dataset
    eval_harmful: Dataset
    eval_task: Dataset | None = None
    over_refusal_prompts: list[str] | Dataset | None = None
    task_scorer: Scorer | None = None
    names: dict = field(default_factory=dict)

    @classmethod
    def toy(cls, seed: int = 0, **world_kwargs) -> SafetyEvalData:
        """The offline safety world's attack pools and held-out sets (weapons never seen in alignment)."""
        from hf_immunize.data.toy import PROMPT_TEMPLATE, make_safety_world

        w = make_safety_world(seed=seed, **world_kwargs)
        head, tail = PROMPT_TEMPLATE.split("{instruction}")

        def with_instruction(ds):  # the bare request, for methods that wrap it in their own template
            return ds.map(lambda r: {"instruction": r["prompt"].removeprefix(head).removesuffix(tail)})

        return cls(
            with_instruction(w.attack_harmful),
            with_instruction(w.attack_benign),
            with_instruction(w.eval_harmful),
            with_instruction(w.eval_benign),
            over_refusal_prompts=with_instruction(w.eval_dishes),
            names={"eval_harmful": "toy safety world, held-out weapons", "eval_task": "toy safety world tasks"},
        )


@dataclass
class BlockedTaskData:
    """MLAC's measurement: the blocked task's attacker pool and evaluation set, and the desired task's test set.

    Rows have `text` and an integer `label`; `num_labels` is the blocked task's class count.
    """

    blocked_pool: Dataset
    blocked_eval: Dataset
    desired_eval: Dataset | None = None
    num_labels: int = 2
    names: dict = field(default_factory=dict)

    @classmethod
    def toy(cls, seed: int = 0, **world_kwargs) -> BlockedTaskData:
        """The bios world: gender (blocked) from val1 / val2, profession (desired) on test, as the MLAC release."""
        from hf_immunize.data.toy import BiosWorld, make_bios_world

        w = make_bios_world(seed=seed, **{"scrub_pronouns": True, **world_kwargs})
        return cls(
            BiosWorld.with_label(w.val1, "gender"),
            BiosWorld.with_label(w.val2, "gender"),
            BiosWorld.with_label(w.test, "profession"),
            num_labels=2,
            names={"blocked_task": "gender", "desired_task": "profession"},
        )


@dataclass
class UnlearningEvalData:
    """The unlearning measurement: completion prompts with their expected terms, the anchored terms and theme terms
    of the keyword grader, held-out forget and retain texts for perplexity, and the passages a relearning attacker
    fine-tunes on."""

    prompts: list[str]
    targets: list
    anchored_terms: list[str]
    theme_terms: list[str] = field(default_factory=list)
    forget_texts: list[str] | None = None
    retain_texts: list[str] | None = None
    relearn_texts: list[str] | None = None
    names: dict = field(default_factory=dict)

    @classmethod
    def toy(cls, seed: int = 0, **world_kwargs) -> UnlearningEvalData:
        """The book world: its familiarity prompts and dictionary, held-out forget passages, the last retain
        passages, and forget passages as the relearning attacker's data."""
        from hf_immunize.data.toy import make_book_world

        w = make_book_world(seed=seed, **world_kwargs)
        n_retain = len(w.retain)
        return cls(
            list(w.familiarity_prompts["prompt"]),
            list(w.familiarity_prompts["targets"]),
            list(w.anchored_terms),
            list(w.theme_terms),
            forget_texts=list(w.forget_heldout["text"]),
            retain_texts=list(w.retain.select(range(max(0, n_retain - 16), n_retain))["text"]),
            relearn_texts=list(w.forget["text"]),
            names={"corpus": "toy book world"},
        )


@dataclass
class RelearnConfig:
    r"""
    The relearning attack on an unlearned model: fine-tune a copy on a few forget passages, then measure familiarity
    again (Lynch et al., arXiv 2402.16835, and later work report that this brings unlearned knowledge back).

    Parameters:
        n_passages (`int`, defaults to `10`): forget passages the attacker trains on.
        max_steps (`int`, defaults to `20`): optimizer steps.
        learning_rate (`float`, defaults to `1e-5`): AdamW learning rate (constant); tiny CPU models need ~1e-3.
        batch_size (`int`, defaults to `4`).
        eval_every (`int`, *optional*): steps between familiarity points of the curve; None = before and after only.
        max_length (`int`, defaults to `256`): truncation of the passages.
        seed (`int`, defaults to `0`).
    """

    n_passages: int = 10
    max_steps: int = 20
    learning_rate: float = 1e-5
    batch_size: int = 4
    eval_every: int | None = None
    max_length: int = 256
    seed: int = 0

    def __post_init__(self):
        for name in ("n_passages", "max_steps", "batch_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RelearnConfig: `{name}` must be an integer >= 1, got {getattr(self, name)!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"RelearnConfig: `learning_rate` must be > 0, got {self.learning_rate!r}.")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"RelearnConfig: `eval_every` must be >= 1 or None, got {self.eval_every!r}.")


def relearn_preset(name: str) -> RelearnConfig:
    """`"toy"`: 10 passages, 20 steps at lr 1e-3 (the tiny CPU models need a large step); `"paper"`: 10 passages, 20
    steps at lr 1e-5, the scale of published relearning attacks on 7B models."""
    if name == "toy":
        return RelearnConfig(n_passages=10, max_steps=20, learning_rate=1e-3, max_length=128, eval_every=5)
    if name == "paper":
        return RelearnConfig()
    raise ValueError(f"relearning preset must be 'toy' or 'paper', got {name!r}.")


# ---- harmful fine-tuning attack -------------------------------------------------------------------------------------


def _attack_evaluation(data: SafetyEvalData, config: AttackConfig, scorer, prompt_format: str) -> dict:
    eval_harmful = cap_rows(harmful_eval_set(data.eval_harmful), config.max_eval_samples)
    task, task_scorer, metric = task_eval_set(cap_rows(data.eval_task, config.max_eval_samples), data.task_scorer)
    n_pool = {
        "harmful": len(attack_pool(data.attack_harmful, "harmful")),
        "benign": len(attack_pool(data.attack_benign, "benign")),
    }
    return {
        "scorer": _describe_scorer(scorer),
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
) -> ImmunizationReport:
    """The harmful fine-tuning attack on `model` (and `baseline`, attacked the same way) for each seed.

    The prompt format is resolved once from the defended model and the data, and used for both models.
    """
    config = config or AttackConfig()
    scorer = scorer or RefusalKeywordScorer()
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
            )
            for seed in seeds
        ]

    defended = attack_all(model)
    undefended = attack_all(baseline) if baseline is not None else []
    evaluation = _attack_evaluation(data, config, scorer, prompt_format)
    if baseline is not None:
        evaluation["baseline"] = _name_of(baseline)
    return ImmunizationReport.from_results(
        method, model_name or _name_of(model), defended, undefended, evaluation=evaluation
    )


def _name_of(model) -> str:
    if isinstance(model, str | os.PathLike):
        return Path(model).name
    return Path(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__).name


# ---- MLAC: few-shot attacker ----------------------------------------------------------------------------------------


def _classifier_accuracy(model, tokenizer, ds: Dataset, max_length: int = 128) -> float:
    import torch

    from .classifier_attack import _accuracy, _encode

    device = next(model.parameters()).device
    encoded = _encode(tokenizer, ds["text"], max_length)
    labels = torch.tensor(list(ds["label"]), dtype=torch.long)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    return 100.0 * _accuracy(model, encoded, labels, 64, left, device)


def measure_few_shot(
    model,
    tokenizer,
    data: BlockedTaskData,
    *,
    method: str = "mlac",
    baseline=None,
    n_examples: int = 50,
    budget: int = 8,
    patience: int = 4,
    repeats: int = 3,
    space=None,
    seed: int = 0,
    sampler: str = "grid",
    max_eval_samples: int | None = None,
    random_init: bool = True,
    progress: bool = True,
    model_name: str | None = None,
) -> ImmunizationReport:
    """MLAC's claim: how well the best few-shot attacker (a fresh head, hyperparameters searched, the best setting
    re-run on fresh subsets) learns the blocked task from `model`, next to `baseline` and a random initialisation of
    the same architecture (the floor the method aims for), plus the desired-task accuracy of the model's own head.

    The defaults keep a CPU run to minutes; the paper's search is budget 50, patience 15, repeats 15 (TPE) over
    {20, 50, 100, 200} examples.
    """
    from tqdm.auto import tqdm

    from .classifier_attack import ClassifierSearchSpace, random_init_like, search_classifier_attack

    space = space or ClassifierSearchSpace(steps=(100,), batch_sizes=(12,), lr_grid_size=4)
    blocked_eval = cap_rows(data.blocked_eval, max_eval_samples)
    desired_eval = cap_rows(data.desired_eval, max_eval_samples)
    arms = {method: model}
    if baseline is not None:
        arms["baseline"] = baseline
    if random_init:
        arms["random_init"] = random_init_like(model, seed=1000 + seed)
    results = {}
    majority = None
    for arm, target in tqdm(list(arms.items()), desc="few-shot attacker", disable=not progress):
        search = search_classifier_attack(
            target,
            tokenizer,
            data.blocked_pool,
            blocked_eval,
            n_examples=n_examples,
            num_labels=data.num_labels,
            space=space,
            budget=budget,
            patience=patience,
            repeats=repeats,
            seed=seed,
            sampler=sampler,
        )
        majority = 100.0 * search.majority_rate
        results[arm] = {
            "attacker_accuracy": {
                "mean": 100.0 * search.mean,
                "std": 100.0 * search.std,
                "n": len(search.repeat_accuracies),
            },
            "repeat_accuracies": [100.0 * a for a in search.repeat_accuracies],
            "best_config": search.best_config,
            "trials": len(search.trials),
            "stop_reason": search.stop_reason,
            "desired_accuracy": (
                _classifier_accuracy(target, tokenizer, desired_eval)
                if desired_eval is not None and arm != "random_init"
                else None
            ),
        }
    measurement = {
        "blocked_task": data.names.get("blocked_task", "blocked task"),
        "desired_task": data.names.get("desired_task"),
        "n_examples": n_examples,
        "n_eval": len(blocked_eval),
        "majority_rate": majority,
        "search": {
            "budget": budget,
            "patience": patience,
            "repeats": repeats,
            "sampler": sampler,
            "space": dataclasses.asdict(space),
        },
        "arms": results,
    }
    evaluation = {
        "scorer": "accuracy of a freshly initialised classification head on the blocked task",
        "eval_task": {"name": data.names.get("desired_task", "desired task"), "n": len(desired_eval)}
        if desired_eval is not None
        else None,
        "task_metric": "accuracy of the model's own head on the desired task",
    }
    if baseline is not None:
        evaluation["baseline"] = _name_of(baseline)
    return ImmunizationReport(
        method=method,
        model=model_name or _name_of(model),
        evaluation={k: v for k, v in evaluation.items() if v is not None},
        measurements={"few_shot_attack": measurement},
    )


# ---- unlearning: familiarity and the relearning attack --------------------------------------------------------------


def _familiarity(model, tokenizer, data: UnlearningEvalData, max_new_tokens: int, perplexities: bool) -> dict:
    from .unlearning import evaluate_unlearning

    out = evaluate_unlearning(
        model,
        tokenizer,
        prompts=data.prompts,
        targets=data.targets,
        anchored_terms=data.anchored_terms,
        theme_terms=data.theme_terms,
        forget_texts=data.forget_texts if perplexities else None,
        retain_texts=data.retain_texts if perplexities else None,
        max_new_tokens=max_new_tokens,
    )
    out["examples"] = out.pop("completions")[:3]
    return out


def relearning_attack(
    model, tokenizer, texts: Sequence[str], config: RelearnConfig, evaluate: Callable, *, progress: bool = True
) -> dict:
    """Fine-tunes a copy of `model` on `config.n_passages` of `texts` (causal LM loss on every token) and calls
    `evaluate(model)` before, every `eval_every` steps and after; returns `{"curve": [...], **evaluate(after)}`."""
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer

    from hf_immunize.utils import detached_copy, sft_config

    if not texts:
        raise ValueError("the relearning attack needs forget passages (`relearn_texts`); none were given.")
    rows = Dataset.from_dict({"text": list(texts)[: config.n_passages]})
    attacked = detached_copy(model)
    for p in attacked.parameters():
        p.requires_grad_(True)
    curve = [{"step": 0, **evaluate(attacked)}]

    class _Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if (
                config.eval_every
                and state.global_step % config.eval_every == 0
                and state.global_step < state.max_steps
            ):
                curve.append({"step": state.global_step, **evaluate(model)})

    with tempfile.TemporaryDirectory(prefix="hf_immunize_relearn_") as tmp:
        args = sft_config(
            tmp,
            learning_rate=config.learning_rate,
            max_steps=config.max_steps,
            per_device_train_batch_size=config.batch_size,
            seed=config.seed,
            data_seed=config.seed,
            max_length=config.max_length,
            disable_tqdm=not progress,
        )
        trainer = SFTTrainer(model=attacked, args=args, train_dataset=rows, processing_class=tokenizer)
        trainer.add_callback(_Curve())
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        attacked = trainer.model
    after = evaluate(attacked)
    curve.append({"step": trainer.state.global_step, **after})
    return {"curve": curve, **after}


def measure_unlearning(
    model,
    tokenizer,
    data: UnlearningEvalData,
    *,
    method: str = "unlearn",
    baseline=None,
    relearn: RelearnConfig | None = None,
    max_new_tokens: int = 24,
    max_eval_samples: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> ImmunizationReport:
    """Familiarity (keyword-graded completions and next-token probability of the expected terms), forget and retain
    perplexity, and the relearning attack, for `model` and `baseline` (e.g. the model before unlearning)."""
    relearn = relearn or RelearnConfig()
    if max_eval_samples is not None:
        data = dataclasses.replace(
            data,
            prompts=data.prompts[:max_eval_samples],
            targets=data.targets[:max_eval_samples],
            forget_texts=(data.forget_texts or [])[:max_eval_samples] or None,
            retain_texts=(data.retain_texts or [])[:max_eval_samples] or None,
        )

    def point(m) -> dict:
        f = _familiarity(m, tokenizer, data, max_new_tokens, perplexities=False)
        return {"familiarity": f["familiarity"], "prob_familiarity": f["prob_familiarity"]}

    arms = {method: model, **({"baseline": baseline} if baseline is not None else {})}
    results = {}
    for arm, target in arms.items():
        if isinstance(target, str | os.PathLike):
            target, _ = load_saved_model(target)
        values = _familiarity(target, tokenizer, data, max_new_tokens, perplexities=True)
        values["relearning"] = relearning_attack(
            target, tokenizer, data.relearn_texts or [], relearn, point, progress=progress
        )
        results[arm] = values
    measurement = {
        "grader": "keyword",
        "n_prompts": len(data.prompts),
        "relearning_config": {
            **dataclasses.asdict(relearn),
            "n_passages": min(relearn.n_passages, len(data.relearn_texts or [])),
        },
        "arms": results,
    }
    evaluation = {
        "scorer": "keyword familiarity grader (anchored terms = class 3, theme terms = class 2)",
        "prompt_format": "raw",
        "extra": [
            f"completion prompts: {data.names.get('corpus', 'given')}, {len(data.prompts)} prompts; "
            f"{len(data.anchored_terms)} anchored terms",
            f"held-out forget texts: {len(data.forget_texts or [])}, retain texts: {len(data.retain_texts or [])}",
        ],
    }
    if baseline is not None:
        evaluation["baseline"] = _name_of(baseline)
    return ImmunizationReport(
        method=method,
        model=model_name or _name_of(model),
        evaluation=evaluation,
        measurements={"unlearning": measurement},
    )


# ---- mistake analysis -----------------------------------------------------------------------------------------------


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
) -> ImmunizationReport:
    """Harmless rate (100 − harmful score) on the harmful evaluation prompts with the plain and the guided (harmless
    cue) prompt, and task accuracy with both, for `model` and `baseline`; with `attack_config`, the fine-tuning
    attack as well (mistake analysis is an alignment method, and the attack shows what a fine-tuning run undoes).

    `plain_prompt` / `guided_prompt` build a prompt from an instruction (the method's own templates); the
    instruction of a row is its `instruction` column when it has one, else its prompt.
    """
    scorer = scorer or RefusalKeywordScorer()
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
        )
        report_kwargs = {
            "attack_config": attack.attack_config,
            "defended": attack.defended,
            "undefended": attack.undefended,
        }
        evaluation = attack.evaluation
    else:
        evaluation = {
            "scorer": _describe_scorer(scorer),
            "prompt_format": "raw",
            "eval_harmful": {"name": data.names.get("eval_harmful", "given"), "n": len(eval_harmful)},
        }
        if eval_task is not None:
            evaluation["eval_task"] = {"name": data.names.get("eval_task", "given"), "n": len(eval_task)}
            evaluation["task_metric"] = metric
    evaluation["extra"] = ["harmless rates use the method's own plain and guided prompt templates"]
    if baseline is not None:
        evaluation["baseline"] = _name_of(baseline)
    return ImmunizationReport(
        method=method,
        model=model_name or _name_of(model),
        evaluation=evaluation,
        measurements={"mistake_analysis": {"cue": cue, "arms": results}},
        **report_kwargs,
    )


# ---- one entry point ------------------------------------------------------------------------------------------------


def saved_method(path) -> str | None:
    """The hf_immunize method a saved model was trained with (its `hf_immunize.json`, else its card's tags)."""
    from hf_immunize.model_card import canonical_method

    record = read_run_record(path)
    if record and record.get("method"):
        return canonical_method(record["method"])
    card = Path(path) / "README.md"
    if card.is_file():
        from huggingface_hub import ModelCard

        try:
            tags = ModelCard.load(card).data.tags or []
        except Exception:  # a card without valid metadata says nothing about the method
            return None
        if "hf-immunize" in tags:
            return next((canonical_method(t) for t in tags if canonical_method(t)), None)
    return None


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
    **method_options,
) -> ImmunizationReport:
    """Measures the model saved in `model_dir` with `method`'s protocol (see the module docstring).

    `data` is the protocol's dataclass; None uses the method's offline toy world. `method_options` go to the
    protocol (e.g. `plain_prompt` / `guided_prompt` for mistake-sft, `n_examples` / `budget` for MLAC).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    folder = check_model_dir(model_dir, "model")
    if baseline is not None:
        check_model_dir(baseline, "baseline")
    found = saved_method(folder)
    if found is not None and found != method:
        raise ValueError(
            f"`method` is {method!r} but {str(model_dir)!r} was trained with {found!r} (its {RUN_RECORD_NAME} / card "
            f"says so); use --method {found}."
        )
    task = _task_of(folder)
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
            **common,
            **method_options,
        )
    return measure_attack(str(folder), tokenizer, data, attack_config, seeds=seeds, **common, **method_options)
