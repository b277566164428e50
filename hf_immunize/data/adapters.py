"""Adapters from public dataset schemas to the canonical columns used by `hf_immunize`.

Every adapter takes a Hub id (loaded with `datasets.load_dataset`), a local file of the same schema (`.json`,
`.jsonl`, `.csv`, `.parquet`), a directory, a list or glob of files, or an already-loaded `datasets.Dataset`.
The input columns are checked with `require_columns` before any mapping, so a wrong file fails with a message that
names the dataset, the column, what was expected and what was found.

Canonical outputs:

- harmful QA: `prompt, completion, is_safe, category` (BeaverTails)
- harmful/refusal triples: `prompt, harmful, refusal` (PKU-SafeRLHF, RepNoise/Booster refusal files)
- preferences: `prompt, chosen, rejected` (PKU-SafeRLHF)
- harmful prompts: `prompt, target, category` (AdvBench, HarmBench, JailbreakBench, safety-tuned-llamas evals)
- instruction tuning: `prompt, completion` (Alpaca, Dolly, safety-tuned-llamas training data)
- classification: `text, label, profession, gender` (Bias in Bios), `text, label, prompt, completion` (SST-2, AG News)
- unlearning: `prompt, completion, perturbed_answers` (TOFU)
- math: `prompt, completion, final_answer` (GSM8K)
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_dataset

__all__ = [
    "ADAPTERS",
    "BIOS_PROFESSIONS",
    "load_beavertails",
    "load_bias_in_bios",
    "load_gsm8k",
    "load_harmful_prompts",
    "load_instructions",
    "load_label_task",
    "load_pku_saferlhf",
    "load_pku_saferlhf_preferences",
    "load_refusal_file",
    "load_source",
    "load_tofu",
    "parse_refusal",
    "require_columns",
]

Source = str | os.PathLike | Sequence[str | os.PathLike] | Dataset | DatasetDict

_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_NUM_ROWS_TO_CHECK = 100

BIOS_PROFESSIONS = [
    "accountant",
    "architect",
    "attorney",
    "chiropractor",
    "comedian",
    "composer",
    "dentist",
    "dietitian",
    "dj",
    "filmmaker",
    "interior_designer",
    "journalist",
    "model",
    "nurse",
    "painter",
    "paralegal",
    "pastor",
    "personal_trainer",
    "photographer",
    "physician",
    "poet",
    "professor",
    "psychologist",
    "rapper",
    "software_engineer",
    "surgeon",
    "teacher",
    "yoga_teacher",
]
_BIOS_GENDERS = ["male", "female"]

_STRING = Value("string")


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------


def load_source(
    source: Source, *, split: str = "train", name: str | None = None, dataset_label: str | None = None
) -> Dataset:
    """Load `source` as a single `datasets.Dataset`.

    - a `Dataset` is returned as is; a `DatasetDict` gives its `split`;
    - an existing `.json`/`.jsonl`/`.csv`/`.parquet` file is read with the matching packaged builder (`split` and
      `name` are ignored: a single file is one split);
    - a list of such files, or a glob string matching some, is read as one data set;
    - an existing directory is read with `load_dataset(directory)` and `split` is picked from it;
    - anything else is a Hub id: `load_dataset(source, name, split=split)`, which needs internet access.

    >>> from datasets import Dataset
    >>> load_source(Dataset.from_list([{"a": 1}])).num_rows
    1
    """
    label = dataset_label or str(source)
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        return _pick_split(source, split, label)
    if isinstance(source, Sequence) and not isinstance(source, str):
        return _load_local_files([Path(p) for p in source], label)

    path = Path(source)
    if path.is_dir():
        try:
            loaded = load_dataset(str(path))
        except Exception as err:
            raise ValueError(f"{label}: could not read the local directory {str(path)!r}: {err}") from err
        return _pick_split(loaded, split, label)
    if path.is_file():
        return _load_local_files([path], label)
    if isinstance(source, str) and glob.has_magic(source):
        matches = sorted(glob.glob(source))
        if not matches:
            raise FileNotFoundError(f"{label}: the glob {source!r} matches no files")
        return _load_local_files([Path(m) for m in matches], label)
    if path.suffix.lower() in _LOCAL_BUILDERS or path.is_absolute() or str(source).startswith("."):
        raise FileNotFoundError(f"{label}: local file {str(source)!r} does not exist")

    try:
        return load_dataset(str(source), name, split=split)
    except Exception as err:
        raise OSError(
            f"{label}: could not load the Hub dataset {str(source)!r} (name={name!r}, split={split!r}): {err}. "
            "Hub ids need internet access (and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE unset); "
            "offline, pass a local file or directory instead."
        ) from err


def _pick_split(dataset_dict: DatasetDict, split: str, label: str) -> Dataset:
    if split not in dataset_dict:
        raise ValueError(f"{label}: split {split!r} not found; available splits: {sorted(dataset_dict)}")
    return dataset_dict[split]


def _load_local_files(paths: list[Path], label: str) -> Dataset:
    if not paths:
        raise ValueError(f"{label}: empty list of files")
    builders = set()
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{label}: local file {str(path)!r} does not exist")
        builder = _LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{label}: unsupported file extension {path.suffix!r} for {str(path)!r}; "
                f"expected one of {sorted(_LOCAL_BUILDERS)}"
            )
        builders.add(builder)
    if len(builders) > 1:
        raise ValueError(f"{label}: cannot mix file types in one source: {sorted(builders)}")
    data_files = [str(p) for p in paths]
    try:
        return load_dataset(
            builders.pop(), data_files=data_files if len(data_files) > 1 else data_files[0], split="train"
        )
    except Exception as err:
        raise ValueError(f"{label}: could not read local file(s) {data_files}: {err}") from err


def _type_names(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def require_columns(ds: Dataset, columns: dict[str, type | tuple[type, ...]], dataset_label: str) -> None:
    """Check that `ds` has `columns` and that their values (in the first 100 rows) have the expected types.

    Raises `ValueError` naming the dataset, the column, what was expected and what was found. A value of `None`
    is accepted only when `type(None)` is among the expected types.

    >>> from datasets import Dataset
    >>> require_columns(Dataset.from_list([{"prompt": "hi"}]), {"prompt": str}, "Demo")
    >>> require_columns(Dataset.from_list([{"prompt": 1}]), {"prompt": str}, "Demo")
    Traceback (most recent call last):
    ...
    ValueError: Demo: column 'prompt' has the wrong type in row 0; expected str, found int (1)
    """
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        what = f"column {missing[0]!r}" if len(missing) == 1 else f"columns {missing}"
        raise ValueError(f"{dataset_label}: missing {what}; expected columns {list(columns)}, found {ds.column_names}")
    head = ds[: min(_NUM_ROWS_TO_CHECK, ds.num_rows)] if ds.num_rows else {}
    for column, expected in columns.items():
        for row, value in enumerate(head.get(column, [])):
            if not isinstance(value, expected):
                shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
                raise ValueError(
                    f"{dataset_label}: column {column!r} has the wrong type in row {row}; "
                    f"expected {_type_names(expected)}, found {type(value).__name__} ({shown})"
                )


def _map(ds: Dataset, fn: Callable[..., dict[str, Any]], features: dict[str, Any], **kwargs: Any) -> Dataset:
    """Row-wise map that replaces all input columns by the canonical `features`."""
    return ds.map(fn, remove_columns=ds.column_names, features=Features(features), desc="adapting", **kwargs)


def _text(value: Any) -> str:
    """Plain text of a field that is either a string or a `{"text": ...}` record (RealToxicityPrompts style)."""
    return value["text"] if isinstance(value, dict) else value


def _join(first: str, second: str | None) -> str:
    return f"{first}\n\n{second}" if second and second.strip() else first


def _read_json_object(source: Any) -> dict | None:
    """The top-level dict of a local `.json` file, or None (not such a file, a JSON list, or JSON lines)."""
    if not isinstance(source, str | os.PathLike) or Path(source).suffix.lower() != ".json":
        return None
    path = Path(source)
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        head = handle.read(1024).lstrip()
        if not head.startswith("{"):
            return None
        handle.seek(0)
        try:
            content = json.load(handle)
        except json.JSONDecodeError:  # JSON lines
            return None
    return content if isinstance(content, dict) else None


# --------------------------------------------------------------------------------------------------------------------
# Harmful QA and refusals
# --------------------------------------------------------------------------------------------------------------------


def load_beavertails(
    source: Source = "PKU-Alignment/BeaverTails", split: str = "30k_train", *, unsafe_only: bool = False
) -> Dataset:
    """BeaverTails QA pairs as `prompt, completion, is_safe, category` (category: sorted names flagged True).

    >>> from datasets import Dataset
    >>> row = {"prompt": "q", "response": "a", "is_safe": False, "category": {"violence": True, "privacy": False}}
    >>> load_beavertails(Dataset.from_list([row]))[0]
    {'prompt': 'q', 'completion': 'a', 'is_safe': False, 'category': ['violence']}
    """
    label = "BeaverTails"
    ds = load_source(source, split=split, dataset_label=label)
    require_columns(ds, {"prompt": str, "response": str, "is_safe": bool, "category": dict}, label)
    if unsafe_only:
        ds = ds.filter(lambda row: not row["is_safe"], desc="keeping unsafe rows")

    def adapt(row: dict) -> dict:
        flagged = sorted(name for name, on in row["category"].items() if on)
        return {"prompt": row["prompt"], "completion": row["response"], "is_safe": row["is_safe"], "category": flagged}

    features = {"prompt": _STRING, "completion": _STRING, "is_safe": Value("bool"), "category": List(_STRING)}
    return _map(ds, adapt, features)


_SAFERLHF_COLUMNS = {
    "prompt": str,
    "response_0": str,
    "response_1": str,
    "is_response_0_safe": bool,
    "is_response_1_safe": bool,
    "safer_response_id": int,
}


def load_pku_saferlhf(
    source: Source = "PKU-Alignment/PKU-SafeRLHF", split: str = "train", name: str | None = None
) -> Dataset:
    """PKU-SafeRLHF rows with exactly one safe response, as `prompt, harmful, refusal`.

    `harmful` is the unsafe response and `refusal` the safe one; rows where both or neither are safe are dropped.

    >>> from datasets import Dataset
    >>> row = {"prompt": "q", "response_0": "bad", "response_1": "no", "is_response_0_safe": False,
    ...        "is_response_1_safe": True, "safer_response_id": 1}
    >>> load_pku_saferlhf(Dataset.from_list([row]))[0]
    {'prompt': 'q', 'harmful': 'bad', 'refusal': 'no'}
    """
    label = "PKU-SafeRLHF"
    ds = load_source(source, split=split, name=name, dataset_label=label)
    require_columns(ds, _SAFERLHF_COLUMNS, label)
    ds = ds.filter(
        lambda row: row["is_response_0_safe"] != row["is_response_1_safe"], desc="keeping one-safe-response rows"
    )

    def adapt(row: dict) -> dict:
        safe, unsafe = (0, 1) if row["is_response_0_safe"] else (1, 0)
        return {"prompt": row["prompt"], "harmful": row[f"response_{unsafe}"], "refusal": row[f"response_{safe}"]}

    return _map(ds, adapt, {"prompt": _STRING, "harmful": _STRING, "refusal": _STRING})


def load_pku_saferlhf_preferences(
    source: Source = "PKU-Alignment/PKU-SafeRLHF", split: str = "train", name: str | None = None
) -> Dataset:
    """PKU-SafeRLHF as safety preferences `prompt, chosen, rejected` (chosen = `safer_response_id`), all rows.

    >>> from datasets import Dataset
    >>> row = {"prompt": "q", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
    ...        "is_response_1_safe": True, "safer_response_id": 1}
    >>> load_pku_saferlhf_preferences(Dataset.from_list([row]))[0]
    {'prompt': 'q', 'chosen': 'b', 'rejected': 'a'}
    """
    label = "PKU-SafeRLHF"
    ds = load_source(source, split=split, name=name, dataset_label=label)
    require_columns(ds, _SAFERLHF_COLUMNS, label)

    def adapt(row: dict, index: int) -> dict:
        safer = row["safer_response_id"]
        if safer not in (0, 1):
            raise ValueError(f"{label}: row {index} has safer_response_id={safer!r}; expected 0 or 1")
        return {"prompt": row["prompt"], "chosen": row[f"response_{safer}"], "rejected": row[f"response_{1 - safer}"]}

    return _map(ds, adapt, {"prompt": _STRING, "chosen": _STRING, "rejected": _STRING}, with_indices=True)


_REFUSAL_MARKERS = ("\nAnswer:", "\nContinuation:")


def parse_refusal(text: str) -> str:
    """The answer part of a RepNoise refusal string: the text after the first "\\nAnswer:" or "\\nContinuation:".

    Without either marker the whole string (stripped) is returned.

    >>> parse_refusal("Question: How do I pick a lock?\\nAnswer: I can't help with that.")
    "I can't help with that."
    """
    positions = [(text.find(marker), marker) for marker in _REFUSAL_MARKERS if marker in text]
    if not positions:
        return text.strip()
    start, marker = min(positions)
    return text[start + len(marker) :].strip()


def load_refusal_file(source: Source) -> Dataset:
    """A RepNoise/Booster refusal file as `prompt, harmful, refusal` (refusal: the parsed answer part only).

    Two layouts are accepted: BeaverTails with refusals (`prompt, response, refusal` with refusal
    `"Question: ...\\nAnswer: ..."`) and DecodingTrust with refusals (`prompt{text}, continuation{text}, refusal` with
    refusal `"Prompt: ...\\nContinuation: ..."`).

    >>> from datasets import Dataset
    >>> row = {"prompt": "q", "response": "bad", "refusal": "Question: q\\nAnswer: No."}
    >>> load_refusal_file(Dataset.from_list([row]))[0]
    {'prompt': 'q', 'harmful': 'bad', 'refusal': 'No.'}
    """
    label = "refusal file"
    ds = load_source(source, dataset_label=label)
    if "continuation" in ds.column_names:
        label, harmful_column = "refusal file (DecodingTrust layout)", "continuation"
        require_columns(ds, {"prompt": (dict, str), "continuation": (dict, str), "refusal": str}, label)
    elif "response" in ds.column_names:
        label, harmful_column = "refusal file (BeaverTails layout)", "response"
        require_columns(ds, {"prompt": str, "response": str, "refusal": str}, label)
    else:
        raise ValueError(
            f"{label}: unknown layout; expected columns ['prompt', 'response', 'refusal'] (BeaverTails with refusals) "
            f"or ['prompt', 'continuation', 'refusal'] (DecodingTrust with refusals), found {ds.column_names}"
        )

    def adapt(row: dict) -> dict:
        return {
            "prompt": _text(row["prompt"]),
            "harmful": _text(row[harmful_column]),
            "refusal": parse_refusal(row["refusal"]),
        }

    return _map(ds, adapt, {"prompt": _STRING, "harmful": _STRING, "refusal": _STRING})


# --------------------------------------------------------------------------------------------------------------------
# Harmful prompts (attack evaluation)
# --------------------------------------------------------------------------------------------------------------------

_OPTIONAL_STR = (str, type(None))
# (kind, name used in error messages, columns that identify the layout, columns checked by `require_columns`)
_HARMFUL_LAYOUTS: list[tuple[str, str, set[str], dict[str, type | tuple[type, ...]]]] = [
    (
        "jailbreakbench",
        "JailbreakBench",
        {"Goal", "Target"},
        {"Goal": str, "Target": _OPTIONAL_STR, "Category": _OPTIONAL_STR},
    ),
    (
        "harmbench",
        "HarmBench",
        {"Behavior", "FunctionalCategory"},
        {"Behavior": str, "SemanticCategory": _OPTIONAL_STR, "ContextString": _OPTIONAL_STR},
    ),
    ("advbench", "AdvBench", {"goal", "target"}, {"goal": str, "target": _OPTIONAL_STR}),
    ("advbench", "AdvBench", {"prompt", "target"}, {"prompt": str, "target": _OPTIONAL_STR}),
]
_HARMFUL_KINDS = ("advbench", "harmbench", "jailbreakbench")
_KNOWN_HARMFUL_LAYOUTS = (
    "advbench: goal, target (or prompt, target); "
    "harmbench: Behavior, FunctionalCategory, SemanticCategory, ContextString; "
    "jailbreakbench: Goal, Target, Behavior, Category; "
    'a local .json object {"instructions": [...]} (safety-tuned-llamas evaluation files)'
)


def _harmful_row(kind: str, row: dict) -> dict:
    if kind == "jailbreakbench":
        return {"prompt": row["Goal"], "target": row["Target"] or "", "category": row["Category"] or ""}
    if kind == "harmbench":
        context, behavior = row["ContextString"], row["Behavior"]
        prompt = f"{context}\n\n{behavior}" if context and context.strip() else behavior
        return {"prompt": prompt, "target": "", "category": row["SemanticCategory"] or ""}
    prompt = row["goal"] if "goal" in row else row["prompt"]
    return {"prompt": prompt, "target": row["target"] or "", "category": ""}


def load_harmful_prompts(source: Source, *, kind: str | None = None) -> Dataset:
    """Harmful requests as `prompt, target, category` (`""` where the source has no target or category).

    Layouts (`kind`, or None to detect from the columns): "advbench" (`goal, target`, or the `walledai/AdvBench`
    layout `prompt, target`), "harmbench" (`Behavior, FunctionalCategory, SemanticCategory, ContextString, ...`;
    a non-empty ContextString is put before the behavior; category = SemanticCategory), "jailbreakbench" (`Goal,
    Target, Behavior, Category, ...`). With `kind=None`, a local `.json` object with an `instructions` list
    (safety-tuned-llamas `I-MaliciousInstructions.json`, `Q-Harm.json`) is also read; its `tags`, when present,
    become the category.

    >>> from datasets import Dataset
    >>> load_harmful_prompts(Dataset.from_list([{"goal": "Do harm", "target": "Sure, here is"}]))[0]
    {'prompt': 'Do harm', 'target': 'Sure, here is', 'category': ''}
    """
    if kind is not None and kind not in _HARMFUL_KINDS:
        raise ValueError(f"harmful prompts: unknown kind {kind!r}; expected one of {list(_HARMFUL_KINDS)} or None")
    if kind is None and (obj := _read_json_object(source)) is not None and "instructions" in obj:
        return _instructions_object(obj, str(source))

    ds = load_source(source, dataset_label=kind or "harmful prompts")
    present = set(ds.column_names)
    candidates = [layout for layout in _HARMFUL_LAYOUTS if kind in (None, layout[0])]
    match = next((layout for layout in candidates if layout[2] <= present), None)
    if match is None and kind is None:
        raise ValueError(
            f"harmful prompts: unknown layout with columns {ds.column_names}; known layouts: {_KNOWN_HARMFUL_LAYOUTS}"
        )
    kind, display, _, columns = match or candidates[0]  # with an explicit kind, report its first layout's columns
    require_columns(ds, columns, display)
    features = {"prompt": _STRING, "target": _STRING, "category": _STRING}
    return _map(ds, lambda row: _harmful_row(kind, row), features)


def _instructions_object(obj: dict, label: str) -> Dataset:
    instructions = obj.get("instructions")
    if not isinstance(instructions, list) or not all(isinstance(i, str) for i in instructions):
        raise ValueError(
            f"{label}: expected a JSON object with an 'instructions' list of strings, found keys {sorted(obj)}"
        )
    tags = obj.get("tags")
    categories = [str(t) for t in tags] if isinstance(tags, list) and len(tags) == len(instructions) else None
    return Dataset.from_dict(
        {
            "prompt": instructions,
            "target": [""] * len(instructions),
            "category": categories or [""] * len(instructions),
        },
        features=Features({"prompt": _STRING, "target": _STRING, "category": _STRING}),
    )


# --------------------------------------------------------------------------------------------------------------------
# Classification and instruction data
# --------------------------------------------------------------------------------------------------------------------


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


ADAPTERS: dict[str, Callable[..., Dataset]] = {
    "beavertails": load_beavertails,
    "pku_saferlhf": load_pku_saferlhf,
    "pku_saferlhf_preferences": load_pku_saferlhf_preferences,
    "refusal_file": load_refusal_file,
    "harmful_prompts": load_harmful_prompts,
    "bias_in_bios": load_bias_in_bios,
    "tofu": load_tofu,
    "instructions": load_instructions,
    "gsm8k": load_gsm8k,
    "label_task": load_label_task,
}
