"""Batched, left-padded generation for evaluation (greedy by default)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

__all__ = ["generate_completions"]


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    do_sample: bool = False,
    progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """Completes every prompt and returns only the new text (special tokens dropped), in the order given.

    Prompts are padded on the left so that every row's completion starts right after its own last token; the
    tokenizer's own `padding_side` is restored afterwards. The model is put in eval mode for the call and its previous
    mode restored.

    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> outs = generate_completions(tiny_causal_lm(), tiny_tokenizer(), ["User: hi\\nAssistant:"], max_new_tokens=3)
    >>> len(outs)
    1
    """
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set `tokenizer.pad_token` (e.g. to the eos token) first.")
    prompts = list(prompts)
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", disable=not progress):
            # The tokenizer's own special tokens (e.g. Llama's BOS), as TRL adds them when it trains on these prompts.
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **generate_kwargs,
            )  # (B, T_prompt + T_new)
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs
