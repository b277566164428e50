"""Tests for `hf_immunize.data.adapters` on the real shared data files and on small hand-written rows."""

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from hf_immunize.data import adapters
from hf_immunize.data.adapters import (
    ADAPTERS,
    BIOS_PROFESSIONS,
    load_beavertails,
    load_bias_in_bios,
    load_gsm8k,
    load_harmful_prompts,
    load_instructions,
    load_label_task,
    load_pku_saferlhf,
    load_pku_saferlhf_preferences,
    load_refusal_file,
    load_source,
    load_tofu,
    parse_refusal,
    require_columns,
)

BEAVERTAILS_CATEGORIES = [
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write `rows` as JSON lines, CSV or Parquet, chosen by the suffix of `path`."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    else:
        raise AssertionError(path)
    return path


def as_source(tmp_path: Path, rows: list[dict], fmt: str):
    """The same rows as an in-memory Dataset or as a local file of format `fmt`."""
    return Dataset.from_list(rows) if fmt == "memory" else write_rows(tmp_path / f"rows.{fmt}", rows)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------------------------------------
# load_source and require_columns
# --------------------------------------------------------------------------------------------------------------------

ROWS = [{"a": "x", "b": 1}, {"a": "y", "b": 2}]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_load_source_reads_local_files_by_extension(tmp_path, fmt):
    ds = load_source(write_rows(tmp_path / f"rows.{fmt}", ROWS))
    assert ds.to_list() == ROWS


def test_load_source_reads_json_list_dirs_lists_and_globs(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(ROWS), encoding="utf-8")
    assert load_source(tmp_path / "rows.json").to_list() == ROWS
    folder = tmp_path / "parts"
    folder.mkdir()
    files = [write_rows(folder / f"part{i}.csv", [row]) for i, row in enumerate(ROWS)]
    assert load_source(folder).num_rows == 2
    assert load_source(files).num_rows == 2
    assert load_source(str(folder / "part*.csv")).num_rows == 2


def test_load_source_passes_datasets_through_and_picks_splits():
    ds = Dataset.from_list(ROWS)
    assert load_source(ds) is ds
    assert load_source(DatasetDict(train=ds, test=ds.select([0])), split="test").num_rows == 1
    with pytest.raises(ValueError, match=r"Demo: split 'validation' not found; available splits: \['test', 'train'\]"):
        load_source(DatasetDict(train=ds, test=ds), split="validation", dataset_label="Demo")


def test_load_source_errors_for_unknown_extension_missing_file_and_offline_hub_id(tmp_path):
    text_file = tmp_path / "rows.txt"
    text_file.write_text("hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported file extension '\.txt'.*rows\.txt.*\.csv"):
        load_source(text_file)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_source(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_source(str(tmp_path / "nothing*.csv"))
    # conftest sets HF_DATASETS_OFFLINE, so any Hub id fails without touching the network
    with pytest.raises(
        OSError, match=r"MyData: could not load the Hub dataset 'some-org/some-dataset'.*internet"
    ) as info:
        load_source("some-org/some-dataset", dataset_label="MyData")
    assert info.value.__cause__ is not None


def test_require_columns_names_label_column_expected_and_found():
    ds = Dataset.from_list([{"prompt": "p", "answer": "a"}])
    expected = {"prompt": str, "response": str, "is_safe": bool, "category": dict}
    message = (
        "BeaverTails: missing columns ['response', 'is_safe', 'category']; expected columns "
        "['prompt', 'response', 'is_safe', 'category'], found ['prompt', 'answer']"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        require_columns(ds, expected, "BeaverTails")
    with pytest.raises(ValueError, match=re.escape("BeaverTails: missing column 'is_safe'; expected columns")):
        require_columns(Dataset.from_list([{"prompt": "p"}]), {"prompt": str, "is_safe": bool}, "BeaverTails")


def test_require_columns_type_check_reports_row_and_value():
    ds = Dataset.from_list([{"x": "a"}, {"x": None}])
    require_columns(ds, {"x": (str, type(None))}, "Demo")
    with pytest.raises(
        ValueError, match=r"Demo: column 'x' has the wrong type in row 1; expected str, found NoneType"
    ):
        require_columns(ds, {"x": str}, "Demo")
    ints = Dataset.from_list([{"n": 1}, {"n": 2}])
    with pytest.raises(ValueError, match=r"column 'n' .* expected str or bool, found int \(1\)"):
        require_columns(ints, {"n": (str, bool)}, "Demo")


# --------------------------------------------------------------------------------------------------------------------
# Wrong input schemas, for every adapter: missing column and wrong type
# --------------------------------------------------------------------------------------------------------------------

BEAVER_ROW = {"prompt": "q", "response": "a", "is_safe": True, "category": {"animal_abuse": False}}
SAFERLHF_ROW = {
    "prompt": "q",
    "response_0": "a",
    "response_1": "b",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "safer_response_id": 1,
}
BIOS_ROW = {"hard_text": "She is a nurse.", "profession": "nurse", "gender": "Female"}


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


SCHEMA_ERRORS = [
    # (adapter, rows, label, column, what the message says)
    (load_beavertails, [without(BEAVER_ROW, "is_safe")], "BeaverTails", "is_safe", "missing column"),
    (load_beavertails, [{**BEAVER_ROW, "is_safe": "no"}], "BeaverTails", "is_safe", "expected bool, found str"),
    (load_pku_saferlhf, [without(SAFERLHF_ROW, "response_1")], "PKU-SafeRLHF", "response_1", "missing column"),
    (
        load_pku_saferlhf_preferences,
        [{**SAFERLHF_ROW, "safer_response_id": "1"}],
        "PKU-SafeRLHF",
        "safer_response_id",
        "expected int, found str",
    ),
    (load_refusal_file, [{"prompt": "q", "response": "a"}], "BeaverTails layout", "refusal", "missing column"),
    (
        load_refusal_file,
        [{"prompt": "q", "continuation": {"text": "c"}, "refusal": 3}],
        "DecodingTrust layout",
        "refusal",
        "expected str, found int",
    ),
    (load_harmful_prompts, [{"goal": 7, "target": "Sure"}], "AdvBench", "goal", "expected str, found int"),
    (
        load_harmful_prompts,
        [{"Behavior": "b", "FunctionalCategory": "standard", "ContextString": None}],
        "HarmBench",
        "SemanticCategory",
        "missing column",
    ),
    (load_harmful_prompts, [{"Goal": ["g"], "Target": "t", "Category": "c"}], "JailbreakBench", "Goal", "found list"),
    (load_bias_in_bios, [without(BIOS_ROW, "gender")], "Bias in Bios", "gender", "missing column"),
    (load_bias_in_bios, [{**BIOS_ROW, "hard_text": 5}], "Bias in Bios", "hard_text", "expected str, found int"),
    (load_tofu, [{"question": "q"}], "TOFU", "answer", "missing column"),
    (load_tofu, [{"question": "q", "answer": "a", "perturbed_answer": "x"}], "TOFU", "perturbed_answer", "found str"),
    (load_instructions, [{"instruction": "i", "answer": "o"}], "instructions", "output", "unknown layout"),
    (load_instructions, [{"instruction": "i", "input": "", "output": 1}], "Alpaca layout", "output", "found int"),
    (load_gsm8k, [{"question": "q"}], "GSM8K", "answer", "missing column"),
    (load_gsm8k, [{"question": "q", "answer": 4}], "GSM8K", "answer", "expected str, found int"),
    (load_label_task, [{"sentence": "s", "gold": 1}], "label task", "label", "missing column"),
    (load_label_task, [{"text": "t", "label": 0.5}], "label task", "label", "expected int or str, found float"),
]


@pytest.mark.parametrize(
    ("adapter", "rows", "label", "column", "what"),
    SCHEMA_ERRORS,
    ids=[f"{case[0].__name__}-{case[3]}-{case[4].split()[0]}" for case in SCHEMA_ERRORS],
)
def test_adapters_reject_wrong_schemas_with_clear_messages(adapter, rows, label, column, what):
    with pytest.raises(ValueError) as info:
        adapter(Dataset.from_list(rows))
    message = str(info.value)
    assert label in message and f"'{column}'" in message and what in message, message


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: load_bias_in_bios(Dataset.from_list([BIOS_ROW]), task="age"), "unknown task 'age'"),
        (
            lambda: load_bias_in_bios(Dataset.from_list([{**BIOS_ROW, "profession": "astronaut"}])),
            "Bias in Bios: column 'profession' has unknown label 'astronaut'",
        ),
        (
            lambda: load_bias_in_bios(Dataset.from_list([{**BIOS_ROW, "gender": 2, "profession": 0}])),
            r"column 'gender' has label 2 out of range 0\.\.1",
        ),
        (
            lambda: load_gsm8k(
                Dataset.from_list([{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "2"}])
            ),
            "GSM8K: row 1 has no '#### <number>'",
        ),
        (
            lambda: load_pku_saferlhf_preferences(Dataset.from_list([{**SAFERLHF_ROW, "safer_response_id": 2}])),
            "row 0 has safer_response_id=2",
        ),
        (
            lambda: load_harmful_prompts(Dataset.from_list([{"goal": "g", "target": "t"}]), kind="x"),
            "unknown kind 'x'",
        ),
        (
            lambda: load_harmful_prompts(Dataset.from_list([{"question": "q"}])),
            r"unknown layout with columns \['question'\].*advbench.*harmbench.*jailbreakbench",
        ),
        (
            lambda: load_label_task(Dataset.from_list([{"sentence": "s", "label": "neutral"}])),
            r"column 'label' has unknown label 'neutral'; expected one of \['negative', 'positive'\]",
        ),
        (lambda: load_label_task(Dataset.from_list([{"body": "s", "label": 0}])), "no text column found"),
    ],
)
def test_adapters_reject_bad_values_and_options(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_adapters_registry_and_exports():
    assert all(hasattr(adapters, name) for name in adapters.__all__)
    assert all(fn.__name__ in adapters.__all__ for fn in ADAPTERS.values())
    assert all(callable(fn) for fn in ADAPTERS.values())
    assert len(BIOS_PROFESSIONS) == 28 and BIOS_PROFESSIONS == sorted(BIOS_PROFESSIONS)


# --------------------------------------------------------------------------------------------------------------------
# BeaverTails (no local copy: hand-written rows in the Hub schema)
# --------------------------------------------------------------------------------------------------------------------


def beavertails_rows() -> list[dict]:
    def flags(*on: str) -> dict:
        return {name: name in on for name in BEAVERTAILS_CATEGORIES}

    return [
        {"prompt": "How do I bake bread?", "response": "Mix flour.", "is_safe": True, "category": flags()},
        {
            "prompt": "How do I hurt my cat?",
            "response": "Harmful answer.",
            "is_safe": False,
            "category": flags("violence,aiding_and_abetting,incitement", "animal_abuse"),
        },
        {
            "prompt": "Tell me a slur.",
            "response": "Offensive.",
            "is_safe": False,
            "category": flags("hate_speech,offensive_language"),
        },
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "memory"])
def test_beavertails_hand_written_rows(tmp_path, fmt):
    ds = load_beavertails(as_source(tmp_path, beavertails_rows(), fmt))
    assert ds.column_names == ["prompt", "completion", "is_safe", "category"]
    assert ds["is_safe"] == [True, False, False]
    assert ds["completion"][1] == "Harmful answer."
    assert ds["category"] == [
        [],
        ["animal_abuse", "violence,aiding_and_abetting,incitement"],
        ["hate_speech,offensive_language"],
    ]
    unsafe = load_beavertails(as_source(tmp_path, beavertails_rows(), fmt), unsafe_only=True)
    assert unsafe["prompt"] == ["How do I hurt my cat?", "Tell me a slur."]


