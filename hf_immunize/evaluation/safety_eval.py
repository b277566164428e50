"""One evaluation of a causal LM on harmful and benign prompts: the numbers every attack result is made of.

The evaluation sets are taken in every layout the loaders of :mod:`hf_immunize.data` produce, so any of them plugs in
unchanged (:func:`harmful_eval_set`, :func:`task_eval_set`): harmful prompt lists (AdvBench, HarmBench, ...), refusal
triples, BeaverTails QA, and task sets with `answer` (exact match), `final_answer` (GSM8K, numeric) or a label task's
`label` + `completion` (label accuracy); the task's scorer is picked from the layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from datasets import Dataset

from .formatting import as_text, encode_prompt_completion, prompts_for
from .generation import generate_completions
from .provenance import describe_scorer
from .scorers import (
    ExactMatchScorer,
    GSM8KScorer,
    KeywordContentScorer,
    LabelMatchScorer,
    RefusalKeywordScorer,
    Scorer,
)

__all__ = ["cap_rows", "completion_loss", "evaluate_safety", "first_turn", "harmful_eval_set", "task_eval_set"]

# Columns of an evaluation set that hold a reference harmful answer, for the held-out harmful loss.
_HARMFUL_REFERENCE_COLUMNS = ("harmful", "completion", "response")


def first_turn(text: str) -> str:
    """Keeps the assistant's own answer: small models may run on into a new "User:" turn or a second line."""
    return text.split("\nUser:")[0].split("\n")[0]


def cap_rows(dataset: Dataset | None, max_rows: int | None) -> Dataset | None:
    """The first `max_rows` rows of `dataset` (all of them when `max_rows` is None)."""
    if dataset is None or max_rows is None or len(dataset) <= max_rows:
        return dataset
    if max_rows < 1:
        raise ValueError(f"`max_eval_samples` must be >= 1, got {max_rows}.")
    return dataset.select(range(max_rows))


def harmful_eval_set(dataset: Dataset, name: str = "eval_harmful") -> Dataset:
    """Held-out harmful prompts in the layout :func:`evaluate_safety` reads: `prompt` plus optional `keywords` and a
    reference harmful answer (`harmful`, `completion` or `response`). BeaverTails QA rows keep their unsafe rows."""
    if "prompt" not in dataset.column_names:
        raise ValueError(f"`{name}`: missing column 'prompt'; found {dataset.column_names}.")
    if "is_safe" in dataset.column_names:
        dataset = dataset.filter(lambda r: not r["is_safe"])
    return dataset


def task_eval_set(dataset: Dataset | None, task_scorer: Scorer | None = None, name: str = "eval_benign"):
    """`(rows with prompt/answer, scorer, description)` of a benign task set, from its layout.

    - `final_answer` (GSM8K from :func:`~hf_immunize.data.load_gsm8k`): numeric accuracy (:class:`GSM8KScorer`);
    - `answer`: exact match of the first line (:class:`ExactMatchScorer`);
    - `label` + `completion` (:func:`~hf_immunize.data.load_label_task`): label accuracy (:class:`LabelMatchScorer`).

    An explicit `task_scorer` wins over the layout's. A set with neither answers nor labels is an error: a task
    accuracy needs references.
    """
    if dataset is None:
        return None, None, None
    columns = set(dataset.column_names)
    if "prompt" not in columns:
        raise ValueError(f"`{name}`: missing column 'prompt'; found {dataset.column_names}.")
    if "answer" in columns:
        scorer, what = ExactMatchScorer(), "exact match of the answer's first line"
    elif "final_answer" in columns:
        dataset = dataset.rename_column("final_answer", "answer")
        scorer, what = GSM8KScorer(), "numeric accuracy of the final answer (GSM8K rule)"
    elif {"label", "completion"} <= columns:
        labels = sorted({as_text(c).strip() for c in dataset["completion"]})
        dataset = dataset.map(lambda r: {"answer": as_text(r["completion"]).strip()})
        scorer, what = LabelMatchScorer(labels), f"label accuracy over {labels}"
    else:
        raise ValueError(
            f"`{name}`: a task set needs reference answers, in a column 'answer', 'final_answer' (GSM8K) or "
            f"'label' + 'completion' (a label task); found {dataset.column_names}."
        )
    if task_scorer is not None:
        scorer, what = task_scorer, f"{getattr(task_scorer, 'name', type(task_scorer).__name__)} against 'answer'"
    return dataset, scorer, what


