"""Unlearning evaluation: keyword-graded completion familiarity, probability familiarity, forget/retain perplexity.

The paper (Eldan & Russinovich, arXiv 2310.02238) grades completions of book prompts with GPT-4 on a 0–3 scale; here
an offline **keyword grader** stands in for it (never report the two side by side):

- class 3: the completion names an anchored term (a dictionary key, whole word, case-insensitive) not in the prompt;
- class 2: else it names a theme term (typical of the universe, not unique to it) not in the prompt;
- else 0 (class 1, "lucky match", needs a judge and is not scored).

Familiarity = `(5·n₃ + n₂) / N` (the paper's weights, as magikarp01/tasks `hp/HPFamiliarity.py` computes them).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import torch

from hf_immunize.core.tokens import surface_forms
from hf_immunize.evaluation.generation import generate_completions
from hf_immunize.evaluation.perplexity import perplexity

__all__ = [
    "completion_familiarity",
    "evaluate_unlearning",
    "grade_familiarity",
    "keyword_class",
    "lm_eval_tasks",
    "probability_familiarity",
]


def _contains(text: str, term: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text, flags=re.IGNORECASE) is not None


def keyword_class(prompt: str, completion: str, anchored_terms: Sequence[str], theme_terms: Sequence[str]) -> int:
    """3, 2 or 0 for one completion (see the module docstring).

    >>> keyword_class("Dorothy went to", " the Emerald City.", ["Emerald City", "Dorothy"], ["wizard"])
    3
    >>> keyword_class("Dorothy went to", " see a wizard.", ["Emerald City", "Dorothy"], ["wizard"])
    2
    >>> keyword_class("Dorothy went to", " Dorothy's house.", ["Dorothy"], [])
    0
    """
    if any(_contains(completion, t) and not _contains(prompt, t) for t in anchored_terms):
        return 3
    if any(_contains(completion, t) and not _contains(prompt, t) for t in theme_terms):
        return 2
    return 0


def grade_familiarity(
    prompts: Sequence[str], completions: Sequence[str], anchored_terms: Sequence[str], theme_terms: Sequence[str] = ()
) -> dict:
    """Keyword-graded familiarity: `score` = (5·n₃ + n₂)/N, `class3_rate`, `class2_rate` and per-sample `classes`."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; they must pair up.")
    if not prompts:
        raise ValueError("`prompts` is empty.")
    terms = list(anchored_terms)
    classes = [keyword_class(p, c, terms, theme_terms) for p, c in zip(prompts, completions, strict=True)]
    n = len(classes)
    n3, n2 = classes.count(3), classes.count(2)
    return {
        "score": (5 * n3 + n2) / n,
        "class3_rate": n3 / n,
        "class2_rate": n2 / n,
        "n": n,
        "grader": "keyword",
        "classes": classes,
    }


def completion_familiarity(
    model,
    tokenizer,
    prompts: Sequence[str],
    anchored_terms: Sequence[str],
    theme_terms: Sequence[str] = (),
    *,
    max_new_tokens: int = 24,
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """Greedy completions of `prompts`, graded by :func:`grade_familiarity` (the completions are returned too)."""
    completions = generate_completions(
        model,
        tokenizer,
        list(prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc="completing familiarity prompts",
    )
    result = grade_familiarity(prompts, completions, anchored_terms, theme_terms)
    result["completions"] = completions
    return result


@torch.no_grad()
def probability_familiarity(model, tokenizer, prompts: Sequence[str], targets: Sequence[Sequence[str] | str]) -> dict:
    """Mean over prompts of the probability the model puts, right after the prompt, on the first token of any surface
    variant of an expected term (bare, space-led, newline-led; the union of first tokens, each counted once).

    Returns `score` (the mean) and `per_prompt`.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} target lists; they must pair up.")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    per_prompt = []
    try:
        for prompt, terms in zip(prompts, targets, strict=True):
            terms = [terms] if isinstance(terms, str) else list(terms)
            first = sorted({forms[0] for t in terms for forms in surface_forms(tokenizer, t).values()})
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()  # (V,)
            per_prompt.append(float(torch.softmax(logits, -1)[first].sum()))
    finally:
        model.train(was)
    return {"score": sum(per_prompt) / max(len(per_prompt), 1), "per_prompt": per_prompt}


def lm_eval_tasks(model, tokenizer, tasks: Sequence[str], **kwargs) -> dict | None:
    """General-capability scores with EleutherAI's lm-evaluation-harness (`pip install lm-eval`), e.g. the paper's
    `["arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande"]`.

    Returns `None` (with a warning) when lm-eval is not installed. Its tasks download their data from the Hub: run it
    online. Extra `kwargs` go to `lm_eval.simple_evaluate`.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        warnings.warn("lm-eval is not installed (pip install lm-eval): general benchmarks skipped.", stacklevel=2)
        return None
    out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer), tasks=list(tasks), **kwargs)
    return out["results"]


def evaluate_unlearning(
    model,
    tokenizer,
    *,
    prompts: Sequence[str],
    targets: Sequence[Sequence[str] | str],
    anchored_terms: Sequence[str],
    theme_terms: Sequence[str] = (),
    forget_texts: Sequence[str] | None = None,
    retain_texts: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    lm_eval: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """Every offline unlearning metric in one dict (familiarity, probability familiarity, perplexities)."""
    completion = completion_familiarity(
        model, tokenizer, prompts, anchored_terms, theme_terms, max_new_tokens=max_new_tokens, progress=progress
    )
    out = {
        "familiarity": completion["score"],
        "class3_rate": completion["class3_rate"],
        "class2_rate": completion["class2_rate"],
        "grader": "keyword",
        "prob_familiarity": probability_familiarity(model, tokenizer, prompts, targets)["score"],
        "completions": completion["completions"],
    }
    if forget_texts:
        out["forget_ppl"] = perplexity(model, tokenizer, list(forget_texts))
    if retain_texts:
        out["retain_ppl"] = perplexity(model, tokenizer, list(retain_texts))
    if lm_eval:
        out["lm_eval"] = lm_eval_tasks(model, tokenizer, lm_eval)
    for key in ("forget_ppl", "retain_ppl"):
        if key in out and not math.isfinite(out[key]):
            warnings.warn(f"{key} is not finite ({out[key]}).", stacklevel=2)
    return out
