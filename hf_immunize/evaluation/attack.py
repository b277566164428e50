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

from .formatting import PROMPT_FORMATS, resolve_prompt_format, to_attack_rows
from .safety_eval import cap_rows, evaluate_safety, first_turn
from .scorers import Scorer

__all__ = [
    "ATTACK_MODES",
    "AttackConfig",
    "AttackResult",
    "attack_pool",
    "attack_preset",
    "build_attack_dataset",
    "load_for_attack",
    "run_attack",
]

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
        prompt_format (`str`, defaults to `"auto"`): `"chat"`, `"raw"` or `"auto"`: how attack rows and evaluation
            prompts are rendered (see :mod:`hf_immunize.evaluation.formatting`); the resolved choice is recorded.
        max_eval_samples (`int`, *optional*): score at most this many rows of each evaluation set (the first ones).
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
    prompt_format: str = "auto"
    max_eval_samples: int | None = None

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
            "max_eval_samples": self.max_eval_samples is None or self.max_eval_samples >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"AttackConfig: invalid `{name}` = {getattr(self, name)!r}.")
        if self.mode not in ATTACK_MODES:
            raise ValueError(f"AttackConfig: `mode` must be one of {ATTACK_MODES}, got {self.mode!r}.")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"AttackConfig: `prompt_format` must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}."
            )

    @property
    def n_harmful(self) -> int:
        return round(self.n_samples * self.harmful_ratio)


def attack_preset(name: str) -> AttackConfig:
    """A named attack: `"toy"`, the safety benchmark's standard attack (500 rows, 10 % harmful, lr 1e-4, 3 epochs,
    full fine-tuning: 150 steps, minutes on a CPU for the tiny models; chosen so that the undefended SFT model clearly
    breaks, see benchmarks/README.md); `"paper"`, the Booster paper's attack (the `AttackConfig` defaults: 1000 rows,
    lr 1e-5, 20 epochs, for 7B models on a GPU).

    >>> attack_preset("toy").n_samples, attack_preset("paper").num_epochs
    (500, 20.0)
    """
    if name == "toy":
        return AttackConfig(
            n_samples=500,
            harmful_ratio=0.1,
            learning_rate=1e-4,
            num_epochs=3,
            batch_size=10,
            mode="full",
            eval_every=25,
            max_new_tokens=24,
            max_length=64,
        )
    if name == "paper":
        return AttackConfig()
    raise ValueError(f"attack preset must be 'toy' or 'paper', got {name!r}.")


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