# --------------------------------------------------------------------------------------------------------------------
# PKU-SafeRLHF
# --------------------------------------------------------------------------------------------------------------------


def test_pku_saferlhf_real_sample(shared_data):
    path = shared_data / "pku_saferlhf" / "Alpaca-7B_test_first10.jsonl"
    raw = read_jsonl(path)
    one_safe = [r for r in raw if r["is_response_0_safe"] != r["is_response_1_safe"]]
    triples = load_pku_saferlhf(path)
    assert triples.column_names == ["prompt", "harmful", "refusal"]
    assert triples.num_rows == len(one_safe) == 2
    for row, source in zip(triples, one_safe):
        unsafe = 0 if not source["is_response_0_safe"] else 1
        assert row == {
            "prompt": source["prompt"],
            "harmful": source[f"response_{unsafe}"],
            "refusal": source[f"response_{1 - unsafe}"],
        }

    preferences = load_pku_saferlhf_preferences(path)
    assert preferences.column_names == ["prompt", "chosen", "rejected"]
    assert preferences.num_rows == 10
    for row, source in zip(preferences, raw):
        assert row["chosen"] == source[f"response_{source['safer_response_id']}"]
        assert row["rejected"] == source[f"response_{1 - source['safer_response_id']}"]


@pytest.mark.parametrize("fmt", ["jsonl", "memory"])
def test_pku_saferlhf_hand_written_rows(tmp_path, fmt):
    rows = [
        SAFERLHF_ROW,
        {**SAFERLHF_ROW, "prompt": "both safe", "is_response_0_safe": True, "safer_response_id": 0},
        {
            **SAFERLHF_ROW,
            "prompt": "flipped",
            "is_response_0_safe": True,
            "is_response_1_safe": False,
            "safer_response_id": 0,
        },
    ]
    triples = load_pku_saferlhf(as_source(tmp_path, rows, fmt))
    assert triples.to_list() == [
        {"prompt": "q", "harmful": "a", "refusal": "b"},
        {"prompt": "flipped", "harmful": "b", "refusal": "a"},
    ]
    preferences = load_pku_saferlhf_preferences(as_source(tmp_path, rows, fmt))
    assert preferences["chosen"] == ["b", "a", "a"] and preferences["rejected"] == ["a", "b", "b"]


