"""Tokenizing and padding for trainers built on `transformers.Trainer` (TRL's SFTTrainer does its own)."""

from __future__ import annotations

import torch
from datasets import Dataset

__all__ = ["PadCollator", "pad_token_id_of", "tokenize_rows"]


def pad_token_id_of(processing_class, model) -> int:
    """The tokenizer's pad id, else the model config's, else the EOS id (padding is masked either way).

    Raises `ValueError` when there is none of them: padding with an arbitrary id would hide a misconfigured
    tokenizer.
    """
    for candidate in (
        getattr(processing_class, "pad_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
        getattr(processing_class, "eos_token_id", None),
    ):
        if candidate is not None:
            return int(candidate)
    raise ValueError(
        f"the tokenizer ({type(processing_class).__name__}) has no pad token, and neither the model config nor the "
        "tokenizer gives one to fall back on (no `pad_token_id`, no EOS): set `tokenizer.pad_token` first."
    )


class PadCollator:
    """Pads `input_ids` (pad id), `labels` (-100) and masks (0) to the longest row; `label` becomes `labels`."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in rows[0]:
            name = "labels" if key in ("label", "label_ids") else key
            values = [row[key] for row in rows]
            if not isinstance(values[0], list | tuple | torch.Tensor) or torch.as_tensor(values[0]).dim() == 0:
                batch[name] = torch.as_tensor(values)  # (B,)
                continue
            pad = self.pad_token_id if key == "input_ids" else (-100 if name == "labels" else 0)
            width = max(len(v) for v in values)
            batch[name] = torch.tensor([list(v) + [pad] * (width - len(v)) for v in values])  # (B, T)
        return batch


def tokenize_rows(dataset, tokenizer, task: str, max_length: int, name: str):
    """Raw rows → `input_ids`, `attention_mask`, `labels` for `task` (already tokenized datasets pass through).

    - `"classification"`: `text` + `label` (or `labels`) → token ids and the class label;
    - `"causal_lm"`: `prompt` + `completion` → loss on the completion (and EOS) only, or `text` → loss on every token.
    Rows are cut at `max_length`; `name` is the argument named in errors.
    """
    if dataset is None or not isinstance(dataset, Dataset) or "input_ids" in dataset.column_names:
        return dataset
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty.")
    columns = set(dataset.column_names)
    if tokenizer is None:
        raise ValueError(f"`{name}` holds raw text ({sorted(columns)}): pass `processing_class` (the tokenizer).")
    if task == "classification":
        label = "label" if "label" in columns else "labels"
        if "text" not in columns or label not in columns:
            raise ValueError(f"`{name}` needs `text` and `label` columns for a classifier, got {sorted(columns)}.")

        def encode(rows):
            out = tokenizer(rows["text"], truncation=True, max_length=max_length)
            return {**out, "labels": rows[label]}

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if {"prompt", "completion"} <= columns:

        def encode_pair(row):
            prompt = tokenizer(row["prompt"])["input_ids"]
            completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + eos
            ids = (prompt + completion)[:max_length]
            labels = ([-100] * len(prompt) + completion)[:max_length]
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

        return dataset.map(encode_pair, remove_columns=dataset.column_names)
    if "text" in columns:

        def encode_text(row):
            ids = (tokenizer(row["text"])["input_ids"] + eos)[:max_length]
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}

        return dataset.map(encode_text, remove_columns=dataset.column_names)
    raise ValueError(f"`{name}` needs `prompt`/`completion` or `text` columns for a causal LM, got {sorted(columns)}.")
