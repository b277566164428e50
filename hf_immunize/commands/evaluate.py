"""`hf-immunize evaluate`: measure a saved model the way its method's claim is stated, write the report, re-render
its card.

    hf-immunize evaluate --model outputs/booster-tiny --method booster --write_card
    hf-immunize evaluate --model my-defended --method booster --baseline my-sft --preset paper --data files \\
        --attack_harmful repnoise.json --attack_benign alpaca.json --eval_harmful advbench.csv --eval_task gsm8k.jsonl
    hf-immunize evaluate --model my-defended --method booster --data files ... --judge llama-guard-3-8b \
        --lm_eval_tasks arc_easy hellaswag --lm_eval_limit 500
    hf-immunize push outputs/booster-tiny --repo_id you/booster-tiny

`--model` is the folder `trainer.save_model()` wrote (full weights or a PEFT adapter). Booster measures the harmful
fine-tuning attack, MLAC (classifier) the best few-shot attacker on the blocked task beside a random initialisation,
unlearning the familiarity before and after a relearning attack, mistake analysis the harmless rate with the plain and
the guided prompt plus the attack. `--data toy` (default) uses the method's offline toy world; `--data files` reads
each set from a Hub id or a local file in any layout of `hf_immunize.data`. The report goes to `--output_dir`; with
`--write_card`, `MODEL/README.md` is re-rendered with it (keeping the settings recorded at save time) and the report's
JSON and plot are written beside it, ready for `hf-immunize push`. `--judge` picks the harmful-score judge of the
attack (booster, mistake-sft; refusal keywords by default), and `--lm_eval_tasks` adds lm-eval utility tasks run
before and after the attack; both are named on the card.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

__all__ = ["add_attack_arguments", "attack_config_from", "main", "make_parser"]

METHODS = ("booster", "mlac", "unlearn", "mistake-sft")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def add_attack_arguments(p: argparse.ArgumentParser) -> None:
    """The fine-tuning attack's settings; unset ones come from `--preset`."""
    from hf_immunize.evaluation.attack import ATTACK_MODES
    from hf_immunize.evaluation.formatting import PROMPT_FORMATS

    g = p.add_argument_group("fine-tuning attack (unset values come from --preset)")
    g.add_argument(
        "--preset",
        choices=["toy", "paper"],
        default=None,
        help="toy: the safety benchmark's standard "
        "attack (150 steps, minutes on a CPU); paper: the Booster paper's (default with --data files)",
    )
    g.add_argument("--n_samples", type=int, help="attacker's fine-tuning rows")
    g.add_argument("--harmful_ratio", type=float, help="fraction of them that is harmful")
    g.add_argument("--learning_rate", type=float, help="attack learning rate (AdamW, constant)")
    g.add_argument("--num_epochs", type=float, help="epochs over the attacker's rows")
    g.add_argument("--max_steps", type=int, help="optimizer steps (overrides --num_epochs)")
    g.add_argument("--batch_size", type=int, help="attack batch size")
    g.add_argument("--mode", choices=ATTACK_MODES, help="full fine-tuning, a fresh LoRA, or the model's own adapter")
    g.add_argument("--eval_every", type=int, help="steps between points of the harmful-score curve")
    g.add_argument("--max_new_tokens", type=int, help="generation length when scoring")
    g.add_argument(
        "--prompt_format",
        choices=PROMPT_FORMATS,
        default="auto",
        help="chat: through the tokenizer's chat template; raw: prompt text as is; auto: as the model "
        "was trained (its hf_immunize.json) or as the data is",
    )
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="one attack per seed")
    g.add_argument(
        "--max_eval_samples",
        type=int,
        default=None,
        help="score at most this many rows of each evaluation set (the first ones)",
    )


def attack_config_from(args, data_kind: str):
    """The `AttackConfig` of `--preset` (default: toy for toy data, paper for files) with the given flags applied."""
    from hf_immunize.evaluation.attack import attack_preset

    preset = args.preset or ("toy" if data_kind == "toy" else "paper")
    overrides = {
        name: getattr(args, name)
        for name in (
            "n_samples",
            "harmful_ratio",
            "learning_rate",
            "num_epochs",
            "max_steps",
            "batch_size",
            "mode",
            "eval_every",
            "max_new_tokens",
            "prompt_format",
            "max_eval_samples",
        )
        if getattr(args, name, None) is not None
    }
    return dataclasses.replace(attack_preset(preset), **overrides)