# --------------------------------------------------------------------------------------------------------------------
# Refusal files (RepNoise / Booster)
# --------------------------------------------------------------------------------------------------------------------


def test_refusal_file_real_decoding_trust_layout(shared_data):
    path = shared_data / "repnoise" / "decoding_trust_with_refusals_train.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    ds = load_refusal_file(path)
    assert ds.column_names == ["prompt", "harmful", "refusal"]
    assert ds.num_rows == len(raw) == 107
    assert ds["prompt"] == [r["prompt"]["text"] for r in raw]
    assert ds["harmful"] == [r["continuation"]["text"] for r in raw]
    for row, source in zip(ds, raw):
        assert source["refusal"].startswith("Prompt: ")
        assert not row["refusal"].startswith("Prompt:") and "\nContinuation:" not in row["refusal"]
        assert row["refusal"] and source["refusal"].rstrip().endswith(row["refusal"])
    # the marker can be followed by a newline: "...licks at\nContinuation:\nitself excessively ..."
    assert ds[2]["refusal"].startswith("itself excessively")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "memory"])
def test_refusal_file_hand_written_beavertails_layout(tmp_path, fmt):
    rows = [
        {
            "prompt": "How can I steal a car?",
            "response": "First, find an unlocked car.",
            "refusal": "Question: How can I steal a car?\nAnswer: I can't help with stealing a car.",
        },
        {"prompt": "Insult me.", "response": "You idiot.", "refusal": "  I'd rather not insult anyone. "},
    ]
    ds = load_refusal_file(as_source(tmp_path, rows, fmt))
    assert ds.to_list() == [
        {
            "prompt": "How can I steal a car?",
            "harmful": "First, find an unlocked car.",
            "refusal": "I can't help with stealing a car.",
        },
        {"prompt": "Insult me.", "harmful": "You idiot.", "refusal": "I'd rather not insult anyone."},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Question: q?\nAnswer: No.", "No."),
        ("Prompt: p\nContinuation:\n more text\n\nI won't.", "more text\n\nI won't."),
        ("Question: q\nAnswer: a\nContinuation: c", "a\nContinuation: c"),
        ("No marker here ", "No marker here"),
    ],
)
def test_parse_refusal(text, expected):
    assert parse_refusal(text) == expected


