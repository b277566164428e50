"""MLAC measured as its claim is stated: how well the best few-shot attacker learns the blocked task from the
defended classifier, beside a baseline and a random initialisation of the same architecture (the floor)."""

from __future__ import annotations

import dataclasses

from datasets import Dataset

from .eval_data import BlockedTaskData
from .report import ImmunizationReport
from .safety_eval import cap_rows
from .saved_models import model_name_of

__all__ = ["measure_few_shot"]


def _classifier_accuracy(model, tokenizer, ds: Dataset, max_length: int = 128) -> float:
    import torch

    from .classifier_attack import _accuracy, _encode

    device = next(model.parameters()).device
    encoded = _encode(tokenizer, ds["text"], max_length)
    labels = torch.tensor(list(ds["label"]), dtype=torch.long)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    return 100.0 * _accuracy(model, encoded, labels, 64, left, device)


def measure_few_shot(
    model,
    tokenizer,
    data: BlockedTaskData,
    *,
    method: str = "mlac",
    baseline=None,
    n_examples: int = 50,
    budget: int = 8,
    patience: int = 4,
    repeats: int = 3,
    space=None,
    seed: int = 0,
    sampler: str = "grid",
    max_eval_samples: int | None = None,
    random_init: bool = True,
    progress: bool = True,
    model_name: str | None = None,
) -> ImmunizationReport:
    """MLAC's claim: how well the best few-shot attacker (a fresh head, hyperparameters searched, the best setting
    re-run on fresh subsets) learns the blocked task from `model`, next to `baseline` and a random initialisation of
    the same architecture (the floor the method aims for), plus the desired-task accuracy of the model's own head.

    The defaults keep a CPU run to minutes; the paper's search is budget 50, patience 15, repeats 15 (TPE) over
    {20, 50, 100, 200} examples.
    """
    from tqdm.auto import tqdm

    from .classifier_attack import ClassifierSearchSpace, random_init_like, search_classifier_attack

    space = space or ClassifierSearchSpace(steps=(100,), batch_sizes=(12,), lr_grid_size=4)
    blocked_eval = cap_rows(data.blocked_eval, max_eval_samples)
    desired_eval = cap_rows(data.desired_eval, max_eval_samples)
    arms = {method: model}
    if baseline is not None:
        arms["baseline"] = baseline
    if random_init:
        arms["random_init"] = random_init_like(model, seed=1000 + seed)
    results = {}
    majority = None
    for arm, target in tqdm(list(arms.items()), desc="few-shot attacker", disable=not progress):
        search = search_classifier_attack(
            target,
            tokenizer,
            data.blocked_pool,
            blocked_eval,
            n_examples=n_examples,
            num_labels=data.num_labels,
            space=space,
            budget=budget,
            patience=patience,
            repeats=repeats,
            seed=seed,
            sampler=sampler,
        )
        majority = 100.0 * search.majority_rate
        results[arm] = {
            "attacker_accuracy": {
                "mean": 100.0 * search.mean,
                "std": 100.0 * search.std,
                "n": len(search.repeat_accuracies),
            },
            "repeat_accuracies": [100.0 * a for a in search.repeat_accuracies],
            "best_config": search.best_config,
            "trials": len(search.trials),
            "stop_reason": search.stop_reason,
            "desired_accuracy": (
                _classifier_accuracy(target, tokenizer, desired_eval)
                if desired_eval is not None and arm != "random_init"
                else None
            ),
        }
    measurement = {
        "blocked_task": data.names.get("blocked_task", "blocked task"),
        "desired_task": data.names.get("desired_task"),
        "n_examples": n_examples,
        "n_eval": len(blocked_eval),
        "majority_rate": majority,
        "search": {
            "budget": budget,
            "patience": patience,
            "repeats": repeats,
            "sampler": sampler,
            "space": dataclasses.asdict(space),
        },
        "arms": results,
    }
    evaluation = {
        "scorer": "accuracy of a freshly initialised classification head on the blocked task",
        "eval_task": {"name": data.names.get("desired_task", "desired task"), "n": len(desired_eval)}
        if desired_eval is not None
        else None,
        "task_metric": "accuracy of the model's own head on the desired task",
    }
    if baseline is not None:
        evaluation["baseline"] = model_name_of(baseline)
    return ImmunizationReport(
        method=method,
        model=model_name or model_name_of(model),
        evaluation={k: v for k, v in evaluation.items() if v is not None},
        measurements={"few_shot_attack": measurement},
    )
