"""The bios world's arms (`hf-immunize bench --world bios`): the base model, plain fine-tuning, MLAC, random init."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from hf_immunize.bench.bios_report import ARMS
from hf_immunize.bench.results import save

__all__ = [
    "Settings",
    "base_model",
    "desired_accuracy",
    "pretrain_gender_aware",
    "shared_base",
    "train_arm",
    "train_mlac",
    "train_pretrained",
]


@dataclass
class Settings:
    """Everything that decides the numbers; stored next to them in the JSON."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    # world
    n_bios: int = 2000
    scrub_pronouns: bool = True
    # model (BERT-tiny is hidden 128, 2 layers, 2 heads; halved for CPU)
    hidden_size: int = 64
    num_layers: int = 2
    max_length: int = 128
    # Optional stage 0, the analog of BERT's pretraining: the base trunk is first trained on profession x gender
    # (2 x 8 classes) so that gender is already easy to read from it, then gets a fresh 8-way head. 0 = the base is
    # the randomly initialised tiny model, which knows nothing about gender.
    pretrain_gender_steps: int = 0
    # training, identical for every trained arm
    train_steps: int = 300
    batch_size: int = 20  # the release's outer batch [code]
    learning_rate: float = 1e-3  # a from-scratch tiny model needs more than BERT's fine-tuning lr of 1e-5
    # MLAC
    inner_steps: int = 16
    meta_gradient: str = "second_order"
    truncation_steps: int | None = None
    inner_batch_sizes: list[int] = field(default_factory=lambda: [12, 24, 48])
    learn_inner_learning_rate: bool = True
    adapted_loss_weight: float = 0.0  # c, the paper's main run
    head_adjusted_loss_weight: float = 1.0  # e
    grad_norm_weight: float = 0.0  # d
    # attacker
    # attacker (the headline's: n = 200 only, both step counts, the whole grid of 16 points at most)
    attack_ns: list[int] = field(default_factory=lambda: [200])
    attack_steps: list[int] = field(default_factory=lambda: [150, 600])
    attack_batch_sizes: list[int] = field(default_factory=lambda: [24])
    attack_lr_range: list[float] = field(default_factory=lambda: [1e-5, 1e-2])
    attack_lr_grid: int = 4
    attack_budget: int = 16
    # Trials in a row without improvement that stop the search. The grid is visited in a seeded random order, so a
    # patience below the grid size can stop before the one setting that works is tried (docs/mlac.md, "Spread").
    attack_patience: int = 8
    attack_repeats: int = 3
    # Steps between the MLAC training-log points (logging only; the training is the same for any value).
    log_every: int = 30


def base_model(settings: Settings, seed: int, num_labels: int):
    from hf_immunize.testing import tiny_encoder_classifier

    return tiny_encoder_classifier(
        num_labels=num_labels,
        hidden_size=settings.hidden_size,
        num_layers=settings.num_layers,
        max_position_embeddings=max(128, settings.max_length),
        seed=seed,
    )


def shared_base(settings: Settings, seed: int, world, tokenizer, work: str):
    """The start every trained arm shares: the random tiny model, or its gender-aware pretraining (stage 0)."""
    if settings.pretrain_gender_steps:
        return pretrain_gender_aware(settings, seed, world, tokenizer, work)
    return base_model(settings, seed, len(world.professions))


def pretrain_gender_aware(settings: Settings, seed: int, world, tokenizer, output_dir: str):
    """Stage 0: train a 2P-way classifier on profession x gender, then reload its trunk under a fresh P-way head."""
    from transformers import AutoModelForSequenceClassification, PrinterCallback, Trainer, TrainingArguments

    from hf_immunize.data.tokenize import PadCollator

    classes = len(world.professions)
    joint = base_model(settings, seed, 2 * classes)
    rows = world.train.map(lambda r: {"label": 2 * r["profession"] + r["gender"]})
    tokenized = rows.map(
        lambda rows: tokenizer(rows["text"], truncation=True, max_length=settings.max_length), batched=True
    ).select_columns(["input_ids", "attention_mask", "label"])
    args = {**_common_args(settings, seed, output_dir), "max_steps": settings.pretrain_gender_steps}
    trainer = Trainer(
        model=joint,
        args=TrainingArguments(**args),
        train_dataset=tokenized,
        data_collator=PadCollator(tokenizer.pad_token_id),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    path = Path(output_dir) / "gender_aware_base"
    joint.save_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the fresh P-way head
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=classes, ignore_mismatched_sizes=True, attn_implementation="eager"
        )


