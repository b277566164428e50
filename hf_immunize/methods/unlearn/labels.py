"""Generic labels of WHP: `argmax(v_B − α·ReLU(v_R − v_B))` per position of each forget block.

B (the baseline) reads the *translated* block, R (the reinforced model) the *original* one; the labels are hard
argmax tokens aligned to the original block and shifted right by one for Hugging Face's causal loss. Reference:
`../shared/reference/whp_unlearning.md` §4–§6 (Eldan & Russinovich, arXiv 2310.02238).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from hf_immunize.methods.unlearn.anchors import AnchorIndex, TranslatedBlock, translate_block

__all__ = [
    "FORBID_VALUES",
    "alpha_column",
    "build_generic_labels",
    "generic_labels",
    "make_blocks",
    "suggest_anchored_terms",
    "use_alpha",
]

FORBID_VALUES = ("mean", "-inf", "none")


def alpha_column(alpha: float) -> str:
    """Name of the extra label column of one α: `labels_alpha_2.5`."""
    return f"labels_alpha_{alpha:g}"


def make_blocks(tokenizer, texts: Sequence[str], block_size: int) -> list[list[int]]:
    """The corpus as one token stream (texts joined by a blank line, no special tokens) cut into non-overlapping
    blocks of exactly `block_size` tokens; the incomplete tail is dropped.

    >>> from hf_immunize.testing import tiny_tokenizer
    >>> blocks = make_blocks(tiny_tokenizer(), ["The cake needs flour and sugar."] * 10, 16)
    >>> {len(b) for b in blocks}
    {16}
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"`block_size` must be an integer >= 2, got {block_size!r}.")
    texts = [t for t in texts if t]
    stream = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n = len(stream) // block_size
    return [stream[b * block_size : (b + 1) * block_size] for b in range(n)]


def generic_labels(
    logits_base: torch.Tensor,
    logits_reinforced: torch.Tensor,
    block: TranslatedBlock,
    alpha: float | Sequence[float],
    forbid_value: str = "mean",
) -> torch.Tensor | list[torch.Tensor]:
    """Hugging Face labels of one block from B's logits on the translation and R's on the original.

    Args:
        logits_base: `(len(t), V)` raw logits of B on `block.translated`.
        logits_reinforced: `(T, V)` raw logits of R on `block.original`.
        alpha: α, or a list of α (one label row each, from the same logits).
        forbid_value: `"mean"` (faithful): B's logit of a forbidden token is replaced by its row's mean taken before
            the overwrite; `"-inf"`: removed outright (never chosen, even in degenerate rows); `"none"`: no
            forbidden tokens (an ablation, not the reference method).

    Returns `(T,)` int64 labels with `labels[0] = -100` and `labels[p + 1] = L[p]` (−100 where `mapping[p] == -1`).
    """
    if forbid_value not in FORBID_VALUES:
        raise ValueError(f"`forbid_value` must be one of {FORBID_VALUES}, got {forbid_value!r}.")
    alphas = [alpha] if isinstance(alpha, int | float) else list(alpha)
    zb = logits_base.float().clone()  # (len(t), V)
    zr = logits_reinforced.float()  # (T, V)
    length, T = zb.shape[0], zr.shape[0]
    if length != len(block.translated) or T != len(block.original):
        raise ValueError(
            f"logits do not match the block: B has {length} rows for {len(block.translated)} translated tokens, R "
            f"has {T} rows for {len(block.original)} original tokens."
        )
    if block.inserted and forbid_value != "none":
        row_mean = zb.mean(dim=-1, keepdim=True)  # (len(t), 1), taken before any overwrite
        for j, tokens in block.inserted:  # forbidden from just after the substitute's first token to the block end
            cols = torch.tensor(tokens, dtype=torch.long)
            fill = row_mean[j + 1 :] if forbid_value == "mean" else torch.full_like(row_mean[j + 1 :], -math.inf)
            zb[j + 1 :, cols] = fill.expand(-1, len(tokens))
    mapping = torch.tensor(block.mapping, dtype=torch.long)
    keep = mapping.ne(-1)  # (T,)
    gb = zb[mapping[keep]]  # (K, V)
    offset = torch.relu(zr[keep] - gb)  # (K, V)
    out = []
    for a in alphas:
        chosen = torch.full((T,), -100, dtype=torch.long)
        chosen[keep] = torch.argmax(gb - a * offset, dim=-1)
        labels = torch.full((T,), -100, dtype=torch.long)
        labels[1:] = chosen[:-1]  # HF scores the logits at p against labels[p + 1]: shift right once, here only
        out.append(labels)
    return out[0] if isinstance(alpha, int | float) else out


@contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _check_vocabularies(reinforced, baseline, tokenizer) -> None:
    """B and R are compared logit by logit: their output vocabularies must be the same, and cover the tokenizer."""
    sizes = {"reinforced": _vocab_size(reinforced)}
    if baseline is not None:
        sizes["baseline"] = _vocab_size(baseline)
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"the baseline and the reinforced model have different vocabularies ({sizes}): generic labels compare "
            "their logits token by token, so R must be a fine-tune of B with the same tokenizer."
        )
    if len(tokenizer) > sizes["reinforced"]:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the models' output vocabulary has {sizes['reinforced']}: "
            "pass the tokenizer the models were trained with."
        )


def _base_context(reinforced, baseline):
    """B's forward: the separate baseline, or the reinforced PEFT model with its adapter switched off."""
    if baseline is not None:
        return baseline, nullcontext
    if not hasattr(reinforced, "disable_adapter"):
        raise ValueError(
            "`baseline` is required unless `reinforced` is a PEFT model (a LoRA adapter on the baseline, as "
            "`reinforce(..., use_lora=True)` returns), whose adapter is switched off to get the baseline."
        )
    return reinforced, reinforced.disable_adapter


@torch.no_grad()
def _logits(model, rows: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """Per row, the `(len(row), V)` float32 logits (right-padded batch, padding masked)."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits  # (B, W, V)
    return [logits[b, : len(r)].float().cpu() for b, r in enumerate(rows)]


def build_generic_labels(
    reinforced,
    tokenizer,
    texts: Sequence[str],
    anchored_terms: dict[str, list[str]] | None,
    *,
    baseline=None,
    block_size: int = 512,
    alpha: float = 5.0,
    extra_alphas: Sequence[float] = (2.5, 10.0),
    seed: int = 0,
    forbid_value: str = "mean",
    batch_size: int = 4,
):
    """The WHP training set: one row per block with `input_ids` (original), `labels` (at `alpha`) and one
    `labels_alpha_<a>` column per α (`alpha` and every extra one).

    Args:
        reinforced: R. A PEFT model whose adapter was trained on the forget corpus (the default pipeline) serves as B
            too, with the adapter off, so only one set of base weights is ever in memory.
        baseline: B, when R is a separate full model.
        anchored_terms: merged dictionary (see :func:`load_anchored_terms`); `None`/empty = no translation.
        seed: seeds the substitute drawn for each key in block b (`numpy` `SeedSequence([seed, b])`).
    """
    from datasets import Dataset

    if not isinstance(alpha, int | float) or alpha < 0 or not math.isfinite(alpha):
        raise ValueError(f"`alpha` must be a finite number >= 0, got {alpha!r}.")
    for a in extra_alphas:
        if not isinstance(a, int | float) or a < 0 or not math.isfinite(a):
            raise ValueError(f"`extra_alphas` must hold finite numbers >= 0, got {a!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    _check_vocabularies(reinforced, baseline, tokenizer)
    blocks = make_blocks(tokenizer, texts, block_size)
    if not blocks:
        raise ValueError(f"the forget corpus holds fewer than `block_size`={block_size} tokens: no block to label.")
    index = AnchorIndex(tokenizer, anchored_terms) if anchored_terms else None
    translated = [translate_block(o, index, np.random.default_rng([seed, b])) for b, o in enumerate(blocks)]
    alphas = [alpha, *[a for a in extra_alphas if a != alpha]]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base_model, base_ctx = _base_context(reinforced, baseline)
    columns: dict[str, list[list[int]]] = {"input_ids": [], **{alpha_column(a): [] for a in alphas}}
    with _eval_mode(reinforced), _eval_mode(base_model):
        for start in range(0, len(translated), batch_size):
            chunk = translated[start : start + batch_size]
            zr = _logits(reinforced, [blk.original for blk in chunk], pad_id)
            with base_ctx():
                zb = _logits(base_model, [blk.translated for blk in chunk], pad_id)
            for blk, b_logits, r_logits in zip(chunk, zb, zr, strict=True):
                rows = generic_labels(b_logits, r_logits, blk, alphas, forbid_value)
                columns["input_ids"].append(blk.original)
                for a, row in zip(alphas, rows, strict=True):
                    columns[alpha_column(a)].append(row.tolist())
    columns["labels"] = list(columns[alpha_column(alpha)])  # every α keeps its column, so `use_alpha` can go back
    return Dataset.from_dict(columns)


def use_alpha(dataset, alpha: float):
    """`dataset` with the labels of another α (from its `labels_alpha_<a>` column) in `labels`."""
    name = alpha_column(alpha)
    if name not in dataset.column_names:
        extra = [c for c in dataset.column_names if c.startswith("labels_alpha_")]
        raise ValueError(f"no label set for alpha={alpha!r}: the dataset has {extra}; rebuild the labels with it.")
    return dataset.remove_columns("labels").rename_column(name, "labels")


@torch.no_grad()
def suggest_anchored_terms(
    reinforced,
    tokenizer,
    texts: Sequence[str],
    *,
    baseline=None,
    top_k: int = 50,
    min_count: int = 2,
    max_length: int = 512,
) -> list[tuple[str, float, int]]:
    """Ranks the words of `texts` by how much R raises their probability over B: candidates for the dictionary.

    For every word (letters, apostrophes, hyphens), the score is the mean over its occurrences of
    `Σ_tokens [log p_R − log p_B]` of its tokens in context (long texts are read in windows of `max_length` tokens).
    Returns `(word, score, count)` for the `top_k` highest, words seen at least `min_count` times. A starting point to
    curate by hand, not a dictionary.
    """
    import re

    base_model, base_ctx = _base_context(reinforced, baseline)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    with _eval_mode(reinforced), _eval_mode(base_model):
        for text in texts:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            gains: list[float] = []  # log p_R − log p_B of token p given the tokens before it in its window
            for start in range(0, len(ids), max_length):  # long texts in windows of max_length tokens
                window = ids[start : start + max_length]
                if len(window) < 2:
                    gains += [0.0] * len(window)
                    continue
                (zr,) = _logits(reinforced, [window], 0)
                with base_ctx():
                    (zb,) = _logits(base_model, [window], 0)
                target = torch.tensor(window[1:])[:, None]  # (T - 1, 1)
                gain = torch.log_softmax(zr[:-1], -1).gather(-1, target) - torch.log_softmax(zb[:-1], -1).gather(
                    -1, target
                )
                gains += [0.0, *gain.squeeze(-1).tolist()]  # a window's first token has no context: no score
            p = 0
            for match in re.finditer(r"[A-Za-z][A-Za-z'\-]*", text):
                word, (a, b) = match.group(0), match.span()
                while p < len(ids) and offsets[p][1] <= a:  # tokens that end before the word
                    p += 1
                q = p
                while q < len(ids) and offsets[q][0] < b:  # tokens that overlap the word
                    q += 1
                if q > p:
                    sums[word] = sums.get(word, 0.0) + sum(gains[p:q])
                    counts[word] = counts.get(word, 0) + 1
    ranked = [(w, sums[w] / counts[w], counts[w]) for w in sums if counts[w] >= min_count]
    ranked.sort(key=lambda x: -x[1])
    return ranked[:top_k]
