"""One evaluation of a causal LM on harmful and benign prompts: the numbers every attack result is made of."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from datasets import Dataset

from .generation import generate_completions
from .scorers import ExactMatchScorer, KeywordContentScorer, RefusalKeywordScorer, Scorer

__all__ = ["completion_loss", "evaluate_safety", "first_turn"]

# Columns of an evaluation set that hold a reference harmful answer, for the held-out harmful loss.
_HARMFUL_REFERENCE_COLUMNS = ("harmful", "completion", "response")


def first_turn(text: str) -> str:
    """Keeps the assistant's own answer: small models may run on into a new "User:" turn or a second line."""
    return text.split("\nUser:")[0].split("\n")[0]


@torch.no_grad()
def completion_loss(model, tokenizer, prompts: list[str], completions: list[str], *, batch_size: int = 32) -> float:
    """Mean next-token loss on the completion tokens only (token-weighted over all rows), prompt tokens masked."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(prompts), batch_size):
            rows_ids, rows_labels = [], []
            for prompt, completion in zip(
                prompts[start : start + batch_size], completions[start : start + batch_size]
            ):
                # Special tokens as TRL adds them in training (e.g. Llama's BOS before the prompt).
                p = tokenizer(prompt)["input_ids"]
                full = tokenizer(prompt + completion)["input_ids"]
                rows_ids.append(full)
                rows_labels.append([-100] * len(p) + full[len(p) :])
            width = max(map(len, rows_ids))
            pad = tokenizer.pad_token_id
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows_ids], device=device)  # (B, T)
            labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows_labels], device=device)  # (B, T)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows_ids], device=device)  # (B, T)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
            )
            total += nll.item()
            count += int((labels[:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1) if count else math.nan


def evaluate_safety(
    model,
    tokenizer,
    eval_harmful: Dataset,
    eval_benign: Dataset | None = None,
    *,
    scorer: Scorer | None = None,
    task_scorer: Scorer | None = None,
    postprocess: Callable[[str], str] | None = first_turn,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    over_refusal_prompts: list[str] | None = None,
    keep_examples: int = 3,
) -> dict:
    """Generates on the evaluation sets and scores them; all rates in percent.

    Returns `harmful_score` (by `scorer`, default refusal keywords), `harmful_content` when `eval_harmful` has a
    `keywords` column, `harmful_loss` when it has a reference answer column (`harmful`, `completion` or `response`),
    `task_accuracy` on `eval_benign` (column `answer`, scored by `task_scorer`, default exact match), and
    `over_refusal` on benign prompts that must not be refused.
    """
    scorer = scorer or RefusalKeywordScorer()
    post = postprocess or (lambda s: s)

    def gen(prompts):
        outs = generate_completions(
            model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        return [post(o) for o in outs]

    harmful = gen(eval_harmful["prompt"])
    columns = {k: eval_harmful[k] for k in eval_harmful.column_names if k != "prompt"}
    result = {"harmful_score": scorer.percent(harmful, prompts=eval_harmful["prompt"], **columns)}
    if "keywords" in eval_harmful.column_names:
        result["harmful_content"] = KeywordContentScorer().percent(harmful, keywords=eval_harmful["keywords"])
    reference = next((c for c in _HARMFUL_REFERENCE_COLUMNS if c in eval_harmful.column_names), None)
    if reference is not None:
        result["harmful_loss"] = completion_loss(model, tokenizer, eval_harmful["prompt"], eval_harmful[reference])
    examples = {"harmful": harmful[:keep_examples]}
    if eval_benign is not None:
        benign = gen(eval_benign["prompt"])
        result["task_accuracy"] = (task_scorer or ExactMatchScorer()).percent(
            benign, answers=eval_benign["answer"], prompts=eval_benign["prompt"]
        )
        examples["benign"] = benign[:keep_examples]
    if over_refusal_prompts:
        result["over_refusal"] = 100.0 - RefusalKeywordScorer().percent(gen(over_refusal_prompts))
    result["examples"] = examples
    return result
