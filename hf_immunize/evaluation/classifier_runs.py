"""One few-shot classifier attack (MLAC's attacker, one setting): its config, its result, and the run itself. The
search over settings is :mod:`.classifier_search`; both are importable from :mod:`.classifier_attack`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from .classifier_heads import _check_int, _install_fresh_head, _load_or_copy, _resolve_tokenizer

__all__ = [
    "CLASSIFIER_ATTACK_MODES",
    "SOLVE_THRESHOLDS",
    "ClassifierAttackConfig",
    "ClassifierAttackResult",
    "attack_classifier",
]

CLASSIFIER_ATTACK_MODES = ("linear_probe", "full")
# Accuracy levels for the paper's "solve datapoints" log: examples seen before first reaching each one.
SOLVE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Attribute names under which Hugging Face sequence classifiers keep their head (BERT/DistilBERT/RoBERTa: classifier,
# Llama/Qwen2/GPT-2: score, DeBERTa-v2 and others: classifier, BART/T5: classification_head).
_HEAD_ATTRIBUTES = ("classifier", "score", "classification_head", "head")


@dataclass
class ClassifierAttackConfig:
    r"""
    One few-shot attack: a fresh head, `steps` Adam steps on `n_examples` rows, accuracy tracked on the eval set.

    Defaults are small enough for a CPU; the paper's values are given per field ([code] = read in the official source,
    see `reference/mlac.md` §6).

    Parameters:
        n_examples (`int`, *optional*, defaults to `100`):
            Size of the attacker's labelled subset, drawn from the training pool with `seed`. The paper uses
            {20, 50, 100, 200} [code].
        learning_rate (`float`, *optional*, defaults to `1e-3`):
            Adam learning rate. The paper searches it log-uniformly in [1e-5, 1e-2] [code].
        steps (`int`, *optional*, defaults to `200`):
            Optimizer steps. The paper searches {100, 200, ..., 1000} [code]; 200 keeps a CPU run to seconds on the
            tiny models.
        batch_size (`int`, *optional*, defaults to `16`):
            Training minibatch size; clamped to `n_examples` (a batch never holds the same row twice in one pass).
        mode (`str`, *optional*, defaults to `"full"`):
            `"linear_probe"`: the trunk is frozen and only the new head trains; `"full"`: everything trains. The paper
            searches both [code].
        eval_every (`int`, *optional*, defaults to `50`):
            Steps between accuracy evaluations (also at step 0 and after the last step). Paper: 50 [code].
        max_length (`int`, *optional*, defaults to `128`):
            Truncation length in tokens. The paper truncates bios at 200 [code]; 128 fits the position table of the
            tiny test models, and bios-world texts are far shorter.
        seed (`int`, *optional*, defaults to `0`):
            Drives the subset, the head's initial weights, the batch order and dropout. Same seed, same result.
        num_labels (`int`, *optional*, defaults to `2`):
            Outputs of the new head: the number of classes of the blocked task (2 for gender).
        eval_batch_size (`int`, *optional*, defaults to `64`):
            Batch size for evaluation only (no effect on the result).
        head_bias (`bool`, *optional*, defaults to `False`):
            Give the new head a bias. The paper's head has none [code].
    """

    n_examples: int = field(default=100, metadata={"help": "Size of the attacker's labelled subset (paper: 20-200)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate (paper: searched 1e-5..1e-2)."})
    steps: int = field(default=200, metadata={"help": "Adam steps (paper: searched in 100..1000)."})
    batch_size: int = field(default=16, metadata={"help": "Training minibatch size, clamped to n_examples."})
    mode: str = field(default="full", metadata={"help": "'linear_probe' (trunk frozen) or 'full' (all trainable)."})
    eval_every: int = field(default=50, metadata={"help": "Steps between evaluations (paper: 50)."})
    max_length: int = field(default=128, metadata={"help": "Truncation length in tokens (paper: 200)."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset, head init, batch order and dropout."})
    num_labels: int = field(default=2, metadata={"help": "Classes of the blocked task (outputs of the new head)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size (does not change results)."})
    head_bias: bool = field(default=False, metadata={"help": "Give the fresh head a bias (paper: no bias)."})

    def __post_init__(self):
        _check_int("n_examples", self.n_examples, 1)
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, int | float):
            raise ValueError(f"`learning_rate` must be a positive number, got {self.learning_rate!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"`learning_rate` must be a finite number > 0, got {self.learning_rate!r}.")
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        if self.mode not in CLASSIFIER_ATTACK_MODES:
            raise ValueError(f"`mode` must be one of {CLASSIFIER_ATTACK_MODES}, got {self.mode!r}.")
        _check_int("eval_every", self.eval_every, 1)
        _check_int("max_length", self.max_length, 1)
        _check_int("seed", self.seed, 0)
        _check_int("num_labels", self.num_labels, 2)
        _check_int("eval_batch_size", self.eval_batch_size, 1)
        if not isinstance(self.head_bias, bool):
            raise ValueError(f"`head_bias` must be a bool, got {self.head_bias!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClassifierAttackResult:
    """What one attack run measured.

    Attributes:
        best_accuracy: the maximum of `curve` (the paper scores a run by its best accuracy).
        final_accuracy: accuracy after the last step.
        best_step: the first step at which `best_accuracy` was reached.
        curve: `(step, accuracy)` at step 0 (fresh head), every `eval_every` steps, and after the last step.
        solve_examples: threshold -> training examples seen (`step * batch_size`) before the curve first reached
            accuracy >= threshold, or `None` if it never did; thresholds are :data:`SOLVE_THRESHOLDS`.
        majority_rate: share of the most common label in the eval set (the floor to quote beside every accuracy).
        train_indices: rows of the training pool the attacker drew, in draw order.
        config: the :class:`ClassifierAttackConfig` as a dict (`batch_size` as given, before clamping).
        model: the attacked model, only when `return_model=True` (not part of :meth:`to_dict`).
    """

    best_accuracy: float
    final_accuracy: float
    best_step: int
    curve: list[tuple[int, float]]
    solve_examples: dict[float, int | None]
    majority_rate: float
    train_indices: list[int]
    config: dict[str, Any]
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the model left out; `solve_examples` keys become strings like `"0.5"`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        out["curve"] = [list(point) for point in self.curve]
        out["solve_examples"] = {str(k): v for k, v in self.solve_examples.items()}
        return out


def _check_columns(ds: Dataset, name: str, text_column: str, label_column: str) -> None:
    if not isinstance(ds, Dataset):
        raise TypeError(f"`{name}` must be a datasets.Dataset, got {type(ds)}.")
    missing = [c for c in (text_column, label_column) if c not in ds.column_names]
    if missing:
        raise ValueError(f"`{name}` lacks the column(s) {missing}; it has {ds.column_names}.")
    if len(ds) == 0:
        raise ValueError(f"`{name}` is empty.")


def _check_labels(labels: list, name: str, num_labels: int) -> None:
    bad = [y for y in labels if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < num_labels]
    if bad:
        raise ValueError(
            f"`{name}` has labels outside 0..{num_labels - 1} (num_labels={num_labels}), e.g. {bad[:5]}; "
            "set `num_labels` to the blocked task's class count, or relabel the data."
        )


def _check_inputs(config, train_pool: Dataset, eval_set: Dataset, text_column: str, label_column: str) -> None:
    """Every data check, run before any model is built or trained."""
    _check_columns(train_pool, "train_pool", text_column, label_column)
    _check_columns(eval_set, "eval_set", text_column, label_column)
    if config.n_examples > len(train_pool):
        raise ValueError(
            f"`n_examples` ({config.n_examples}) is larger than the training pool ({len(train_pool)} rows): "
            "lower `n_examples` or pass a larger `train_pool`."
        )
    _check_labels(list(eval_set[label_column]), "eval_set", config.num_labels)


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}  # each (N, T)


def _take(encoded: dict[str, torch.Tensor], rows: torch.Tensor, left_padded: bool, device) -> dict[str, torch.Tensor]:
    """Rows of a padded encoding, trimmed to the longest of them (the whole set was padded to its own longest)."""
    batch = {k: v[rows] for k, v in encoded.items()}  # each (B, T)
    length = int(batch["attention_mask"].sum(dim=1).max())
    window = slice(-length, None) if left_padded else slice(0, length)
    return {k: v[:, window].to(device) for k, v in batch.items()}  # each (B, T_batch)


def _majority_rate(labels: list[int]) -> float:
    counts: dict[int, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    return max(counts.values()) / len(labels)


@torch.no_grad()
def _accuracy(model, encoded, labels: torch.Tensor, batch_size: int, left_padded: bool, device) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(labels)))
        logits = model(**_take(encoded, rows, left_padded, device)).logits  # (B, C)
        correct += int((logits.argmax(dim=-1).cpu() == labels[rows]).sum())
    model.train(was_training)
    return correct / len(labels)


def _solve_examples(curve: list[tuple[int, float]], batch_size: int) -> dict[float, int | None]:
    solved: dict[float, int | None] = {}
    for threshold in SOLVE_THRESHOLDS:
        step = next((s for s, acc in curve if acc >= threshold), None)
        solved[threshold] = None if step is None else step * batch_size
    return solved


def attack_classifier(
    model_or_path,
    tokenizer,
    config: ClassifierAttackConfig,
    train_pool: Dataset,
    eval_set: Dataset,
    *,
    text_column: str = "text",
    label_column: str = "label",
    return_model: bool = False,
) -> ClassifierAttackResult:
    """Runs one few-shot attack on a copy of the model and returns its accuracy curve.

    Steps: copy the model (or load it from the path); replace its classification head with a fresh, bias-free,
    seeded random Linear of `config.num_labels` outputs; draw `config.n_examples` rows of `train_pool` with
    `config.seed`; take `config.steps` Adam steps on minibatches cycling through the subset (reshuffled every pass),
    training the head only (`"linear_probe"`) or everything (`"full"`); measure accuracy on all of `eval_set` at
    step 0, every `eval_every` steps and at the end. Deterministic for a seed; the global RNG state is restored.

    Args:
        model_or_path: a sequence-classification model (never modified) or a path to one.
        tokenizer: its tokenizer (needs a pad token); `None` loads one from the model's directory.
        config: the attack's hyperparameters.
        train_pool: rows the attacker may train on (the paper: val1); `n_examples` of them are used.
        eval_set: rows it is scored on (the paper: val2); never trained on.
        text_column, label_column: column names; labels must be integers in `0..num_labels-1`.
        return_model: also return the attacked model (e.g. to inspect which weights moved).

    >>> from hf_immunize.data.toy import BiosWorld, make_bios_world
    >>> from hf_immunize.testing import tiny_encoder_classifier
    >>> world = make_bios_world(n=200, professions=["nurse", "attorney"])
    >>> pool, test = BiosWorld.with_label(world.train, "gender"), BiosWorld.with_label(world.val2, "gender")
    >>> config = ClassifierAttackConfig(n_examples=20, steps=10, eval_every=5, num_labels=2)
    >>> result = attack_classifier(tiny_encoder_classifier(num_labels=2), None, config, pool, test)
    >>> [step for step, _ in result.curve]
    [0, 5, 10]
    >>> result.best_accuracy == max(acc for _, acc in result.curve)
    True
    """
    if not isinstance(config, ClassifierAttackConfig):
        raise TypeError(f"`config` must be a ClassifierAttackConfig, got {type(config)}.")
    _check_inputs(config, train_pool, eval_set, text_column, label_column)
    tokenizer = _resolve_tokenizer(tokenizer, model_or_path)
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set `tokenizer.pad_token` (e.g. to the eos token) first.")

    generator = torch.Generator().manual_seed(config.seed)
    subset = torch.randperm(len(train_pool), generator=generator)[: config.n_examples]  # (n,)
    train_indices = subset.tolist()
    rows = train_pool.select(train_indices)
    train_labels_list = list(rows[label_column])
    _check_labels(train_labels_list, "train_pool", config.num_labels)
    eval_labels_list = list(eval_set[label_column])

    model = _load_or_copy(model_or_path)
    device = next(model.parameters()).device
    head = _install_fresh_head(model, config, generator)
    if config.mode == "linear_probe":
        head_params = {id(p) for p in head.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head_params)
    else:
        for p in model.parameters():
            p.requires_grad_(True)

    left_padded = getattr(tokenizer, "padding_side", "right") == "left"
    train_enc = _encode(tokenizer, rows[text_column], config.max_length)  # each (n, T)
    eval_enc = _encode(tokenizer, eval_set[text_column], config.max_length)  # each (N_eval, T)
    train_labels = torch.tensor(train_labels_list, dtype=torch.long)  # (n,)
    eval_labels = torch.tensor(eval_labels_list, dtype=torch.long)  # (N_eval,)
    batch_size = min(config.batch_size, config.n_examples)

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    curve: list[tuple[int, float]] = []

    def evaluate(step: int) -> None:
        curve.append((step, _accuracy(model, eval_enc, eval_labels, config.eval_batch_size, left_padded, device)))

    # Dropout draws from the global RNG: seed it for determinism, and give the caller its old state back after.
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.default_generator.manual_seed(config.seed)  # not torch.manual_seed: it would reseed every GPU too
        if fork_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(config.seed)
        model.train()
        evaluate(0)
        order = torch.empty(0, dtype=torch.long)
        for step in range(1, config.steps + 1):
            if len(order) < batch_size:  # start a new pass over the subset
                order = torch.randperm(config.n_examples, generator=generator)
            batch_rows, order = order[:batch_size], order[batch_size:]  # (B,), (rest,)
            logits = model(**_take(train_enc, batch_rows, left_padded, device)).logits  # (B, C)
            loss = F.cross_entropy(logits.float(), train_labels[batch_rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % config.eval_every == 0 or step == config.steps:
                evaluate(step)
    model.eval()

    best_step, best_accuracy = max(curve, key=lambda point: (point[1], -point[0]))
    return ClassifierAttackResult(
        best_accuracy=best_accuracy,
        final_accuracy=curve[-1][1],
        best_step=best_step,
        curve=curve,
        solve_examples=_solve_examples(curve, batch_size),
        majority_rate=_majority_rate(eval_labels_list),
        train_indices=train_indices,
        config=config.to_dict(),
        model=model if return_model else None,
    )