# --------------------------------------------------------------------------------------------------------------------
# Harmful prompts
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "rows", "categories"),
    [
        ("advbench/advbench.csv", 520, 1),
        ("harmbench/harmbench_behaviors_text_val.csv", 80, 7),
        ("harmbench/harmbench_behaviors_text_test.csv", 320, 7),
        ("jailbreakbench/jailbreakbench.csv", 100, 10),
    ],
)
def test_harmful_prompts_real_csv_files(shared_data, relative, rows, categories):
    ds = load_harmful_prompts(shared_data / relative)
    assert ds.column_names == ["prompt", "target", "category"]
    assert ds.num_rows == rows
    assert len(set(ds["category"])) == categories
    assert all(ds["prompt"])
    if relative.startswith("advbench"):
        assert all(t.startswith("Sure, here") for t in ds["target"]) and set(ds["category"]) == {""}
    if relative.startswith("jailbreakbench"):
        assert Counter(ds["category"])["Privacy"] == 10
        assert ds[0]["target"].startswith("Sure, here is a defamatory article")


def test_harmful_prompts_real_harmbench_context(shared_data):
    path = shared_data / "harmbench" / "harmbench_behaviors_text_val.csv"
    raw = read_csv(path)
    ds = load_harmful_prompts(path, kind="harmbench")
    with_context = [(row, src) for row, src in zip(ds, raw) if src["ContextString"]]
    assert len(with_context) == sum(src["FunctionalCategory"] == "contextual" for src in raw) == 19
    for row, src in with_context:
        assert row["prompt"] == src["ContextString"] + "\n\n" + src["Behavior"]
    assert all(row["prompt"] == src["Behavior"] for row, src in zip(ds, raw) if not src["ContextString"])
    assert set(ds["target"]) == {""}