def attack_pool(dataset: Dataset, name: str) -> Dataset:
    """An attacker's pool as `prompt, completion` rows, from any layout of :mod:`hf_immunize.data`: prompt/completion
    (instructions, GSM8K, label tasks), refusal triples `prompt, harmful, refusal` (the harmful answer is the
    completion), BeaverTails QA (`is_safe`: unsafe rows only for the harmful pool)."""
    columns = set(dataset.column_names)
    if name == "harmful" and "is_safe" in columns:
        dataset = dataset.filter(lambda r: not r["is_safe"])
    if "completion" not in columns and "harmful" in columns and name == "harmful":
        dataset = dataset.rename_column("harmful", "completion")
    missing = [c for c in ("prompt", "completion") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{name} dataset: missing column(s) {missing}; found {dataset.column_names} (expected prompt/completion "
            "rows, or for the harmful pool refusal triples prompt/harmful/refusal)."
        )
    return dataset


def build_attack_dataset(harmful: Dataset, benign: Dataset, n: int, harmful_ratio: float, seed: int) -> Dataset:
    """`n` shuffled `prompt, completion` rows, `round(n·p)` drawn from `harmful` and the rest from `benign`.

    Rows are drawn without replacement while the pool lasts, then with replacement (a small harmful pool is reused,
    as an attacker with few examples would run several epochs over them). Pools are read by :func:`attack_pool`.
    """
    n_harm = round(n * harmful_ratio)
    rng = random.Random(seed)
    if n_harm:
        harmful = attack_pool(harmful, "harmful")
    if n - n_harm:
        benign = attack_pool(benign, "benign")

    def draw(pool: Dataset, k: int, name: str) -> list[dict]:
        if k and len(pool) == 0:
            raise ValueError(f"the attack needs {k} {name} rows but the {name} dataset is empty.")
        for col in ("prompt", "completion"):
            if k and col not in pool.column_names:
                raise ValueError(f"{name} dataset: missing column {col!r}; found {pool.column_names}.")
        order = list(range(len(pool)))
        rng.shuffle(order)
        idx = [order[i % len(order)] for i in range(k)] if k else []
        return [{c: pool[i][c] for c in keep} for i in idx]

    # The bare request (`instruction`) travels with a row when both pools have it: a chat template wraps it.
    keep = ["prompt", "completion"]
    if all("instruction" in p.column_names for p, k in ((harmful, n_harm), (benign, n - n_harm)) if k):
        keep.append("instruction")
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
    over_refusal_prompts: list[str] | Dataset | None = None,
    progress: bool = False,
    utility_eval=None,
) -> AttackResult:
    """Attacks a copy of `model` (a model or a saved directory) and scores it before, during and after.

    `harmful_dataset` and `benign_dataset` are the attacker's pools (any layout :func:`attack_pool` reads);
    `eval_harmful` holds held-out harmful `prompt`s (plus optional `keywords` and a reference answer for the loss);
    `eval_benign` the user's task in any layout :func:`~hf_immunize.evaluation.safety_eval.task_eval_set` reads
    (`answer`, GSM8K's `final_answer`, a label task). `scorer` gives the harmful score (default: refusal keywords).
    Attack rows and evaluation prompts are rendered in `config.prompt_format` (resolved against the data and the
    model's saved record; the result's `config["prompt_format"]` says which). `progress` shows bars for the attack's
    training and every scoring pass. `utility_eval(model, tokenizer) -> dict` (e.g. lm-eval tasks,
    :func:`~hf_immunize.evaluation.lm_eval_utility.lm_eval_point`) adds its numbers to `before` and `after`.

    >>> from hf_immunize.data.toy import make_safety_world
    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> w = make_safety_world(n_weapons=8)
    >>> cfg = AttackConfig(n_samples=20, max_steps=2, learning_rate=1e-3, max_new_tokens=4)
    >>> r = run_attack(tiny_causal_lm(), tiny_tokenizer(), cfg, w.attack_harmful, w.attack_benign, w.eval_harmful)
    >>> sorted(r.after)[:2], r.config["prompt_format"]
    (['examples', 'harmful_content'], 'raw')
    """
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from hf_immunize.utils import sft_config

    if not isinstance(config, AttackConfig):
        raise TypeError(f"`config` must be an AttackConfig, got {type(config).__name__}.")
    if "prompt" not in eval_harmful.column_names:
        raise ValueError(f"`eval_harmful`: missing column 'prompt'; found {eval_harmful.column_names}.")
    eval_harmful = cap_rows(eval_harmful, config.max_eval_samples)
    eval_benign = cap_rows(eval_benign, config.max_eval_samples)
    if isinstance(over_refusal_prompts, Dataset):
        over_refusal_prompts = cap_rows(over_refusal_prompts, config.max_eval_samples)
    elif over_refusal_prompts:
        over_refusal_prompts = list(over_refusal_prompts)[: config.max_eval_samples]
    prompt_format = resolve_prompt_format(
        tokenizer, config.prompt_format, datasets=[eval_harmful, harmful_dataset], model=model
    )
    data = build_attack_dataset(harmful_dataset, benign_dataset, config.n_samples, config.harmful_ratio, config.seed)
    data = to_attack_rows(data, prompt_format)
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
            prompt_format=prompt_format,
            progress=progress and full,
        )

    before = measure(attacked, full=True)
    if utility_eval is not None:
        before.update(utility_eval(attacked, tokenizer))
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
            disable_tqdm=not progress,
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
    if utility_eval is not None:
        after.update(utility_eval(attacked, tokenizer))
    curve.append({"step": trainer.state.global_step, **_curve_point(after)})
    return AttackResult(
        config={**asdict(config), "prompt_format": prompt_format},
        before=before,
        after=after,
        curve=curve,
        train_loss=float(output.training_loss),
        seconds=round(time.time() - start, 2),
    )


def _curve_point(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in ("harmful_score", "harmful_content", "harmful_loss")}
