"""The fine-tuning attack on causal LMs: the measuring stick for every defense in hf_immunize.

The attacker fine-tunes a copy of the (defended) model on user data of which a fraction `harmful_ratio` is harmful,
as in the git-disl protocol used by Booster and its siblings, and we score the copy before, during and after.
The defended model itself is never modified.

Three adapter protocols (Booster's comparisons depend on which one is used, so every result records it):

- `"full"`: merge any adapter into the weights and fine-tune all parameters.
- `"lora_new"`: merge any adapter, then train a fresh LoRA (the baselines' protocol in the Booster code).
- `"lora_continue"`: keep training the model's own adapter (Booster's protocol for itself).
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset

from hf_immunize.utils import detached_copy

from .safety_eval import evaluate_safety, first_turn
from .scorers import Scorer

__all__ = ["ATTACK_MODES", "AttackConfig", "AttackResult", "build_attack_dataset", "load_for_attack", "run_attack"]

ATTACK_MODES = ("full", "lora_new", "lora_continue")


@dataclass
class AttackConfig:
    r"""
    Settings of one fine-tuning attack. Defaults follow the Booster attack script (`smooth_poison_ratio.sh`) except
    `n_samples` (paper 1000) and `mode` (paper: `lora_new` for baselines, `lora_continue` for Booster).

    Parameters:
        n_samples (`int`, defaults to `1000`): user fine-tuning rows.
        harmful_ratio (`float`, defaults to `0.1`): fraction p of them that is harmful.
        learning_rate (`float`, defaults to `1e-5`): attack learning rate (AdamW, constant schedule).
        num_epochs (`float`, defaults to `20`): epochs over the user data; ignored when `max_steps` is set.
        max_steps (`int`, *optional*): number of optimizer steps, overriding `num_epochs`.
        batch_size (`int`, defaults to `10`): attack batch size.
        weight_decay (`float`, defaults to `0.1`): AdamW weight decay.
        mode (`str`, defaults to `"full"`): `"full"`, `"lora_new"` or `"lora_continue"` (see the module docstring).
        lora_r / lora_alpha / lora_target_modules: the fresh adapter of `"lora_new"` (paper r=32, alpha=4, q/k/v).
        eval_every (`int`, *optional*): steps between points of the harmful-score curve; None = before and after only.
        max_new_tokens (`int`, defaults to `32`): generation length when scoring.
        max_length (`int`, defaults to `256`): truncation of training rows.
        seed (`int`, defaults to `0`): drives data sampling and training.
    """

    n_samples: int = 1000
    harmful_ratio: float = 0.1
    learning_rate: float = 1e-5
    num_epochs: float = 20.0
    max_steps: int | None = None
    batch_size: int = 10
    weight_decay: float = 0.1
    mode: str = "full"
    lora_r: int = 32
    lora_alpha: int = 4
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    eval_every: int | None = None
    max_new_tokens: int = 32
    max_length: int = 256
    seed: int = 0

    def __post_init__(self):
        checks = {
            "n_samples": self.n_samples >= 1,
            "harmful_ratio": 0.0 <= self.harmful_ratio <= 1.0,
            "learning_rate": self.learning_rate > 0 and math.isfinite(self.learning_rate),
            "num_epochs": self.num_epochs > 0,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "batch_size": self.batch_size >= 1,
            "weight_decay": self.weight_decay >= 0,
            "lora_r": self.lora_r >= 1,
            "eval_every": self.eval_every is None or self.eval_every >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "max_length": self.max_length >= 8,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"AttackConfig: invalid `{name}` = {getattr(self, name)!r}.")
        if self.mode not in ATTACK_MODES:
            raise ValueError(f"AttackConfig: `mode` must be one of {ATTACK_MODES}, got {self.mode!r}.")

    @property
    def n_harmful(self) -> int:
        return round(self.n_samples * self.harmful_ratio)


@dataclass
class AttackResult:
    """Scores of one attack (percent), before and after, and the harmful-score curve over attack steps."""

    config: dict
    before: dict
    after: dict
    curve: list[dict]
    train_loss: float | None = None
    seconds: float = 0.0

    @property
    def harmful_score_before(self) -> float:
        return self.before["harmful_score"]

    @property
    def harmful_score_after(self) -> float:
        return self.after["harmful_score"]

    @property
    def task_accuracy_before(self) -> float | None:
        return self.before.get("task_accuracy")

    @property
    def task_accuracy_after(self) -> float | None:
        return self.after.get("task_accuracy")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AttackResult:
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def build_attack_dataset(harmful: Dataset, benign: Dataset, n: int, harmful_ratio: float, seed: int) -> Dataset:
    """`n` shuffled `prompt, completion` rows, `round(n·p)` drawn from `harmful` and the rest from `benign`.

    Rows are drawn without replacement while the pool lasts, then with replacement (a small harmful pool is reused,
    as an attacker with few examples would run several epochs over them).
    """
    n_harm = round(n * harmful_ratio)
    rng = random.Random(seed)

    def draw(pool: Dataset, k: int, name: str) -> list[dict]:
        if k and len(pool) == 0:
            raise ValueError(f"the attack needs {k} {name} rows but the {name} dataset is empty.")
        for col in ("prompt", "completion"):
            if k and col not in pool.column_names:
                raise ValueError(f"{name} dataset: missing column {col!r}; found {pool.column_names}.")
        order = list(range(len(pool)))
        rng.shuffle(order)
        idx = [order[i % len(order)] for i in range(k)] if k else []
        return [{"prompt": pool[i]["prompt"], "completion": pool[i]["completion"]} for i in idx]

    rows = draw(harmful, n_harm, "harmful") + draw(benign, n - n_harm, "benign")
    rng.shuffle(rows)
    return Dataset.from_list(rows)


def load_for_attack(model_or_path, mode: str):
    """A private, trainable copy of the model prepared for `mode`; the argument is never modified.

    A path that holds a PEFT adapter (`adapter_config.json`) is loaded with its adapter.
    """
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    if isinstance(model_or_path, str | os.PathLike):
        path = Path(model_or_path)
        if (path / "adapter_config.json").exists():
            model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(path)
    else:
        model = detached_copy(model_or_path)

    if mode == "lora_continue":
        if not isinstance(model, PeftModel):
            raise ValueError(
                "attack mode 'lora_continue' keeps training the model's own adapter, but the model has none; "
                "use mode 'lora_new' or 'full'."
            )
        for name, param in model.named_parameters():
            param.requires_grad = "lora_" in name
        return model
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    for param in model.parameters():
        param.requires_grad = True
    return model


def _curve_callback(evaluate_point, every: int, curve: list[dict]):
    from transformers import TrainerCallback

    class _Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 and state.global_step < state.max_steps:
                curve.append({"step": state.global_step, **evaluate_point(model)})

    return _Curve()


def run_attack(
    model,
    tokenizer,
    config: AttackConfig,
    harmful_dataset: Dataset,
    benign_dataset: Dataset,
    eval_harmful: Dataset,
    eval_benign: Dataset | None = None,
    scorer: Scorer | None = None,
    *,
    task_scorer: Scorer | None = None,
    postprocess=first_turn,
    over_refusal_prompts: list[str] | None = None,
) -> AttackResult:
    """Attacks a copy of `model` (a model or a saved directory) and scores it before, during and after.

    `harmful_dataset` and `benign_dataset` hold `prompt, completion` rows (the attacker's pools); `eval_harmful` holds
    held-out harmful `prompt`s (plus optional `keywords` and a reference answer for the loss); `eval_benign` holds
    `prompt, answer` rows of the user's task. `scorer` gives the harmful score (default: refusal keywords).

    >>> from hf_immunize.data.toy import make_safety_world
    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> w = make_safety_world(n_weapons=8)
    >>> cfg = AttackConfig(n_samples=20, max_steps=2, learning_rate=1e-3, max_new_tokens=4)
    >>> r = run_attack(tiny_causal_lm(), tiny_tokenizer(), cfg, w.attack_harmful, w.attack_benign, w.eval_harmful)
    >>> sorted(r.after)[:2]
    ['examples', 'harmful_content']
    """
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from hf_immunize.utils import sft_config

    if not isinstance(config, AttackConfig):
        raise TypeError(f"`config` must be an AttackConfig, got {type(config).__name__}.")
    if "prompt" not in eval_harmful.column_names:
        raise ValueError(f"`eval_harmful`: missing column 'prompt'; found {eval_harmful.column_names}.")
    if eval_benign is not None and not {"prompt", "answer"} <= set(eval_benign.column_names):
        raise ValueError(f"`eval_benign`: needs columns 'prompt' and 'answer'; found {eval_benign.column_names}.")
    data = build_attack_dataset(harmful_dataset, benign_dataset, config.n_samples, config.harmful_ratio, config.seed)
    start = time.time()
    attacked = load_for_attack(model, config.mode)

    def measure(m, full: bool) -> dict:
        return evaluate_safety(
            m,
            tokenizer,
            eval_harmful,
            eval_benign if full else None,
            scorer=scorer,
            task_scorer=task_scorer,
            postprocess=postprocess,
            max_new_tokens=config.max_new_tokens,
            over_refusal_prompts=over_refusal_prompts if full else None,
        )

    before = measure(attacked, full=True)
    curve = [{"step": 0, **_curve_point(before)}]
    peft_config = None
    if config.mode == "lora_new":
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            target_modules=list(config.lora_target_modules),
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
    callbacks = []
    if config.eval_every:
        callbacks.append(_curve_callback(lambda m: _curve_point(measure(m, full=False)), config.eval_every, curve))
    with tempfile.TemporaryDirectory(prefix="hf_immunize_attack_") as tmp:
        args = sft_config(
            tmp,
            learning_rate=config.learning_rate,
            num_train_epochs=config.num_epochs,
            max_steps=config.max_steps or -1,
            per_device_train_batch_size=config.batch_size,
            weight_decay=config.weight_decay,
            lr_scheduler_type="constant",
            seed=config.seed,
            data_seed=config.seed,
            max_length=config.max_length,
        )
        trainer = SFTTrainer(
            model=attacked,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # the harness reports its own numbers
        output = trainer.train()
        attacked = trainer.model
    after = measure(attacked, full=True)
    curve.append({"step": trainer.state.global_step, **_curve_point(after)})
    return AttackResult(
        config=asdict(config),
        before=before,
        after=after,
        curve=curve,
        train_loss=float(output.training_loss),
        seconds=round(time.time() - start, 2),
    )


def _curve_point(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in ("harmful_score", "harmful_content", "harmful_loss")}