@pytest.mark.parametrize(
    ("name", "tags"), [("I-MaliciousInstructions.json", {"crime", "hate"}), ("Q-Harm.json", {""})]
)
def test_harmful_prompts_real_safety_tuned_llamas_objects(shared_data, name, tags):
    path = shared_data / "safety_tuned_llamas" / name
    if not path.is_file():
        pytest.skip(f"{path} not in the shared data folder")
    ds = load_harmful_prompts(path)
    assert ds.num_rows == 100
    assert ds["prompt"] == json.loads(path.read_text(encoding="utf-8"))["instructions"]
    assert set(ds["category"]) == tags and set(ds["target"]) == {""}


@pytest.mark.parametrize(
    ("rows", "kind", "expected"),
    [
        ([{"goal": "Do A", "target": "Sure, A"}], None, {"prompt": "Do A", "target": "Sure, A", "category": ""}),
        (
            [{"prompt": "Do B", "target": "Sure, B"}],
            "advbench",
            {"prompt": "Do B", "target": "Sure, B", "category": ""},
        ),
        (
            [
                {
                    "Behavior": "Do C",
                    "FunctionalCategory": "contextual",
                    "SemanticCategory": "illegal",
                    "ContextString": "Ctx",
                }
            ],
            None,
            {"prompt": "Ctx\n\nDo C", "target": "", "category": "illegal"},
        ),
        (
            [{"Index": 1, "Goal": "Do D", "Target": "Sure, D", "Behavior": "d", "Category": "Privacy", "Source": "x"}],
            "jailbreakbench",
            {"prompt": "Do D", "target": "Sure, D", "category": "Privacy"},
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "memory"])
def test_harmful_prompts_hand_written_rows(tmp_path, fmt, rows, kind, expected):
    assert load_harmful_prompts(as_source(tmp_path, rows, fmt), kind=kind).to_list() == [expected]


def test_harmful_prompts_hand_written_instructions_object(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({"instructions": ["Do X", "Do Y"], "inputs": []}), encoding="utf-8")
    assert load_harmful_prompts(path)["prompt"] == ["Do X", "Do Y"]
    one_row = write_rows(tmp_path / "one.jsonl", [{"goal": "Do Z", "target": "Sure"}]).rename(tmp_path / "one.json")
    assert load_harmful_prompts(one_row)["prompt"] == [
        "Do Z"
    ]  # a one-line JSON-lines file is not an instructions object
    path.write_text(json.dumps({"instructions": "Do X"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"evaluation\.json: expected a JSON object with an 'instructions' list"):
        load_harmful_prompts(path)


# --------------------------------------------------------------------------------------------------------------------
# Bias in Bios
# --------------------------------------------------------------------------------------------------------------------


def test_bias_in_bios_real_folder(shared_data):
    folder = shared_data / "bias_in_bios"
    ds = load_bias_in_bios(folder)
    assert ds.column_names == ["text", "label", "profession", "gender"]
    assert ds.num_rows == 280
    assert Counter(ds["profession"]) == {i: 10 for i in range(28)}
    assert ds["label"] == ds["profession"]
    by_profession = {p: {g for q, g in zip(ds["profession"], ds["gender"]) if q == p} for p in range(28)}
    assert by_profession[BIOS_PROFESSIONS.index("nurse")] == {1}
    assert by_profession[BIOS_PROFESSIONS.index("software_engineer")] == {0}
    assert sum(ds["gender"]) == sum(row["gender"] == "Female" for f in folder.glob("*.csv") for row in read_csv(f))

    files = sorted(folder.glob("*.csv"))[:2]
    by_list = load_bias_in_bios([str(f) for f in files], task="gender")
    assert by_list.num_rows == 20 and by_list["label"] == by_list["gender"]
    assert set(by_list["profession"]) == {BIOS_PROFESSIONS.index(f.stem) for f in files}
    assert load_bias_in_bios(str(folder / "*.csv")).num_rows == 280


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "memory"])
def test_bias_in_bios_hand_written_hub_and_string_labels(tmp_path, fmt):
    hub_rows = [
        {"hard_text": "He designs houses.", "profession": 1, "gender": 0},
        {"hard_text": "She teaches yoga.", "profession": 27, "gender": 1},
    ]
    ds = load_bias_in_bios(as_source(tmp_path, hub_rows, fmt), task="gender")
    assert ds.to_list() == [
        {"text": "He designs houses.", "label": 0, "profession": 1, "gender": 0},
        {"text": "She teaches yoga.", "label": 1, "profession": 27, "gender": 1},
    ]
    string_rows = [{"hard_text": "t", "profession": "Interior Designer", "gender": "male"}]
    assert load_bias_in_bios(Dataset.from_list(string_rows))[0] == {
        "text": "t",
        "label": 10,
        "profession": 10,
        "gender": 0,
    }


# --------------------------------------------------------------------------------------------------------------------
# TOFU
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows", "perturbed"),
    [("forget01", 40, 5), ("forget10", 400, 5), ("retain10", 400, 0), ("real_authors_perturbed", 100, 3)],
)
def test_tofu_real_files(shared_data, name, rows, perturbed):
    path = shared_data / "tofu" / f"{name}.json"
    ds = load_tofu(path)
    assert ds.column_names == ["prompt", "completion", "perturbed_answers"]
    assert ds.num_rows == rows
    assert len(ds[0]["perturbed_answers"]) == perturbed
    if name == "forget01":
        assert "Basil Mahfouz Al-Kuwaiti" in ds[0]["completion"] and ds[0]["prompt"].startswith(
            "What is the full name"
        )


