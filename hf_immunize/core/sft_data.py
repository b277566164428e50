"""What TRL's SFT preparation reads, checked before it runs, so that a bad row gets an error a user can act on.

`SFTTrainer._prepare_dataset` accepts, by the first row: pre-tokenized rows (`input_ids`, optional `labels`), any row
when a `formatting_func` is given, ShareGPT-style `conversations` (`from`/`value` turns, converted to `messages`),
`messages` (role/content turns), prompt-completion rows (plain strings or conversational lists), and plain text in the
column named by `dataset_text_field` (`"text"` by default). Anything else fails inside `datasets.map` with a
`KeyError`; a `None` string fails with `AttributeError: 'NoneType' object has no attribute 'endswith'`.

:func:`sft_layout` names the layout SFT will read (or explains why there is none), :func:`check_sft_rows` finds rows
SFT cannot tokenize (naming the dataset, column and rows), :func:`check_learnable` refuses a prepared dataset in which
no row has a single token to learn (e.g. every completion empty), which would otherwise train on a loss of exactly 0.
"""

from __future__ import annotations

__all__ = ["check_learnable", "check_sft_rows", "sft_layout"]

_SHOWN_ROWS = 5  # bad rows named in an error message


def sft_layout(dataset, args, formatting_func=None, name: str = "train") -> str:
    """The layout of `dataset` as SFT's preparation reads it; `ValueError` naming the columns when SFT cannot.

    >>> from datasets import Dataset
    >>> from trl import SFTConfig
    >>> args = SFTConfig(output_dir="out", use_cpu=True, bf16=False)
    >>> sft_layout(Dataset.from_dict({"conversations": [[{"from": "human", "value": "hi"}]]}), args)
    'conversations'
    """
    from trl.data_utils import is_conversational, is_conversational_from_value

    columns = list(dataset.column_names)
    if "input_ids" in columns:
        return "input_ids"
    if formatting_func is not None:
        return "formatting_func"
    if len(dataset) == 0:
        raise ValueError(f"the {name} dataset is empty.")
    first = dataset[0]
    if is_conversational_from_value(first):
        return "conversations"
    if "prompt" in columns:
        if "completion" not in columns:
            raise ValueError(
                f"the {name} dataset has a `prompt` column but no `completion` column (columns: {columns}); SFT "
                "trains on prompt-completion pairs. Add the answers as `completion`, or put whole texts in "
                f"`{args.dataset_text_field}`."
            )
        return "prompt-completion"
    if "messages" in columns and is_conversational(first):
        return "messages"
    if args.dataset_text_field in columns:
        return "text"
    raise ValueError(
        f"the {name} dataset has columns {columns}, none of the layouts SFT reads: `{args.dataset_text_field}` "
        "(the `dataset_text_field`), `messages` (role/content turns), `conversations` (from/value turns), "
        "`prompt` + `completion`, or pre-tokenized `input_ids`; or pass a `formatting_func`. Rename a column, or "
        "set `dataset_text_field` to the column that holds the text."
    )


def _bad_rows(values, check) -> list[int]:
    return [i for i, value in enumerate(values) if not check(value)]


def _describe(rows: list[int], total: int) -> str:
    shown = ", ".join(str(i) for i in rows[:_SHOWN_ROWS]) + (", ..." if len(rows) > _SHOWN_ROWS else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown} ({len(rows)} of {total})"


def _is_turns(value, role_key: str, content_key: str) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(t, dict) and isinstance(t.get(content_key), str) and t.get(role_key) for t in value)
    )


def check_sft_rows(dataset, args, formatting_func=None, name: str = "train") -> str:
    """Checks every row SFT will tokenize; returns the layout (see :func:`sft_layout`).

    A `None` or non-string text, a conversation with a turn whose content is not a string, raises a `ValueError` that
    names the dataset, the column and the rows, and says how to fix them.
    """
    layout = sft_layout(dataset, args, formatting_func, name)
    fix = "fill those rows or drop them (`dataset.filter(...)`)"
    if layout in ("prompt-completion", "text"):
        for column in ("prompt", "completion") if layout == "prompt-completion" else (args.dataset_text_field,):
            values = dataset[column]
            conversational = any(isinstance(v, list) for v in values[:1])
            if conversational:
                bad = _bad_rows(values, lambda v: _is_turns(v, "role", "content"))
                what = "a list of {role, content} turns with string contents"
            else:
                bad = _bad_rows(values, lambda v: isinstance(v, str))
                what = "a string"
            if bad:
                example = values[bad[0]]
                raise ValueError(
                    f"the {name} dataset: column `{column}` is not {what} in {_describe(bad, len(values))}, e.g. "
                    f"row {bad[0]} holds {example!r}. SFT cannot tokenize it; {fix}."
                )
    elif layout in ("messages", "conversations"):
        column = layout
        role, content = ("role", "content") if layout == "messages" else ("from", "value")
        values = dataset[column]
        bad = _bad_rows(values, lambda v: _is_turns(v, role, content))
        if bad:
            raise ValueError(
                f"the {name} dataset: column `{column}` is not a non-empty list of {{{role}, {content}}} turns with "
                f"string contents in {_describe(bad, len(values))}, e.g. row {bad[0]} holds {values[bad[0]]!r}; "
                f"{fix}."
            )
    return layout


def check_learnable(prepared, name: str, layout: str, args) -> None:
    """Refuses a prepared dataset whose rows hold no label a causal LM can learn (`labels[1:]` all -100).

    The first token of a row is never a target (nothing predicts it), so a row of empty text reduced to a lone EOS
    teaches nothing: a set made only of such rows would train with a loss of exactly 0.
    """
    if "labels" not in prepared.column_names:
        return
    for labels in prepared["labels"]:
        if any(label != -100 for label in labels[1:]):
            return
    where = {
        "prompt-completion": "the `completion` column is empty",
        "text": f"the `{args.dataset_text_field}` column is empty",
        "messages": "the conversation is empty",
        "conversations": "the conversation is empty",
    }.get(layout, "the row is empty")
    raise ValueError(
        f"the {name} dataset has no token to learn after SFT's preparation: in all of its {len(prepared)} rows "
        f"either {where} or everything was truncated away (max_length={args.max_length!r}), so its loss would be "
        "exactly 0. Fill the rows with the text to train on, or drop the empty ones."
    )
