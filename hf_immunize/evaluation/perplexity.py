"""Perplexity of a causal LM: token-weighted over texts, in sliding windows for long texts (:func:`perplexity`), and
per text (:func:`per_text_nll`)."""

from __future__ import annotations

import math

from .scorer_base import _check_positive_int, _is_list_like

__all__ = ["per_text_nll", "perplexity"]


def _windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows `(begin, end, n_new)` over a sequence: window `[begin, end)` scores its last `n_new` tokens.

    Every token is a target exactly once (the very first token of a window can never be predicted, so it is lost
    when `n_new` covers the whole window, i.e. when windows do not overlap).
    """
    windows, previous_end, begin = [], 0, 0
    while True:
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, end - previous_end))
        previous_end = end
        if end >= n_tokens:
            return windows
        begin += stride


def _nll_sums(model, tokenizer, texts, batch_size, max_length, stride) -> tuple[list[float], list[int]]:
    """Per text: the summed negative log-likelihood (nats) of its predicted tokens, and how many there are."""
    import torch

    if not _is_list_like(texts):
        raise ValueError(f"`texts` must be a list of strings, got {type(texts).__name__}.")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"`texts[{i}]` must be a string, got {type(text).__name__}: {text!r}.")
    batch_size = _check_positive_int("batch_size", batch_size)
    if max_length is None:
        limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        max_length = min(limits) if limits else None
    else:
        max_length = _check_positive_int("max_length", max_length)
    if max_length is not None and max_length < 2:
        raise ValueError(f"`max_length` must be >= 2 (a window needs a context token), got {max_length}.")
    if stride is not None:
        stride = _check_positive_int("stride", stride)
        if max_length is not None and stride > max_length:
            raise ValueError(f"`stride` ({stride}) must not exceed `max_length` ({max_length}).")

    # Segments (text index, token ids, number of scored tokens at the end), then batched right-padded forward passes.
    segments: list[tuple[int, list[int], int]] = []
    for index, ids in enumerate(tokenizer(texts)["input_ids"]):
        window = max_length or max(len(ids), 1)
        for begin, end, n_new in _windows(len(ids), window, stride or window):
            if end - begin >= 2:
                segments.append((index, ids[begin:end], min(n_new, end - begin - 1)))
    sums, counts = [0.0] * len(texts), [0] * len(texts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(segments), batch_size):
                chunk = segments[start : start + batch_size]
                width = max(len(ids) for _, ids, _ in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                scored = torch.zeros((len(chunk), width), dtype=torch.bool)  # positions whose token is a target
                for row, (_, ids, n_new) in enumerate(chunk):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    attention[row, : len(ids)] = 1
                    scored[row, len(ids) - n_new : len(ids)] = True
                input_ids, attention, scored = input_ids.to(device), attention.to(device), scored.to(device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
                log_probs = torch.log_softmax(logits, dim=-1)
                target_lp = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
                mask = scored[:, 1:]
                nll = -(target_lp * mask).sum(-1)
                for row, (index, _, _) in enumerate(chunk):
                    sums[index] += float(nll[row])
                    counts[index] += int(mask[row].sum())
    finally:
        model.train(was_training)
    return sums, counts


def per_text_nll(
    model,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    stride: int | None = None,
) -> list[float]:
    """Mean negative log-likelihood (nats per predicted token) of each text; NaN for a text with fewer than 2 tokens.

    Same arguments as :func:`perplexity`.

    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> values = per_text_nll(tiny_causal_lm(), tiny_tokenizer(), ["The cake needs flour.", "x"])
    >>> values[0] > 0, math.isnan(values[1])
    (True, True)
    """
    sums, counts = _nll_sums(model, tokenizer, texts, batch_size, max_length, stride)
    return [s / c if c else math.nan for s, c in zip(sums, counts)]


def perplexity(
    model,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    stride: int | None = None,
) -> float:
    """Perplexity of a causal LM on `texts`: exp of the token-weighted mean NLL over all predicted tokens.

    Every token after the first of each text is predicted from the ones before it (the tokenizer's special tokens, e.g.
    a BOS, are included as it adds them). Texts are batched with right padding, which is masked out; the model runs
    under ``torch.no_grad()`` in eval mode and its previous mode is restored. A text longer than `max_length` tokens
    (default: the smaller of the model's and the tokenizer's limit) is scored in sliding windows of `max_length`
    tokens that start `stride` tokens apart (default `max_length`: disjoint windows); each window scores only the
    tokens the previous one did not, with the overlap as context.

    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> perplexity(tiny_causal_lm(), tiny_tokenizer(), ["The cake needs flour and sugar."]) > 1.0
    True
    """
    sums, counts = _nll_sums(model, tokenizer, texts, batch_size, max_length, stride)
    total = sum(counts)
    if total == 0:
        raise ValueError("`texts` hold no predicted token: every text has fewer than 2 tokens.")
    return math.exp(sum(sums) / total)
