"""Unlearning measured as its claim is stated: familiarity (keyword-graded completions and next-token probability of
the expected terms), forget and retain perplexity, and the relearning attack that published work shows undoes
unlearning (fine-tune on a few forget passages, measure familiarity again)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datasets import Dataset

from .eval_data import UnlearningEvalData
from .report import ImmunizationReport
from .saved_models import load_saved_model, model_name_of

__all__ = ["RelearnConfig", "measure_unlearning", "relearn_preset", "relearning_attack"]


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


def _familiarity(
    model, tokenizer, data: UnlearningEvalData, max_new_tokens: int, perplexities: bool, progress: bool = False
) -> dict:
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
        progress=progress,
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
        values = _familiarity(target, tokenizer, data, max_new_tokens, perplexities=True, progress=progress)
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
        evaluation["baseline"] = model_name_of(baseline)
    return ImmunizationReport(
        method=method,
        model=model_name or model_name_of(model),
        evaluation=evaluation,
        measurements={"unlearning": measurement},
    )
