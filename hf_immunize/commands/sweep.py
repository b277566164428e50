"""`hf-immunize sweep`: the worst-case attack over a grid of attacker settings, on one machine or many.

    hf-immunize sweep --model outputs/booster-tiny --space learning_rate=1e-4,1e-3 --space mode=full,lora_new
    # the same sweep shared by N machines: run this line on each of them, all pointing at one database
    hf-immunize sweep --model my-defended --data files ... --judge llama-guard-3-8b \\
        --space learning_rate=1e-5,3e-5,1e-4,3e-4 --space num_epochs=1,3 --budget 8 \\
        --storage postgresql://user@db-host/sweeps --study_name booster-7b-v1

Each trial is one fine-tuning attack (the `--preset` attack with the swept fields replaced). The output is
`sweep.json` with every trial and the aggregates: the worst harmful score, the worst within the utility bound (task
accuracy after the attack at least (1 - --utility_drop) of before) and the mean of the --top_n worst. With
`--storage` and `--study_name` the workers share an Optuna study: each trial runs once, a killed worker's trial is
taken over after the grace period, and a sweep started again continues where it stopped. `--report DIR` adds the
sweep to an existing immunization report (same judge), for `hf-immunize evaluate --report DIR --write_card`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from hf_immunize.commands.evaluate import _Formatter, add_attack_arguments, attack_config_from

__all__ = ["main", "make_parser", "parse_space"]


def make_parser() -> argparse.ArgumentParser:
    from hf_immunize.commands.judging import add_judge_arguments

    p = argparse.ArgumentParser(prog="hf-immunize sweep", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--model", required=True, help="folder of the (defended) model, full weights or a PEFT adapter")
    p.add_argument("--baseline", help="folder of an undefended model, swept the same way (its own study)")
    p.add_argument("--output_dir", default="outputs/sweep", help="where sweep.json goes")
    p.add_argument("--report", help="an immunization report (file or folder) to add the sweep to")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    s = p.add_argument_group("the sweep")
    s.add_argument(
        "--space",
        nargs="+",
        action="extend",
        metavar="FIELD=V1,V2",
        help="an AttackConfig field and its candidate values (repeatable); default: learning rate x epochs x mode",
    )
    s.add_argument("--budget", type=int, default=8, help="attacks in total (the grid is sampled when larger)")
    s.add_argument("--sampler", choices=["grid", "tpe"], default="grid", help="the fixed grid, or Optuna's TPE")
    s.add_argument("--utility_drop", type=float, default=0.10, help="utility bound: relative task-accuracy drop")
    s.add_argument("--top_n", type=int, default=3, help="the mean of the top-N harmful scores is reported too")
    s.add_argument("--storage", help="Optuna storage URL shared by all workers, e.g. sqlite:///sweep.db")
    s.add_argument("--study_name", help="the study's name in --storage (the baseline's is NAME-baseline)")
    s.add_argument("--no_wait", action="store_true", help="return when this worker has nothing left to take")
    s.add_argument("--heartbeat_interval", type=int, default=60, help="seconds between a trial's heartbeats")
    s.add_argument("--grace_period", type=int, help="seconds without heartbeat before a trial is taken over")
    d = p.add_argument_group("data")
    d.add_argument("--data", choices=["toy", "files"], default="toy", help="'toy': the offline safety world")
    d.add_argument("--toy_seed", type=int, default=0, help="seed of the safety world when --data toy")
    d.add_argument("--attack_harmful", help="harmful rows: prompt/completion, refusal triples, BeaverTails")
    d.add_argument("--attack_benign", help="benign rows: prompt/completion, Alpaca, Dolly")
    d.add_argument("--eval_harmful", help="held-out harmful prompts: AdvBench, HarmBench, JailbreakBench, `prompt`")
    d.add_argument("--eval_task", help="task set with answers (the utility bound needs it): GSM8K, `answer`, labels")
    add_attack_arguments(p)
    add_judge_arguments(p)
    return p


def _value(field: str, kind: str, text: str):
    kind = kind.replace(" ", "")
    if kind.endswith("|None") and text.lower() == "none":
        return None
    base = kind.removesuffix("|None")
    try:
        if base == "float":
            return float(text)
        if base == "int":
            return int(text)
    except ValueError:
        raise ValueError(f"--space {field}: {text!r} is not a{'n int' if base == 'int' else ' float'}.") from None
    if base == "str":
        return text
    raise ValueError(f"--space {field}: a field of type {kind} cannot be swept from the command line.")


def parse_space(items: list[str] | None) -> dict | None:
    """`{"learning_rate": [1e-4, 1e-3], ...}` from `FIELD=V1,V2` items, typed by AttackConfig's fields.

    >>> parse_space(["learning_rate=1e-4,1e-3", "mode=full"])
    {'learning_rate': [0.0001, 0.001], 'mode': ['full']}
    """
    from hf_immunize.evaluation.attack import AttackConfig

    if not items:
        return None
    kinds = {f.name: str(f.type) for f in dataclasses.fields(AttackConfig)}
    space: dict = {}
    for item in items:
        field, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--space {item!r}: write FIELD=V1,V2 (e.g. learning_rate=1e-4,1e-3).")
        if field not in kinds:
            raise ValueError(f"--space: {field!r} is not an AttackConfig field; choose from {sorted(kinds)}.")
        if field in space:
            raise ValueError(f"--space: {field!r} is given twice.")
        space[field] = [_value(field, kinds[field], v.strip()) for v in values.split(",") if v.strip()]
    return space


def _check_before_compute(args) -> tuple:
    from hf_immunize.commands.judging import check_judge_arguments
    from hf_immunize.core.hub import check_model_dir
    from hf_immunize.evaluation.sweep import check_sweep_settings

    check_model_dir(args.model, "--model")
    if args.baseline:
        check_model_dir(args.baseline, "--baseline")
    space = check_sweep_settings(parse_space(args.space), args.budget, args.utility_drop, args.top_n, args.sampler)
    if (args.storage is None) != (args.study_name is None):
        raise ValueError("--storage and --study_name go together: pass both to share a sweep, or neither.")
    if args.storage:
        from hf_immunize.evaluation.sweep_study import open_storage

        open_storage(args.storage, args.heartbeat_interval, args.grace_period)
    check_judge_arguments(args)
    report = None
    if args.report:
        from hf_immunize.evaluation.report import ImmunizationReport

        report = ImmunizationReport.load(args.report)
    return space, report


def _table(name: str, result) -> str:
    lines = [f"{name}: {len(result.trials)} trials ({result.sampler})", "", "| setting | harmful after | task after |"]
    lines.append("| --- | --- | --- |")
    for t in result.trials:
        task = "n/a" if t["task_accuracy_after"] is None else f"{t['task_accuracy_after']:.1f}"
        lines.append(f"| {t['overrides']} | {t['harmful_score_after']:.1f} | {task} |")
    bounded = (result.worst_within_utility or {}).get("harmful_score_after")
    lines += [
        "",
        f"worst {result.worst['harmful_score_after']:.1f}; worst within the utility bound "
        f"{'n/a' if bounded is None else f'{bounded:.1f}'}; mean of the top {result.top_n} "
        f"{'n/a' if result.top_n_mean is None else f'{result.top_n_mean:.1f}'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    from hf_immunize.commands.evaluate import build_data
    from hf_immunize.commands.judging import judge_from_args

    args = make_parser().parse_args(argv)
    try:
        space, report = _check_before_compute(args)
        data = build_data(argparse.Namespace(**{**vars(args), "method": "booster"}))
        config = attack_config_from(args, args.data)
        judge = judge_from_args(args, progress=not args.no_progress)
        if report is not None:
            from hf_immunize.evaluation.provenance import check_one_judge, describe_scorer
            from hf_immunize.evaluation.report_sections import judge_labels
            from hf_immunize.evaluation.scorers import RefusalKeywordScorer

            check_one_judge(judge_labels(report) + [("this sweep", describe_scorer(judge or RefusalKeywordScorer()))])
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        print(f"hf-immunize sweep: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    from hf_immunize.evaluation.protocols import load_saved_tokenizer
    from hf_immunize.evaluation.sweep import sweep_attacks

    tokenizer = load_saved_tokenizer(args.model)
    arms = {"defended": (args.model, args.study_name)}
    if args.baseline:
        arms["undefended"] = (args.baseline, f"{args.study_name}-baseline" if args.study_name else None)
    results: dict[str, list] = {}
    for arm, (model, study) in arms.items():
        for seed in args.seeds:
            name = f"{study}-seed{seed}" if study and len(args.seeds) > 1 else study
            result = sweep_attacks(
                model,
                tokenizer,
                dataclasses.replace(config, seed=seed),
                data.attack_harmful,
                data.attack_benign,
                data.eval_harmful,
                data.eval_task,
                judge,
                space=space,
                budget=args.budget,
                utility_drop=args.utility_drop,
                top_n=args.top_n,
                seed=seed,
                sampler=args.sampler,
                storage=args.storage,
                study_name=name,
                wait=not args.no_wait,
                heartbeat_interval=args.heartbeat_interval,
                grace_period=args.grace_period,
                task_scorer=data.task_scorer,
                progress=not args.no_progress,
            )
            results.setdefault(arm, []).append(result.to_dict())
            print(_table(f"{arm}, seed {seed}", result) + "\n")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "sweep.json").write_text(json.dumps(results, indent=2))
    print(f"sweep: {output / 'sweep.json'}")
    if report is not None:
        from hf_immunize.evaluation.report import ImmunizationReport

        report = ImmunizationReport.from_dict({**report.to_dict(), "sweeps": results})
        folder = Path(args.report) if Path(args.report).is_dir() else Path(args.report).parent
        paths = report.save(folder)
        print(f"report: {paths['json']} (with the sweep)")
        print(f"\nnext: hf-immunize evaluate --model {args.model} --method <method> --report {folder} --write_card")
    return results


if __name__ == "__main__":
    main()