def make_parser() -> argparse.ArgumentParser:
    from hf_immunize.commands.judging import add_judge_arguments, add_lm_eval_arguments

    p = argparse.ArgumentParser(prog="hf-immunize evaluate", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--model", required=True, help="folder of the saved (defended) model: full weights or an adapter")
    p.add_argument("--method", required=True, choices=METHODS, help="the defense it was trained with")
    p.add_argument("--baseline", help="folder of an undefended model, measured the same way")
    p.add_argument("--write_card", action="store_true", help="re-render MODEL/README.md with the report")
    p.add_argument("--report", help="render the card from this existing report (file or folder) instead of measuring")
    p.add_argument("--output_dir", help="where the report goes (default: outputs/evaluate/<model folder name>)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    d = p.add_argument_group("data")
    d.add_argument("--data", choices=["toy", "files"], default="toy", help="the method's offline toy world, or files")
    d.add_argument("--toy_seed", type=int, default=0, help="seed of the toy world")
    for name, text in (
        (
            "attack_harmful",
            "booster/mistake-sft: the attacker's harmful rows (prompt/completion, refusal triples, BeaverTails)",
        ),
        ("attack_benign", "booster/mistake-sft: the attacker's benign rows (prompt/completion, Alpaca, Dolly)"),
        ("eval_harmful", "booster/mistake-sft: held-out harmful prompts (AdvBench, HarmBench, JailbreakBench, ...)"),
        ("eval_task", "booster/mistake-sft: task set with answers (GSM8K, `answer`, a label task); optional"),
        ("blocked_pool", "mlac: the attacker's blocked-task rows (text/label, or Bias in Bios: gender)"),
        ("blocked_eval", "mlac: blocked-task evaluation rows"),
        ("desired_eval", "mlac: desired-task test rows (Bias in Bios: profession); optional"),
        ("familiarity_prompts", "unlearn: rows `prompt, targets` (targets: the terms a knowing model completes)"),
        ("anchored_terms", "unlearn: JSON file of the anchored-term dictionary (object or list of terms)"),
        ("forget_texts", "unlearn: held-out forget passages (`text` rows)"),
        ("retain_texts", "unlearn: retain passages (`text` rows)"),
        ("relearn_texts", "unlearn: the relearning attacker's forget passages (`text` rows)"),
    ):
        d.add_argument(f"--{name}", help=text)
    add_attack_arguments(p)
    add_judge_arguments(p)
    add_lm_eval_arguments(p)
    r = p.add_argument_group("unlearn: relearning attack (defaults from --preset)")
    r.add_argument("--relearn_passages", type=int, help="forget passages the attacker trains on")
    r.add_argument("--relearn_steps", type=int, help="relearning optimizer steps")
    r.add_argument("--relearn_learning_rate", type=float, help="relearning learning rate")
    m = p.add_argument_group("mlac: few-shot attacker")
    m.add_argument("--n_examples", type=int, default=50, help="the attacker's labelled examples (paper: 20-200)")
    m.add_argument("--budget", type=int, default=8, help="hyperparameter trials (paper: 50)")
    m.add_argument("--repeats", type=int, default=3, help="re-runs of the best setting (paper: 15)")
    m.add_argument("--search_steps", type=int, default=100, help="optimizer steps of each attack (paper: 100-1000)")
    return p


def _error(message: str) -> None:
    print(f"hf-immunize evaluate: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _load(name: str, value, **kwargs):
    from hf_immunize.data.layouts import load_by_layout

    return load_by_layout(value, f"--{name}", **kwargs) if value else None


def _texts(name: str, value) -> list[str] | None:
    if not value:
        return None
    if str(value).endswith(".txt"):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--{name}: {value!r} is not a file.")
        return [block.strip() for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]
    ds = _load(name, value)
    if "text" not in ds.column_names:
        raise ValueError(f"--{name}: needs a `text` column (or a .txt file of blank-line separated passages).")
    return list(ds["text"])


def build_data(args):
    """The protocol's evaluation data from `--data` (None: the protocol's toy world)."""
    import json

    from hf_immunize.evaluation.protocols import BlockedTaskData, SafetyEvalData, UnlearningEvalData

    if args.data == "toy":
        toy = {"mlac": BlockedTaskData, "unlearn": UnlearningEvalData}.get(args.method, SafetyEvalData)
        return toy.toy(seed=args.toy_seed)
    if args.method == "mlac":
        _require(args, "blocked_pool", "blocked_eval")
        return BlockedTaskData(
            _load("blocked_pool", args.blocked_pool, bios_task="gender"),
            _load("blocked_eval", args.blocked_eval, bios_task="gender"),
            _load("desired_eval", args.desired_eval, bios_task="profession"),
            names={"blocked_task": Path(args.blocked_eval).stem, "desired_task": Path(args.desired_eval or "-").stem},
        )
    if args.method == "unlearn":
        _require(args, "familiarity_prompts", "anchored_terms", "relearn_texts")
        prompts = _load("familiarity_prompts", args.familiarity_prompts)
        if not {"prompt", "targets"} <= set(prompts.column_names):
            raise ValueError(f"--familiarity_prompts: needs columns prompt, targets; found {prompts.column_names}.")
        try:
            terms = json.loads(Path(args.anchored_terms).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"--anchored_terms: {args.anchored_terms!r} is not a readable JSON file ({err})."
            ) from None
        return UnlearningEvalData(
            list(prompts["prompt"]),
            list(prompts["targets"]),
            list(terms),
            forget_texts=_texts("forget_texts", args.forget_texts),
            retain_texts=_texts("retain_texts", args.retain_texts),
            relearn_texts=_texts("relearn_texts", args.relearn_texts),
            names={"corpus": Path(args.familiarity_prompts).stem},
        )
    _require(args, "attack_harmful", "attack_benign", "eval_harmful")
    return SafetyEvalData(
        _load("attack_harmful", args.attack_harmful),
        _load("attack_benign", args.attack_benign),
        _load("eval_harmful", args.eval_harmful),
        _load("eval_task", args.eval_task),
        names={
            "eval_harmful": _data_name(args.eval_harmful),
            **({"eval_task": _data_name(args.eval_task)} if args.eval_task else {}),
        },
    )


def _data_name(value: str) -> str:
    """What the card calls a data set: its Hub id, or a local file's name (never its path)."""
    from hf_immunize.core.card_text import is_local_path

    return Path(value).name if is_local_path(value) else value


def _require(args, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        raise ValueError(f"--data files with --method {args.method} needs {', '.join(missing)}.")


def _check_before_compute(args) -> None:
    """Every user error that can be found without loading a model: named, before any compute."""
    from hf_immunize.core.hub import check_model_dir
    from hf_immunize.evaluation.protocols import saved_method

    check_model_dir(args.model, "--model")
    if args.baseline:
        check_model_dir(args.baseline, "--baseline")
    found = saved_method(args.model)
    if found is not None and found != args.method:
        raise ValueError(f"--method {args.method!r} does not match {args.model!r}, which was trained with {found!r}.")
    if args.report:
        from hf_immunize.evaluation.report import ImmunizationReport

        ImmunizationReport.load(args.report)  # a missing or broken report fails here
    if args.write_card:
        if not os.access(args.model, os.W_OK):
            raise ValueError(f"--write_card: {args.model!r} is not writable; nothing was written.")
        card = Path(args.model) / "README.md"
        if card.exists() and not os.access(card, os.W_OK):
            raise ValueError(f"--write_card: {str(card)!r} is not writable; nothing was written.")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise ValueError(f"--max_eval_samples must be >= 1, got {args.max_eval_samples}.")
    from hf_immunize.commands.judging import check_judge_arguments

    check_judge_arguments(args)
    attack_methods = ("booster", "mistake-sft")
    if args.method not in attack_methods and (args.judge != "keyword" or args.lm_eval_tasks):
        flag = "--judge" if args.judge != "keyword" else "--lm_eval_tasks"
        raise ValueError(
            f"{flag} applies to the fine-tuning attack of {' and '.join(attack_methods)}; --method {args.method} is "
            "measured by its own protocol."
        )


def _relearn_config(args):
    from hf_immunize.evaluation.protocols import relearn_preset

    preset = args.preset or ("toy" if args.data == "toy" else "paper")
    overrides = {
        "n_passages": args.relearn_passages,
        "max_steps": args.relearn_steps,
        "learning_rate": args.relearn_learning_rate,
    }
    return dataclasses.replace(relearn_preset(preset), **{k: v for k, v in overrides.items() if v is not None})


def write_card_from_record(model_dir, report) -> Path:
    """Re-renders `model_dir/README.md` with `report`, from the card inputs recorded at save time (a model without a
    record gets a card from its folder name and the report only)."""
    from hf_immunize.core.card import write_model_card
    from hf_immunize.evaluation.formatting import read_run_record

    record = read_run_record(model_dir) or {}
    card = dict(record.get("card") or {})
    card.setdefault("model_name", Path(model_dir).name)
    return write_model_card(model_dir, report=report, **card)


def _method_options(args) -> dict:
    if args.method == "mistake-sft":
        return _mistake_options(args.model)
    if args.method == "mlac":
        from hf_immunize.evaluation.classifier_attack import ClassifierSearchSpace

        return {
            "n_examples": args.n_examples,
            "budget": args.budget,
            "repeats": args.repeats,
            "space": ClassifierSearchSpace(steps=(args.search_steps,), batch_sizes=(12,), lr_grid_size=4),
        }
    return {}


def main(argv: list[str] | None = None):
    """Runs the command; a user error is one message on stderr and exit code 2, raised before any compute."""
    from hf_immunize.commands.judging import judge_from_args, lm_eval_from_args

    args = make_parser().parse_args(argv)
    try:
        _check_before_compute(args)
        if args.report is None:
            data = build_data(args)
            attack_config = attack_config_from(args, args.data)
            relearn = _relearn_config(args)
            options = _method_options(args)
            lm_eval = lm_eval_from_args(args)
            judge = judge_from_args(args, progress=not args.no_progress)
            if judge is not None:
                options["scorer"] = judge
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        _error(str(err))
    from hf_immunize.evaluation.protocols import measure_saved_model
    from hf_immunize.evaluation.report import ImmunizationReport

    if args.report is not None:
        report = ImmunizationReport.load(args.report)
    else:
        report = measure_saved_model(
            args.model,
            args.method,
            data,
            baseline=args.baseline,
            seeds=args.seeds,
            attack_config=attack_config,
            relearn=relearn,
            max_eval_samples=args.max_eval_samples,
            progress=not args.no_progress,
            lm_eval=lm_eval,
            **options,
        )
    output_dir = Path(args.output_dir or Path("outputs") / "evaluate" / Path(args.model).resolve().name)
    paths = report.save(output_dir)
    print(report.to_markdown())
    print(f"\nreport: {paths['json']}\nplot:   {paths['png']}")
    if args.write_card:
        card = write_card_from_record(args.model, paths["json"])
        print(f"card:   {card} (with the report's JSON and plot beside it)")
        print(f"\nnext: hf-immunize push {args.model} --repo_id <you>/<name>")
    else:
        print(
            f"\nnext: hf-immunize evaluate --model {args.model} --method {args.method} --report {output_dir} "
            "--write_card   (puts this report on the model's card)"
        )
    return report


def _mistake_options(model_dir) -> dict:
    """The plain and guided prompt builders of a saved mistake-analysis model (its recorded templates), or the
    method's default templates for a model without a record."""
    from hf_immunize.evaluation.formatting import read_run_record
    from hf_immunize.methods.mistake_sft.pipeline import prompt_builders

    settings = ((read_run_record(model_dir) or {}).get("evaluation") or {}).get("prompt_settings") or {}
    return prompt_builders(settings)


if __name__ == "__main__":
    main()
