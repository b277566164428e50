"""Reading an evaluation or attack set from any public layout the adapters know, by its columns.

`hf-immunize evaluate` and `hf-immunize attack` take files (or Hub ids) without a `--format` flag: the columns say
which adapter of :mod:`hf_immunize.data.adapters` applies. A file already in the canonical columns is used as it is.

| columns | read as | canonical output |
| --- | --- | --- |
| `prompt, response` or `continuation`, `refusal` | refusal triples (RepNoise / Booster) | `prompt, harmful, refusal` |
| `prompt, response_0, response_1, is_response_0_safe` | PKU-SafeRLHF, one safe response | `prompt, harmful, refusal` |
| `prompt, response, is_safe, category` | BeaverTails QA | `prompt, completion, is_safe, category` |
| `question, answer` | GSM8K | `prompt, completion, final_answer` |
| `instruction` + `output` / `response` | Alpaca / Dolly instructions | `prompt, completion` |
| `goal` / `Goal` / `Behavior` | AdvBench / JailbreakBench / HarmBench | `prompt, target, category` |
| `hard_text, profession, gender` | Bias in Bios | `text, label, profession, gender` |
| `prompt` (+ anything) or `text` | already canonical | as given |
"""

from __future__ import annotations

from datasets import Dataset

from .adapters import (
    Source,
    load_beavertails,
    load_bias_in_bios,
    load_gsm8k,
    load_harmful_prompts,
    load_instructions,
    load_pku_saferlhf,
    load_refusal_file,
    load_source,
)

__all__ = ["load_by_layout"]


def load_by_layout(source: Source, label: str, *, bios_task: str = "profession") -> Dataset:
    """`source` (a Hub id, a local file or folder, or a `Dataset`) in canonical columns, the adapter picked from its
    columns (see the module docstring); `label` names the set in errors (e.g. `"--eval_harmful"`).

    >>> from datasets import Dataset
    >>> load_by_layout(Dataset.from_list([{"goal": "Do harm", "target": "Sure"}]), "--eval_harmful")[0]["prompt"]
    'Do harm'
    """
    if isinstance(source, str) and source.endswith(".json"):
        from .sources import _read_json_object

        obj = _read_json_object(source)
        if obj is not None and "instructions" in obj:  # safety-tuned-llamas' harmful instruction files
            return load_harmful_prompts(source)
    ds = load_source(source, dataset_label=label)
    cols = set(ds.column_names)
    if {"prompt", "refusal"} <= cols and cols & {"response", "continuation"}:
        return load_refusal_file(ds)
    if {"prompt", "response_0", "response_1", "is_response_0_safe"} <= cols:
        return load_pku_saferlhf(ds)
    if {"prompt", "response", "is_safe"} <= cols:
        return load_beavertails(ds)
    if {"question", "answer"} <= cols:
        return load_gsm8k(ds)
    if "instruction" in cols and cols & {"output", "response"}:
        return load_instructions(ds)
    if cols & {"goal", "Goal", "Behavior"}:
        return load_harmful_prompts(ds)
    if {"hard_text", "profession", "gender"} <= cols:
        return load_bias_in_bios(ds, task=bios_task)
    if "prompt" in cols or "text" in cols:
        return ds
    raise ValueError(
        f"{label}: unknown layout with columns {ds.column_names}; expected canonical `prompt`/`completion` (or "
        "`text`) rows, or a layout of hf_immunize.data (refusal triples, PKU-SafeRLHF, BeaverTails, GSM8K, Alpaca/"
        "Dolly, AdvBench/HarmBench/JailbreakBench, Bias in Bios)."
    )
