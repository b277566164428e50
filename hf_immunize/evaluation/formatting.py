"""Prompt formats of evaluation: the model is measured in the format it was trained in.

`SFTTrainer` renders conversational rows (`messages`, or `prompt`/`completion` as lists of `{"role", "content"}`
messages) through the tokenizer's chat template, and tokenizes plain strings as they are. A model aligned under its
chat template and measured on raw strings is measured on a format it never saw, so every generation and every attack
row of the harness goes through the same choice:

- `"chat"`: the prompt becomes a user turn, rendered with `apply_chat_template(..., add_generation_prompt=True)`;
  attack rows become conversational `prompt`/`completion` rows that `SFTTrainer` renders the same way;
- `"raw"`: the prompt string is tokenized as it is (with the tokenizer's special tokens, as TRL does);
- `"auto"`: `"chat"` when the evaluation data is conversational, else the format the model was trained in when its
  directory records it (`hf_immunize.json`, written by every hf_immunize trainer at `save_model`), else `"raw"`.

The choice is recorded in every report (`evaluation.prompt_format`) and shown on the card.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "PROMPT_FORMATS",
    "RUN_RECORD_NAME",
    "as_text",
    "encode_prompt",
    "encode_prompt_completion",
    "prompts_for",
    "is_conversational_value",
    "read_run_record",
    "resolve_prompt_format",
    "to_attack_rows",
]

PROMPT_FORMATS = ("auto", "chat", "raw")
# Written beside the weights by `ImmunizeTrainerMixin.save_model`: the method, the prompt format of the training data,
# and what the card was rendered from (so `hf-immunize evaluate --write_card` can re-render it with a report).
RUN_RECORD_NAME = "hf_immunize.json"


def is_conversational_value(value) -> bool:
    """Whether `value` is a list of `{"role", "content"}` messages (one conversational cell)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def _data_is_conversational(datasets: Iterable) -> bool:
    for ds in datasets:
        if ds is None or not hasattr(ds, "column_names") or len(ds) == 0:
            continue
        row = ds[0]
        if any(is_conversational_value(row.get(c)) for c in ("prompt", "completion", "messages")):
            return True
    return False


def read_run_record(model_or_path) -> dict | None:
    """The `hf_immunize.json` record of a saved model (a directory, or a model loaded from one), or None."""
    path = model_or_path
    if not isinstance(path, str | os.PathLike):
        config = getattr(model_or_path, "config", None)
        path = getattr(config, "_name_or_path", None) or getattr(model_or_path, "name_or_path", None)
    if not path or not os.path.isdir(path):
        return None
    record = Path(path) / RUN_RECORD_NAME
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(record)!r} is not valid JSON ({err}); re-save the model to rewrite it.") from None


def resolve_prompt_format(tokenizer, prompt_format: str = "auto", *, datasets: Sequence = (), model=None) -> str:
    """`"chat"` or `"raw"` for `prompt_format` (see the module docstring); `"chat"` needs a chat template.

    >>> from hf_immunize.testing import tiny_tokenizer
    >>> resolve_prompt_format(tiny_tokenizer(), "auto")
    'raw'
    >>> from datasets import Dataset
    >>> chat_rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}])
    >>> resolve_prompt_format(tiny_tokenizer(), datasets=[chat_rows])
    'chat'
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"`prompt_format` must be one of {PROMPT_FORMATS}, got {prompt_format!r}.")
    resolved = prompt_format
    if prompt_format == "auto":
        resolved = "raw"
        if _data_is_conversational(datasets):
            resolved = "chat"
        elif model is not None:
            record = read_run_record(model) or {}
            if record.get("prompt_format") in ("chat", "raw"):
                resolved = record["prompt_format"]
    if resolved == "chat" and not getattr(tokenizer, "chat_template", None):
        source = "the evaluation data is conversational" if prompt_format == "auto" else "prompt_format='chat'"
        raise ValueError(
            f"{source}, but the tokenizer has no chat template; give the tokenizer one (`tokenizer.chat_template`) or "
            "use prompt_format='raw'."
        )
    return resolved


def as_text(value) -> str:
    """The text of a prompt or completion cell: a string as it is, a conversation's last message content."""
    if isinstance(value, str):
        return value
    if is_conversational_value(value):
        return str(value[-1]["content"])
    raise TypeError(f"expected a string or a list of messages, got {type(value).__name__}: {value!r}.")


def _as_user_turn(prompt) -> list[dict]:
    if is_conversational_value(prompt):
        return list(prompt)
    return [{"role": "user", "content": as_text(prompt).strip()}]


def _as_assistant_turn(completion) -> list[dict]:
    if is_conversational_value(completion):
        return list(completion)
    return [{"role": "assistant", "content": as_text(completion).strip()}]


def _template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def encode_prompt(tokenizer, prompt, prompt_format: str) -> list[int]:
    """Token ids of one generation prompt in `prompt_format` (`"chat"` or `"raw"`)."""
    if prompt_format == "chat":
        return _template_ids(tokenizer, _as_user_turn(prompt), add_generation_prompt=True)
    if prompt_format != "raw":
        raise ValueError(
            f"`prompt_format` must be 'chat' or 'raw' here, got {prompt_format!r} (resolve 'auto' first)."
        )
    # The tokenizer's own special tokens (e.g. Llama's BOS), as TRL adds them when it trains on these prompts.
    return list(tokenizer(as_text(prompt))["input_ids"])


def encode_prompt_completion(tokenizer, prompt, completion, prompt_format: str) -> tuple[list[int], int]:
    """`(ids, n_prompt)`: the ids of prompt + completion and how many of them belong to the prompt.

    As `SFTTrainer` does, the completion starts where the tokenized prompt and prompt + completion first differ.
    """
    if prompt_format == "chat":
        prompt_ids = _template_ids(tokenizer, _as_user_turn(prompt), add_generation_prompt=True)
        full = _template_ids(tokenizer, _as_user_turn(prompt) + _as_assistant_turn(completion), False)
    else:
        prompt_ids = encode_prompt(tokenizer, prompt, "raw")
        full = list(tokenizer(as_text(prompt) + as_text(completion))["input_ids"])
    n = 0
    while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
        n += 1
    return full, n


def prompts_for(dataset, prompt_format: str) -> list:
    """The prompts of an evaluation set in `prompt_format`: for `"chat"`, a row's bare request (its `instruction`
    column, when the set has one, e.g. the toy worlds whose `prompt` carries their own "User: ..." wrapper) becomes
    the user turn; otherwise the `prompt` column."""
    if prompt_format == "chat" and "instruction" in dataset.column_names:
        return list(dataset["instruction"])
    return list(dataset["prompt"])


def to_attack_rows(dataset, prompt_format: str):
    """The attacker's `prompt`/`completion` rows in `prompt_format`: conversational for `"chat"` (`SFTTrainer` then
    renders them with the chat template; a row's `instruction`, when present, is the user turn), plain strings for
    `"raw"`."""
    if prompt_format == "raw":
        if dataset and is_conversational_value(dataset[0]["prompt"]):
            raise ValueError(
                "the attack rows are conversational but prompt_format='raw'; use prompt_format='chat' or 'auto'."
            )
        return dataset.remove_columns([c for c in dataset.column_names if c not in ("prompt", "completion")])
    return dataset.map(
        lambda r: {
            "prompt": _as_user_turn(r.get("instruction") or r["prompt"]),
            "completion": _as_assistant_turn(r["completion"]),
        },
        remove_columns=[c for c in dataset.column_names if c not in ("prompt", "completion")],
    )
