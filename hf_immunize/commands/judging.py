"""Command-line options shared by `evaluate`, `attack` and `sweep`: the harmful-score judge and lm-eval utility tasks.

--judge keyword                                     refusal keywords (default)
--judge llama-guard-3-8b                            a documented judge by its preset (the Hub id is known)
--judge beaver-dam-7b --judge_model ./beaver-dam    a preset from a local copy
--judge guard --judge_model my-org/my-guard         any guard / rubric / logits / classifier judge
--lm_eval_tasks arc_easy hellaswag --lm_eval_limit 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "JUDGE_CHOICES",
    "add_judge_arguments",
    "add_lm_eval_arguments",
    "check_judge_arguments",
    "judge_from_args",
    "lm_eval_from_args",
]

_KINDS = ("keyword", "guard", "rubric", "logits", "classifier")


def _presets() -> dict:
    from hf_immunize.evaluation.judges import JUDGE_PRESETS
    from hf_immunize.evaluation.moderation import MODERATION_PRESETS

    return {**JUDGE_PRESETS, **{name: {**p, "protocol": "classifier"} for name, p in MODERATION_PRESETS.items()}}


def _is_classifier(judge: str) -> bool:
    return judge == "classifier" or _presets().get(judge, {}).get("protocol") == "classifier"


# Written out (not read from the presets) so that `--help` imports no torch; a test keeps them equal.
JUDGE_CHOICES = _KINDS + ("llama-guard-3-8b", "llama-guard-3-1b", "llama-guard-2-8b", "beaver-dam-7b")


def add_judge_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("harmful-score judge (named with its model id on the report and card)")
    g.add_argument(
        "--judge",
        default="keyword",
        choices=JUDGE_CHOICES,
        help="keyword: refusal keywords; a preset (Llama Guard, beaver-dam-7b); or guard / rubric / logits "
        "(a causal LM judge) / classifier (a moderation classifier) with --judge_model",
    )
    g.add_argument("--judge_model", help="the judge's Hub id or local folder (for a preset: a local copy of it)")
    g.add_argument("--judge_template", help="rubric/logits: a prompt template file; guard: a Jinja chat template file")
    g.add_argument("--judge_batch_size", type=int, default=8, help="judge inputs per batch")
    g.add_argument("--judge_max_new_tokens", type=int, help="guard/rubric generation length (defaults 20 / 512)")
    g.add_argument("--judge_dtype", help="dtype of a judge loaded from a path, e.g. bfloat16")


def check_judge_arguments(args) -> None:
    """Every judge mistake that can be found without loading anything."""
    if args.judge == "keyword":
        extra = [f"--{n}" for n in ("judge_model", "judge_template", "judge_dtype") if getattr(args, n)]
        if extra:
            raise ValueError(f"{', '.join(extra)} need a model judge: choose one with --judge (not 'keyword').")
        return
    if args.judge in _KINDS and not args.judge_model:
        raise ValueError(f"--judge {args.judge} needs --judge_model (the judge's Hub id or local folder).")
    if args.judge_template and not Path(args.judge_template).is_file():
        raise ValueError(f"--judge_template: {args.judge_template!r} is not a file.")
    if args.judge_template and _is_classifier(args.judge):
        raise ValueError("--judge_template is for causal LM judges; a classifier reads its own input format.")
    if args.judge_batch_size < 1:
        raise ValueError(f"--judge_batch_size must be >= 1, got {args.judge_batch_size}.")
    if args.judge_max_new_tokens is not None and args.judge_max_new_tokens < 1:
        raise ValueError(f"--judge_max_new_tokens must be >= 1, got {args.judge_max_new_tokens}.")
    if args.judge_model and (args.judge_model.startswith((".", "/", "~")) or Path(args.judge_model).exists()):
        if not Path(args.judge_model).expanduser().is_dir():
            raise ValueError(f"--judge_model: {args.judge_model!r} is not a folder.")


def judge_from_args(args, progress: bool = True):
    """The judge of `--judge` (None for refusal keywords). A guard judge without a chat template, an unreadable
    template or a score token that is not one token fails here, before the judge's weights are loaded."""
    from hf_immunize.evaluation.judges import GenerativeJudge
    from hf_immunize.evaluation.moderation import ClassifierScorer

    check_judge_arguments(args)
    if args.judge == "keyword":
        return None
    common = {"batch_size": args.judge_batch_size}
    if args.judge_dtype and not _is_classifier(args.judge):
        common["dtype"] = args.judge_dtype
    generative = {"progress": progress}
    if args.judge_template:
        generative["template"] = args.judge_template
    if args.judge_max_new_tokens:
        generative["max_new_tokens"] = args.judge_max_new_tokens
    if args.judge == "classifier":
        return ClassifierScorer(args.judge_model, **common)
    if args.judge in _KINDS:
        return GenerativeJudge(args.judge_model, protocol=args.judge, **common, **generative)
    if _is_classifier(args.judge):
        return ClassifierScorer.from_preset(args.judge, args.judge_model, **common)
    return GenerativeJudge.from_preset(args.judge, args.judge_model, **common, **generative)


def add_lm_eval_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("utility through lm-evaluation-harness, before and after the attack (needs lm-eval)")
    g.add_argument("--lm_eval_tasks", nargs="+", help="lm-eval task names (built-in, or from --lm_eval_include_path)")
    g.add_argument("--lm_eval_include_path", help="a folder of your own lm-eval task YAML files")
    g.add_argument("--lm_eval_limit", type=float, help="at most this many documents per task (a fraction when < 1)")
    g.add_argument("--lm_eval_num_fewshot", type=int, help="few-shot examples (default: each task's own)")
    g.add_argument("--lm_eval_batch_size", type=int, default=8, help="lm-eval batch size")


def lm_eval_from_args(args):
    """The `LmEvalConfig` of the `--lm_eval_*` flags (None without tasks), checked: lm-eval installed, tasks known."""
    from hf_immunize.evaluation.lm_eval_utility import LmEvalConfig, check_lm_eval

    if not args.lm_eval_tasks:
        names = ("lm_eval_include_path", "lm_eval_limit", "lm_eval_num_fewshot")
        extra = [f"--{n}" for n in names if getattr(args, n) is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} need --lm_eval_tasks.")
        return None
    limit = args.lm_eval_limit
    if limit is not None and limit >= 1 and float(limit).is_integer():
        limit = int(limit)
    config = LmEvalConfig(
        tasks=args.lm_eval_tasks,
        include_path=args.lm_eval_include_path,
        num_fewshot=args.lm_eval_num_fewshot,
        limit=limit,
        batch_size=args.lm_eval_batch_size,
    )
    check_lm_eval(config)
    return config
