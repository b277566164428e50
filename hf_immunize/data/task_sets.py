"""Task datasets: classification (Bias in Bios, SST-2 / AG News label tasks), instruction tuning (Alpaca, Dolly,
safety-tuned-llamas), unlearning QA (TOFU) and math (GSM8K)."""

from __future__ import annotations

from typing import Any

from datasets import ClassLabel, Dataset, List, Value

from .sources import (
    _BIOS_GENDERS,
    _OPTIONAL_STR,
    _STRING,
    BIOS_PROFESSIONS,
    Source,
    _join,
    _map,
    load_source,
    require_columns,
)

__all__ = ["load_bias_in_bios", "load_gsm8k", "load_instructions", "load_label_task", "load_tofu"]


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _label_index(value: Any, names: list[str], column: str, label: str) -> int:
    """Index of a label given as an int or as a name from `names` (case and space/underscore insensitive)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return value
        raise ValueError(f"{label}: column {column!r} has label {value!r} out of range 0..{len(names) - 1}")
    if isinstance(value, str):
        lookup = [_norm(n) for n in names]
        if _norm(value) in lookup:
            return lookup.index(_norm(value))
    raise ValueError(f"{label}: column {column!r} has unknown label {value!r}; expected one of {names}")


def load_bias_in_bios(
    source: Source = "LabHC/bias_in_bios", split: str = "train", *, task: str = "profession"
) -> Dataset:
    """Bias in Bios as `text, label, profession, gender` (ints; `label` is the profession or the gender per `task`).

    Labels may be ints (Hub: profession 0-27 in `BIOS_PROFESSIONS` order, gender 0=male 1=female) or strings
    (`"nurse"`, `"Female"`). A local source may be a directory of CSV files, a list of files or a glob.

    >>> from datasets import Dataset
    >>> row = {"hard_text": "She is a nurse.", "profession": "nurse", "gender": "Female"}
    >>> load_bias_in_bios(Dataset.from_list([row]), task="gender")[0]
    {'text': 'She is a nurse.', 'label': 1, 'profession': 13, 'gender': 1}
    """
    if task not in ("profession", "gender"):
        raise ValueError(f"Bias in Bios: unknown task {task!r}; expected 'profession' or 'gender'")
    label = "Bias in Bios"
    ds = load_source(source, split=split, dataset_label=label)
    require_columns(ds, {"hard_text": str, "profession": (int, str), "gender": (int, str)}, label)

    def adapt(row: dict) -> dict:
        profession = _label_index(row["profession"], BIOS_PROFESSIONS, "profession", label)
        gender = _label_index(row["gender"], _BIOS_GENDERS, "gender", label)
        target = profession if task == "profession" else gender
        return {"text": row["hard_text"], "label": target, "profession": profession, "gender": gender}

    features = {"text": _STRING, "label": Value("int64"), "profession": Value("int64"), "gender": Value("int64")}
    return _map(ds, adapt, features)


def load_tofu(source: Source = "locuslab/TOFU", name: str | None = "forget10", split: str = "train") -> Dataset:
    """TOFU question/answer pairs as `prompt, completion, perturbed_answers` (`[]` when the source has none).

    `name` is the Hub config (`forget01`, `retain90`, `forget10_perturbed`, ...); it is ignored for local files.

    >>> from datasets import Dataset
    >>> load_tofu(Dataset.from_list([{"question": "Who?", "answer": "Basil."}]))[0]
    {'prompt': 'Who?', 'completion': 'Basil.', 'perturbed_answers': []}
    """
    label = "TOFU"
    ds = load_source(source, split=split, name=name, dataset_label=label)
    columns: dict[str, type | tuple[type, ...]] = {"question": str, "answer": str}
    if "perturbed_answer" in ds.column_names:
        columns["perturbed_answer"] = (list, type(None))
    require_columns(ds, columns, label)

    def adapt(row: dict) -> dict:
        perturbed = row.get("perturbed_answer") or []
        return {
            "prompt": row["question"],
            "completion": row["answer"],
            "perturbed_answers": [str(p) for p in perturbed],
        }

    return _map(ds, adapt, {"prompt": _STRING, "completion": _STRING, "perturbed_answers": List(_STRING)})


def load_instructions(source: Source) -> Dataset:
    """Instruction data as `prompt, completion`; prompt = instruction, plus "\\n\\n" + input/context when non-empty.

    Layouts: Alpaca and the safety-tuned-llamas training file (`instruction, input, output`) and Dolly
    (`instruction, context, response, category`).

    >>> from datasets import Dataset
    >>> load_instructions(Dataset.from_list([{"instruction": "Add.", "input": "1+1", "output": "2"}]))[0]
    {'prompt': 'Add.\\n\\n1+1', 'completion': '2'}
    """
    ds = load_source(source, dataset_label="instructions")
    present = set(ds.column_names)
    if {"instruction", "output"} <= present:
        label, extra, answer = "instructions (Alpaca layout)", "input", "output"
    elif {"instruction", "response"} <= present:
        label, extra, answer = "instructions (Dolly layout)", "context", "response"
    else:
        raise ValueError(
            "instructions: unknown layout; expected columns ['instruction', 'input', 'output'] (Alpaca) or "
            f"['instruction', 'context', 'response'] (Dolly), found {ds.column_names}"
        )
    columns: dict[str, type | tuple[type, ...]] = {"instruction": str, answer: str}
    if extra in present:
        columns[extra] = _OPTIONAL_STR
    require_columns(ds, columns, label)

    def adapt(row: dict) -> dict:
        return {"prompt": _join(row["instruction"], row.get(extra)), "completion": row[answer]}

    return _map(ds, adapt, {"prompt": _STRING, "completion": _STRING})


def load_gsm8k(source: Source = "openai/gsm8k", name: str | None = "main", split: str = "test") -> Dataset:
    """GSM8K as `prompt, completion, final_answer` (the number after the last `####`, commas removed).

    >>> from datasets import Dataset
    >>> load_gsm8k(Dataset.from_list([{"question": "2000+125?", "answer": "Add.\\n#### 2,125"}]))[0]
    {'prompt': '2000+125?', 'completion': 'Add.\\n#### 2,125', 'final_answer': '2125'}
    """
    label = "GSM8K"
    ds = load_source(source, split=split, name=name, dataset_label=label)
    require_columns(ds, {"question": str, "answer": str}, label)

    def adapt(row: dict, index: int) -> dict:
        if "####" not in row["answer"]:
            raise ValueError(f"{label}: row {index} has no '#### <number>' final answer in column 'answer'")
        final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        return {"prompt": row["question"], "completion": row["answer"], "final_answer": final}

    return _map(ds, adapt, {"prompt": _STRING, "completion": _STRING, "final_answer": _STRING}, with_indices=True)


_LABEL_PRESETS = {
    "sentence": (
        "Analyze the sentiment of the input, and respond only positive or negative",
        ["negative", "positive"],
    ),
    "text": (
        "Categorize the news article into one of the 4 categories: World, Sports, Business, Sci/Tech.",
        ["World", "Sports", "Business", "Sci/Tech"],
    ),
}


def load_label_task(
    source: Source,
    *,
    text_column: str | None = None,
    label_column: str = "label",
    label_names: list[str] | None = None,
    instruction: str | None = None,
) -> Dataset:
    """A text classification set (SST-2 `sentence, label`; AG News `text, label`) as `text, label, prompt, completion`.

    prompt = instruction + "\\nInput: " + text and completion = the label name. Without `label_names`, the names come
    from a `ClassLabel` feature if there is one, else from the preset for the text column (`sentence`: SST-2
    negative/positive; `text`: AG News World/Sports/Business/Sci/Tech); without `instruction`, the preset's
    instruction is used when the names match it. String labels are mapped to their index in `label_names`.

    >>> from datasets import Dataset
    >>> row = load_label_task(Dataset.from_list([{"sentence": "great fun", "label": 1}]))[0]
    >>> row["completion"], row["prompt"].splitlines()[-1]
    ('positive', 'Input: great fun')
    """
    label = "label task"
    ds = load_source(source, dataset_label=label)
    if text_column is None:
        text_column = next((c for c in _LABEL_PRESETS if c in ds.column_names), None)
        if text_column is None:
            raise ValueError(
                f"{label}: no text column found; expected 'sentence' (SST-2) or 'text' (AG News), or pass "
                f"text_column=..., found {ds.column_names}"
            )
    require_columns(ds, {text_column: str, label_column: (int, str)}, label)

    feature = ds.features[label_column]
    names = list(label_names or (feature.names if isinstance(feature, ClassLabel) else []))
    preset_instruction, preset_names = _LABEL_PRESETS.get(text_column, (None, None))
    if not names:
        if preset_names is None:
            raise ValueError(f"{label}: pass label_names=... for text column {text_column!r}")
        names = preset_names
    if instruction is None:
        instruction = (
            preset_instruction if names == preset_names else f"Classify the input as one of: {', '.join(names)}."
        )

    def adapt(row: dict) -> dict:
        index = _label_index(row[label_column], names, label_column, label)
        text = row[text_column]
        return {"text": text, "label": index, "prompt": f"{instruction}\nInput: {text}", "completion": names[index]}

    features = {"text": _STRING, "label": Value("int64"), "prompt": _STRING, "completion": _STRING}
    return _map(ds, adapt, features)
