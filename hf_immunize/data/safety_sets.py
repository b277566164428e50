"""Safety datasets: harmful QA (BeaverTails), harmful/refusal triples and preferences (PKU-SafeRLHF, the RepNoise /
Booster refusal files), and harmful prompts for the attack's evaluation (AdvBench, HarmBench, JailbreakBench,
safety-tuned-llamas)."""

from __future__ import annotations

from datasets import Dataset, Features, List, Value

from .sources import (
    _OPTIONAL_STR,
    _STRING,
    Source,
    _map,
    _read_json_object,
    _text,
    load_source,
    require_columns,
)

__all__ = [
    "load_beavertails",
    "load_harmful_prompts",
    "load_pku_saferlhf",
    "load_pku_saferlhf_preferences",
    "load_refusal_file",
    "parse_refusal",
]


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
