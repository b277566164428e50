"""Saved models as the measurement protocols load them: a folder of full weights or a PEFT adapter, its tokenizer,
its task and the method it was trained with."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hf_immunize.core.hub import check_model_dir

from .formatting import read_run_record

__all__ = ["load_saved_model", "load_saved_tokenizer", "model_name_of", "saved_method", "task_of"]


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


def task_of(path) -> str:
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


def saved_method(path) -> str | None:
    """The hf_immunize method a saved model was trained with (its `hf_immunize.json`, else its card's tags)."""
    from hf_immunize.core.card_text import canonical_method

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


def model_name_of(model) -> str:
    """A model's name for a report: its folder's name (never the path)."""
    if isinstance(model, str | os.PathLike):
        return Path(model).name
    return Path(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__).name
