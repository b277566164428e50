"""What every dataset adapter shares: reading a Hub id, local files or a loaded dataset (:func:`load_source`), the
column checks that name the dataset, the column and what was found (:func:`require_columns`), and small helpers."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value, load_dataset

__all__ = ["BIOS_PROFESSIONS", "Source", "load_source", "require_columns"]

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
_OPTIONAL_STR = (str, type(None))


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
