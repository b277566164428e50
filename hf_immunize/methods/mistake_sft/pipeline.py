"""The data pipeline of mistake analysis: steps 1, 2 and 4 generate text, step 3 builds the training set.

| step | function | prompt | output |
| --- | --- | --- | --- |
| 1 | :func:`induce_mistakes` | induction prompt (harmful cue), sampled | bad responses y_bad (refusals dropped) |
| 2 | :func:`generate_analyses` | guided analysis prompt ("the reply is harmful") | critiques c |
| 3 | :func:`build_mistake_dataset` | unguided analysis prompt (no cue) -> c, mixed with helpful pairs | SFT rows |
| 4 | :func:`guided_generate` | response prompt (harmless cue), greedy | answers of the trained model |

Generation is batched (prompts sorted by length, left padding, the tokenizer's padding side restored), runs under
`torch.no_grad()` in eval mode, shows a progress bar, and samples on a forked RNG seeded from `seed`, so the same
model and seed build the same data set twice and the caller's RNG stream is left untouched.

The structural invariants hold by construction and are checked again in :func:`build_mistake_dataset`: no training
prompt contains a cue, and no completion contains a bad response (critiques that quote it verbatim are dropped).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from hf_immunize.methods.mistake_sft.mistake_sft_config import MistakeSFTConfig
from hf_immunize.methods.mistake_sft.prompts import (  # noqa: F401  (the prompts stay importable from here)
    PROMPT_SETTINGS,
    _guided_sentence,
    analysis_prompt,
    cues_in,
    guided_prompt,
    induce_prompt,
    plain_prompt,
    prompt_builders,
)

__all__ = [
    "PROMPT_SETTINGS",
    "analysis_prompt",
    "build_mistake_dataset",
    "cues_in",
    "generate_analyses",
    "generate_texts",
    "guided_generate",
    "guided_prompt",
    "induce_mistakes",
    "induce_prompt",
    "plain_prompt",
    "prompt_builders",
]

logger = logging.getLogger(__name__)


# ---- generation -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "generating",
) -> tuple[list[str], list[bool]]:
    """Batched generation; returns the new text of every prompt (in order) and whether it hit `max_new_tokens`.

    Prompts are sorted by length so that each batch holds similar lengths (less padding), padded on the left, and
    tokenized as the trainer tokenizes them (with the tokenizer's special tokens).
    """
    prompts = list(prompts)
    if not prompts:
        return [], []
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set `tokenizer.pad_token` first.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    texts: list[str | None] = [None] * len(prompts)
    truncated: list[bool] = [False] * len(prompts)
    device = next(model.parameters()).device
    sampling = {"do_sample": do_sample}
    if do_sample:
        sampling.update(temperature=temperature, top_p=top_p)
    was_training, old_side, old_pad = model.training, tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=desc, disable=not progress, total=len(starts)):
                rows = order[start : start + batch_size]
                batch = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True).to(device)
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id, **sampling
                )  # (B, T_prompt + T_new)
                new = out[:, batch["input_ids"].shape[1] :]  # (B, T_new)
                finished = new.eq(eos_id).any(dim=-1) if eos_id is not None else torch.zeros(len(rows), dtype=bool)
                decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(rows):
                    texts[i] = decoded[j]
                    truncated[i] = bool(not finished[j]) and new.shape[1] >= max_new_tokens
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)
    return texts, truncated


def _refusal_judge(cfg: MistakeSFTConfig):
    from hf_immunize.evaluation.scorers import RefusalKeywordScorer

    return RefusalKeywordScorer(cfg.refusal_keywords)


def _check_lengths(name: str, values, n: int) -> list:
    values = list(values)
    if len(values) != n:
        raise ValueError(f"`{name}` must hold one value per instruction: got {len(values)} for {n} instructions.")
    return values


# ---- step 1 ---------------------------------------------------------------------------------------------------------


def induce_mistakes(
    model,
    tokenizer,
    instructions: Sequence[str],
    cfg: MistakeSFTConfig,
    *,
    unsafe_responses: Sequence[str | None] | None = None,
    inputs: Sequence[str | None] | None = None,
    progress: bool = True,
    return_stats: bool = False,
):
    """Step 1, guided mistake induction: one bad response per instruction.

    `cfg.mistake_source="induced"` samples the model's answer to the induction prompt (harmful cue); answers the
    refusal judge classes as refusals, and empty ones, are not mistakes: they are dropped, or replaced by the data
    set's unsafe response for that instruction when `cfg.refusal_fallback_to_dataset` and `unsafe_responses` are
    given. `"dataset"` takes `unsafe_responses` as they are (no model call; `model` may be None).

    Returns a `Dataset` with columns `instruction, input, response, mistake_source` (`"induced"`, `"dataset"` or
    `"dataset_fallback"`), plus, with `return_stats=True`, a dict of counts (also logged).
    """
    instructions = list(instructions)
    n = len(instructions)
    inputs = _check_lengths("inputs", inputs, n) if inputs is not None else [None] * n
    if unsafe_responses is not None:
        unsafe_responses = _check_lengths("unsafe_responses", unsafe_responses, n)
    stats = Counter(instructions=n)
    rows = []
    if cfg.mistake_source == "dataset":
        if unsafe_responses is None:
            raise ValueError(
                "`mistake_source`='dataset' needs `unsafe_responses` (one unsafe answer per instruction)."
            )
        for instruction, input_, response in zip(instructions, inputs, unsafe_responses):
            if response and response.strip():
                rows.append(_mistake_row(instruction, input_, response, "dataset"))
            else:
                stats["dropped_empty"] += 1
    else:
        if model is None or tokenizer is None:
            raise ValueError("`mistake_source`='induced' needs a `model` and a `tokenizer` to generate the mistakes.")
        prompts = [induce_prompt(x, cfg, input=i) for x, i in zip(instructions, inputs)]
        responses, _ = generate_texts(
            model,
            tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.generation_batch_size,
            do_sample=cfg.induce_do_sample,
            temperature=cfg.induce_temperature,
            top_p=cfg.induce_top_p,
            seed=cfg.seed,
            progress=progress,
            desc="step 1: inducing mistakes",
        )
        judge = _refusal_judge(cfg) if cfg.refusal_filter else None
        for k, (instruction, input_, response) in enumerate(zip(instructions, inputs, responses)):
            reason = None
            if not response.strip():
                reason = "dropped_empty"
            elif judge is not None and judge.is_refusal(response):
                reason = "dropped_refusal"
            if reason is None:
                rows.append(_mistake_row(instruction, input_, response, "induced"))
                continue
            stats[reason] += 1
            fallback = unsafe_responses[k] if unsafe_responses is not None else None
            if cfg.refusal_fallback_to_dataset and fallback and fallback.strip():
                rows.append(_mistake_row(instruction, input_, fallback, "dataset_fallback"))
                stats["fallback_to_dataset"] += 1
    stats["kept"] = len(rows)
    logger.info("mistake induction: %s", dict(stats))
    dataset = Dataset.from_list(rows) if rows else _empty(["instruction", "input", "response", "mistake_source"])
    return (dataset, dict(stats)) if return_stats else dataset


def _mistake_row(instruction, input_, response, source) -> dict:
    return {"instruction": instruction, "input": input_ or "", "response": response, "mistake_source": source}


def _empty(columns: list[str]) -> Dataset:
    return Dataset.from_dict({c: [] for c in columns})


# ---- step 2 ---------------------------------------------------------------------------------------------------------


def generate_analyses(
    model, tokenizer, pairs: Dataset, cfg: MistakeSFTConfig, *, progress: bool = True, return_stats: bool = False
):
    """Step 2, guided analysis: the model critiques each (instruction, bad response) after being told it is harmful.

    `pairs` has columns `instruction, response` (optional `input`), e.g. the output of :func:`induce_mistakes`.
    Returns `pairs` plus `analysis` and `truncated` (the critique hit `cfg.max_new_tokens`); empty critiques are
    dropped (counted in the stats).
    """
    _require(pairs, ("instruction", "response"), "pairs")
    inputs = pairs["input"] if "input" in pairs.column_names else [None] * len(pairs)
    prompts = [
        analysis_prompt(x, y, cfg, guided=True, input=i)
        for x, y, i in zip(pairs["instruction"], pairs["response"], inputs)
    ]
    analyses, truncated = generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.generation_batch_size,
        do_sample=cfg.analysis_do_sample,
        temperature=cfg.induce_temperature,
        top_p=cfg.induce_top_p,
        seed=cfg.seed + 1,
        progress=progress,
        desc="step 2: guided analyses",
    )
    with_analyses = pairs.add_column("analysis", analyses).add_column("truncated", truncated)
    keep = [k for k, text in enumerate(analyses) if text.strip()]
    stats = {
        "pairs": len(pairs),
        "dropped_empty": len(pairs) - len(keep),
        "truncated": sum(truncated),
        "kept": len(keep),
    }
    logger.info("guided analyses: %s", stats)
    result = with_analyses.select(keep)
    return (result, stats) if return_stats else result


def _require(ds: Dataset, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"`{name}` must have the columns {list(columns)}; missing {missing}, found {ds.column_names}."
        )


# ---- step 3 ---------------------------------------------------------------------------------------------------------


def build_mistake_dataset(
    pairs: Dataset,
    analyses: Sequence[str] | None = None,
    helpful: Dataset | None = None,
    cfg: MistakeSFTConfig | None = None,
    *,
    seed: int | None = None,
    return_stats: bool = False,
):
    """Step 3's training set: unguided analysis prompt -> critique, mixed with helpful pairs; `prompt, completion,
    source` rows (`source` is "analysis" or "helpful"), shuffled.

    Args:
        pairs: `instruction, response` (optional `input`) rows, with an `analysis` column unless `analyses` is given.
        analyses: the critiques, one per pair (overrides `pairs["analysis"]`).
        helpful: helpful rows, either `instruction, output` (optional `input`; formatted with the plain template) or
            `prompt, completion` (used as they are). `cfg.helpful_ratio` rows per analysis row are drawn without
            replacement (all of them when it is None or larger than the set).
        cfg: the config (templates, cues, ratio).
        seed: seeds the helpful draw and the shuffle (default `cfg.seed`).

    Critiques that quote their bad response verbatim are dropped (the bad response must never be a target), and so
    are pairs whose bad response contains a cue (a model may echo one). Raises `ValueError` when a training prompt
    would still contain a cue (a cue in an instruction or a helpful prompt is a data error).
    """
    if cfg is None:
        raise ValueError("`cfg` (a MistakeSFTConfig) is required: it holds the templates and the mix ratio.")
    seed = cfg.seed if seed is None else seed
    if analyses is None:
        _require(pairs, ("instruction", "response", "analysis"), "pairs")
        analyses = pairs["analysis"]
    else:
        _require(pairs, ("instruction", "response"), "pairs")
        analyses = _check_lengths("analyses", analyses, len(pairs))
    inputs = pairs["input"] if "input" in pairs.column_names else [None] * len(pairs)
    stats = Counter()
    rows = []
    for instruction, response, input_, analysis in zip(pairs["instruction"], pairs["response"], inputs, analyses):
        if not analysis or not analysis.strip():
            stats["dropped_empty_analysis"] += 1
            continue
        if response.strip() and response.strip() in analysis:
            stats["dropped_quoting_response"] += 1
            continue
        if cues_in(response, cfg):  # a generated answer that repeats a cue would carry it into a training prompt
            stats["dropped_cue_in_response"] += 1
            continue
        prompt = analysis_prompt(instruction, response, cfg, guided=False, input=input_)
        rows.append({"prompt": prompt, "completion": analysis, "source": "analysis"})
    n_analysis = len(rows)

    helpful_rows = _helpful_rows(helpful, cfg) if helpful is not None else []
    rng = random.Random(seed)
    wanted = len(helpful_rows) if cfg.helpful_ratio is None else round(cfg.helpful_ratio * n_analysis)
    if wanted > len(helpful_rows):
        logger.warning(
            "helpful_ratio=%s asks for %d helpful rows but only %d were given; using all of them.",
            cfg.helpful_ratio,
            wanted,
            len(helpful_rows),
        )
        wanted = len(helpful_rows)
    rows += rng.sample(helpful_rows, wanted) if wanted < len(helpful_rows) else helpful_rows
    rng.shuffle(rows)

    for row in rows:
        found = cues_in(row["prompt"], cfg)
        if found:
            raise ValueError(
                f"a {row['source']} training prompt contains the cue(s) {found}: cues belong to steps 1, 2 and 4 "
                f"only. Prompt: {row['prompt']!r}"
            )
    stats.update(analysis=n_analysis, helpful=len(rows) - n_analysis)
    logger.info("mistake analysis data set: %s", dict(stats))
    dataset = Dataset.from_list(rows) if rows else _empty(["prompt", "completion", "source"])
    return (dataset, dict(stats)) if return_stats else dataset


def _helpful_rows(helpful: Dataset, cfg: MistakeSFTConfig) -> list[dict]:
    columns = helpful.column_names
    if {"instruction", "output"} <= set(columns):
        inputs = helpful["input"] if "input" in columns else [None] * len(helpful)
        return [
            {"prompt": plain_prompt(x, cfg, input=i), "completion": y, "source": "helpful"}
            for x, i, y in zip(helpful["instruction"], inputs, helpful["output"])
        ]
    if {"prompt", "completion"} <= set(columns):
        return [
            {"prompt": p, "completion": c, "source": "helpful"}
            for p, c in zip(helpful["prompt"], helpful["completion"])
        ]
    raise ValueError(
        f"`helpful` must have the columns ['instruction', 'output'] (optional 'input') or ['prompt', 'completion'], "
        f"found {columns}."
    )


# ---- step 4 ---------------------------------------------------------------------------------------------------------


def guided_generate(
    model,
    tokenizer,
    instructions: Sequence[str],
    cfg: MistakeSFTConfig,
    *,
    inputs: Sequence[str | None] | None = None,
    guided: bool = True,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Step 4: answers with the harmless cue in the prompt (`guided=False`: the plain prompt, for the ablation)."""
    instructions = list(instructions)
    inputs = _check_lengths("inputs", inputs, len(instructions)) if inputs is not None else [None] * len(instructions)
    build = guided_prompt if guided else plain_prompt
    prompts = [build(x, cfg, input=i) for x, i in zip(instructions, inputs)]
    texts, _ = generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens or cfg.max_new_tokens,
        batch_size=cfg.generation_batch_size,
        do_sample=cfg.respond_do_sample,
        temperature=cfg.induce_temperature,
        top_p=cfg.induce_top_p,
        seed=cfg.seed + 2,
        progress=progress,
        desc="step 4: guided generation",
    )
    return texts