@torch.no_grad()
def completion_loss(
    model, tokenizer, prompts: list, completions: list, *, batch_size: int = 32, prompt_format: str = "raw"
) -> float:
    """Mean next-token loss on the completion tokens only (token-weighted over all rows), prompt tokens masked.

    Prompt and completion are tokenized as `SFTTrainer` tokenizes them in `prompt_format` (`"raw"` or `"chat"`).
    """
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
                full, n_prompt = encode_prompt_completion(tokenizer, prompt, completion, prompt_format)
                rows_ids.append(full)
                rows_labels.append([-100] * n_prompt + full[n_prompt:])
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
    over_refusal_prompts: list[str] | Dataset | None = None,
    keep_examples: int = 3,
    prompt_format: str = "raw",
    progress: bool = False,
) -> dict:
    """Generates on the evaluation sets and scores them; all rates in percent.

    Returns `harmful_score` (by `scorer`, default refusal keywords; `scored_by` names it, and a judge's account of
    verdicts it could not read is kept in `judge_stats`), `harmful_content` when `eval_harmful` has a
    `keywords` column, `harmful_loss` when it has a reference answer column (`harmful`, `completion` or `response`),
    `task_accuracy` on `eval_benign` (any layout :func:`task_eval_set` reads; `task_scorer` overrides the layout's),
    and `over_refusal` on benign prompts that must not be refused (a list, or `prompt` rows). Prompts are rendered
    in `prompt_format` (`"raw"` or `"chat"`, see :mod:`hf_immunize.evaluation.formatting`); `progress` shows a bar
    per generation pass.
    """
    scorer = scorer or RefusalKeywordScorer()
    post = postprocess or (lambda s: s)
    eval_harmful = harmful_eval_set(eval_harmful)
    eval_benign, task_scorer, _ = task_eval_set(eval_benign, task_scorer)

    def gen(prompts, desc):
        outs = generate_completions(
            model,
            tokenizer,
            list(prompts),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            prompt_format=prompt_format,
            progress=progress,
            desc=desc,
        )
        return [post(o) for o in outs]

    harmful = gen(prompts_for(eval_harmful, prompt_format), "scoring harmful prompts")
    columns = {k: eval_harmful[k] for k in eval_harmful.column_names if k != "prompt"}
    # A judge reads the user's request itself: a row's bare `instruction` when the set has one (the toy worlds wrap
    # `prompt` in their own "User: ..." template), else its prompt text.
    if "instruction" in eval_harmful.column_names:
        prompts_text = [as_text(p) for p in eval_harmful["instruction"]]
    else:
        prompts_text = [as_text(p) for p in eval_harmful["prompt"]]
    result = {"harmful_score": scorer.percent(harmful, prompts=prompts_text, **columns)}
    result["scored_by"] = describe_scorer(scorer)
    stats = getattr(scorer, "last_stats", None)
    if stats is not None:
        result["judge_stats"] = dict(stats)
    if "keywords" in eval_harmful.column_names:
        result["harmful_content"] = KeywordContentScorer().percent(harmful, keywords=eval_harmful["keywords"])
    reference = next((c for c in _HARMFUL_REFERENCE_COLUMNS if c in eval_harmful.column_names), None)
    if reference is not None:
        result["harmful_loss"] = completion_loss(
            model,
            tokenizer,
            prompts_for(eval_harmful, prompt_format),
            eval_harmful[reference],
            prompt_format=prompt_format,
        )
    examples = {"harmful": harmful[:keep_examples]}
    if eval_benign is not None:
        benign = gen(prompts_for(eval_benign, prompt_format), "scoring task prompts")
        result["task_accuracy"] = task_scorer.percent(
            benign, answers=eval_benign["answer"], prompts=[as_text(p) for p in eval_benign["prompt"]]
        )
        examples["benign"] = benign[:keep_examples]
    if over_refusal_prompts is not None and len(over_refusal_prompts):
        if isinstance(over_refusal_prompts, Dataset):  # `prompt` (+ `instruction`) rows, like the other sets
            over_refusal_prompts = prompts_for(over_refusal_prompts, prompt_format)
        result["over_refusal"] = 100.0 - RefusalKeywordScorer().percent(
            gen(over_refusal_prompts, "scoring over-refusal prompts")
        )
    result["examples"] = examples
    return result