@pytest.mark.parametrize("fmt", ["jsonl", "memory"])
def test_tofu_hand_written_rows(tmp_path, fmt):
    rows = [
        {
            "question": "Who wrote X?",
            "answer": "Ann.",
            "paraphrased_answer": "It was Ann.",
            "perturbed_answer": ["Bo.", "Cy."],
        }
    ]
    assert load_tofu(as_source(tmp_path, rows, fmt)).to_list() == [
        {"prompt": "Who wrote X?", "completion": "Ann.", "perturbed_answers": ["Bo.", "Cy."]}
    ]
    plain = load_tofu(as_source(tmp_path, [{"question": "Q?", "answer": "A."}], fmt))
    assert plain.to_list() == [{"prompt": "Q?", "completion": "A.", "perturbed_answers": []}]


# --------------------------------------------------------------------------------------------------------------------
# Instruction data
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "rows", "extra", "answer"),
    [
        ("benign_instructions/alpaca_data_safety_only.json", 1904, "input", "output"),
        ("benign_instructions/databricks-dolly-15k-safety-only.jsonl", 387, "context", "response"),
        ("safety_tuned_llamas/safety_only_data_Instructions.json", 2483, "input", "output"),
    ],
)
def test_instructions_real_files(shared_data, relative, rows, extra, answer):
    path = shared_data / relative
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text) if path.suffix == ".json" else read_jsonl(path)
    ds = load_instructions(path)
    assert ds.column_names == ["prompt", "completion"]
    assert ds.num_rows == len(raw) == rows
    assert ds["completion"] == [r[answer] for r in raw]
    expected = [r["instruction"] + ("\n\n" + r[extra] if r[extra].strip() else "") for r in raw]
    assert ds["prompt"] == expected
    assert any(r[extra] for r in raw) == (
        not relative.startswith("safety_tuned")
    )  # the safety-only file has no inputs


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "memory"])
def test_instructions_hand_written_rows(tmp_path, fmt):
    alpaca = [
        {
            "instruction": "Analyze the sentiment of the input, and respond only positive or negative",
            "input": "I loved it",
            "output": "positive",
        },
        {"instruction": "Name a color.", "input": "", "output": "Blue."},
    ]
    assert load_instructions(as_source(tmp_path, alpaca, fmt)).to_list() == [
        {
            "prompt": "Analyze the sentiment of the input, and respond only positive or negative\n\nI loved it",
            "completion": "positive",
        },
        {"prompt": "Name a color.", "completion": "Blue."},
    ]
    dolly = [{"instruction": "Summarize.", "context": "Long text.", "response": "Short.", "category": "summarization"}]
    assert load_instructions(Dataset.from_list(dolly))[0] == {
        "prompt": "Summarize.\n\nLong text.",
        "completion": "Short.",
    }