def _common_args(settings: Settings, seed: int, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        max_steps=settings.train_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        max_grad_norm=10.0,
        seed=seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )


def train_pretrained(model, tokenizer, train, settings: Settings, seed: int, output_dir: str):
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from hf_immunize.data.tokenize import PadCollator

    columns = ["input_ids", "attention_mask", "label"]
    tokenized = train.map(
        lambda rows: tokenizer(rows["text"], truncation=True, max_length=settings.max_length), batched=True
    ).select_columns(columns)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_common_args(settings, seed, output_dir)),
        train_dataset=tokenized,
        data_collator=PadCollator(tokenizer.pad_token_id),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return model, {}


def train_mlac(model, tokenizer, train, harmful, settings: Settings, seed: int, output_dir: str, inner_steps: int):
    from transformers import PrinterCallback

    from hf_immunize import MLACConfig, MLACTrainer

    args = MLACConfig(
        **{**_common_args(settings, seed, output_dir), "logging_strategy": "steps"},
        logging_steps=max(1, settings.log_every),
        inner_steps=inner_steps,
        meta_gradient=settings.meta_gradient,
        truncation_steps=settings.truncation_steps,
        inner_batch_sizes=settings.inner_batch_sizes,
        learn_inner_learning_rate=settings.learn_inner_learning_rate,
        adapted_loss_weight=settings.adapted_loss_weight,
        head_adjusted_loss_weight=settings.head_adjusted_loss_weight,
        grad_norm_weight=settings.grad_norm_weight,
        max_length=settings.max_length,
    )
    trainer = MLACTrainer(
        model=model, args=args, train_dataset=train, harmful_dataset=harmful, processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    history = [h for h in trainer.state.log_history if "mlac/desired_loss" in h]
    keys = ("mlac/desired_loss", "mlac/harmful_loss_end", "mlac/head_adjusted_loss", "mlac/harmful_accuracy_end")
    log = {k: [round(h[k], 4) for h in history if k in h] for k in (*keys, "mlac/inner_lr")}
    return model, {"training_log": log}


@torch.no_grad()
def desired_accuracy(model, tokenizer, dataset, max_length: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(dataset), 64):
        rows = dataset[start : start + 64]
        enc = tokenizer(list(rows["text"]), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        logits = model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}).logits  # (B, C)
        correct += int((logits.argmax(-1) == torch.tensor(list(rows["label"]))).sum())
    return correct / len(dataset)


def train_arm(arm: str, base, tokenizer, world, settings: Settings, seed: int, work: str, model_dir: Path | None):
    """One arm's model from the shared base (`model_dir`: reuse a model this arm and settings trained before)."""
    from transformers import AutoModelForSequenceClassification

    from hf_immunize.data.toy import BiosWorld
    from hf_immunize.evaluation.classifier_attack import random_init_like
    from hf_immunize.utils import detached_copy

    if arm == "random_init":
        return random_init_like(base, seed=1000 + seed), {}  # != the build seed (that would give the same weights)
    training = {k: v for k, v in asdict(settings).items() if not k.startswith("attack_")}
    training.pop("seeds"), training.pop("arms")
    cached = model_dir / f"seed{seed}" / arm if model_dir is not None else None
    if cached is not None and (cached / "bench_arm.json").is_file():
        record = json.loads((cached / "bench_arm.json").read_text())
        if record["settings"] == training:
            model = AutoModelForSequenceClassification.from_pretrained(
                cached, attn_implementation=record["attn_implementation"]
            )
            return model, {**record["extra"], "model_reused_from": str(cached)}
    model = detached_copy(base)
    if arm == "pretrained":
        model, extra = train_pretrained(model, tokenizer, world.train, settings, seed, work)
    else:
        harmful = BiosWorld.with_label(world.train, "gender")
        steps = settings.inner_steps if arm == "mlac" else 0
        model, extra = train_mlac(model, tokenizer, world.train, harmful, settings, seed, work, steps)
    if cached is not None:
        model.save_pretrained(cached)
        record = {"settings": training, "extra": extra, "attn_implementation": model.config._attn_implementation}
        save(record, cached / "bench_arm.json")
    return model, extra
