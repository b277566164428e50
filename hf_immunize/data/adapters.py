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

from collections.abc import Callable

from datasets import Dataset

from .safety_sets import (
    load_beavertails,
    load_harmful_prompts,
    load_pku_saferlhf,
    load_pku_saferlhf_preferences,
    load_refusal_file,
    parse_refusal,
)
from .sources import BIOS_PROFESSIONS, Source, _read_json_object, load_source, require_columns  # noqa: F401
from .task_sets import load_bias_in_bios, load_gsm8k, load_instructions, load_label_task, load_tofu

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