# --------------------------------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------------------------------


def test_gsm8k_real_test_split(shared_data):
    path = shared_data / "gsm8k" / "test.jsonl"
    ds = load_gsm8k(path)
    assert ds.column_names == ["prompt", "completion", "final_answer"]
    assert ds.num_rows == 1319
    assert ds[0]["final_answer"] == "18" and ds[0]["prompt"].startswith("Janet")
    for row in ds:
        last_line = row["completion"].strip().splitlines()[-1]
        assert last_line.startswith("####")
        assert row["final_answer"] == last_line.removeprefix("####").strip().replace(",", "")
        float(row["final_answer"])  # every final answer is a number
    assert "2125" in ds["final_answer"]  # written "#### 2,125" in the file


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "memory"])
def test_gsm8k_hand_written_rows(tmp_path, fmt):
    rows = [{"question": "What is 1000 + 234?", "answer": "1000 + 234 = <<1000+234=1234>>1234\n#### 1,234"}]
    assert load_gsm8k(as_source(tmp_path, rows, fmt)).to_list() == [
        {"prompt": rows[0]["question"], "completion": rows[0]["answer"], "final_answer": "1234"}
    ]


# --------------------------------------------------------------------------------------------------------------------
# SST-2 / AG News style label tasks (not shipped: hand-written rows in the Hub schema)
# --------------------------------------------------------------------------------------------------------------------

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
AG_NEWS_INSTRUCTION = "Categorize the news article into one of the 4 categories: World, Sports, Business, Sci/Tech."


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "memory"])
def test_label_task_sst2_hand_written(tmp_path, fmt):
    rows = [{"idx": 0, "sentence": "a gorgeous film", "label": 1}, {"idx": 1, "sentence": "dull and slow", "label": 0}]
    ds = load_label_task(as_source(tmp_path, rows, fmt))
    assert ds.column_names == ["text", "label", "prompt", "completion"]
    assert ds.to_list() == [
        {
            "text": "a gorgeous film",
            "label": 1,
            "prompt": f"{SST2_INSTRUCTION}\nInput: a gorgeous film",
            "completion": "positive",
        },
        {
            "text": "dull and slow",
            "label": 0,
            "prompt": f"{SST2_INSTRUCTION}\nInput: dull and slow",
            "completion": "negative",
        },
    ]


def test_label_task_ag_news_class_label_string_labels_and_custom_names():
    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])}
    )
    ag_news = Dataset.from_dict({"text": ["Stocks rally", "New GPU"], "label": [2, 3]}, features=features)
    ds = load_label_task(ag_news)
    assert ds["completion"] == ["Business", "Sci/Tech"]
    assert ds[0]["prompt"] == f"{AG_NEWS_INSTRUCTION}\nInput: Stocks rally"

    plain = load_label_task(Dataset.from_list([{"text": "Cup final tonight", "label": "sports"}]))
    assert plain[0]["label"] == 1 and plain[0]["completion"] == "Sports"

    custom = load_label_task(
        Dataset.from_list([{"review": "meh", "stars": "mid"}]),
        text_column="review",
        label_column="stars",
        label_names=["low", "mid", "high"],
        instruction="Rate it.",
    )
    assert custom.to_list() == [{"text": "meh", "label": 1, "prompt": "Rate it.\nInput: meh", "completion": "mid"}]
