"""Batched, left-padded generation for evaluation (greedy by default), in the model's prompt format."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .formatting import encode_prompt

__all__ = ["generate_completions", "generate_from_ids"]


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    do_sample: bool = False,
    progress: bool = False,
    prompt_format: str = "raw",
    desc: str = "generating",
    **generate_kwargs,
) -> list[str]:
    """Completes every prompt and returns only the new text (special tokens dropped), in the order given.

    `prompt_format` is `"raw"` (the string as it is, with the tokenizer's special tokens, as TRL trains on it) or
    `"chat"` (a user turn through the chat template with the generation prompt; see
    :mod:`hf_immunize.evaluation.formatting`). Prompts are padded on the left so that every row's completion starts
    right after its own last token. The model is put in eval mode for the call and its previous mode restored.

    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> outs = generate_completions(tiny_causal_lm(), tiny_tokenizer(), ["User: hi\\nAssistant:"], max_new_tokens=3)
    >>> len(outs)
    1
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set `tokenizer.pad_token` (e.g. to the eos token) first.")
    encoded = [encode_prompt(tokenizer, p, prompt_format) for p in prompts]
    return generate_from_ids(
        model,
        tokenizer,
        encoded,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        progress=progress,
        desc=desc,
        **generate_kwargs,
    )


@torch.no_grad()
def generate_from_ids(
    model,
    tokenizer,
    encoded: list[list[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    do_sample: bool = False,
    progress: bool = False,
    desc: str = "generating",
    **generate_kwargs,
) -> list[str]:
    """Completes prompts that are already token ids (e.g. a judge's prompt rendered through its own chat template) and
    returns only the new text, in the order given; batched and left-padded as :func:`generate_completions`."""
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set `tokenizer.pad_token` (e.g. to the eos token) first.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    # A chat model's generation config may end turns on more tokens than the tokenizer's EOS (e.g. `<|eot_id|>`).
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos += [e for e in ([configured] if isinstance(configured, int) else configured or []) if e not in eos]
    outputs: list[str] = []
    try:
        starts = range(0, len(encoded), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            rows = encoded[start : start + batch_size]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # (B, T_prompt)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)  # (B, T_prompt)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=pad,
                eos_token_id=eos or None,
                **generate_kwargs,
            )  # (B, T_prompt + T_new)
            outputs += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return outputs
