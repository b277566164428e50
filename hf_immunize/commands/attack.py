"""`hf-immunize attack`: the harmful fine-tuning attack on saved models; prints a table, writes the report JSON + PNG.

    hf-immunize attack --model outputs/booster-tiny --baseline outputs/sft-tiny     # toy world, a few minutes
    hf-immunize attack --model my-defended --data files --attack_harmful repnoise.json --attack_benign alpaca.json \\
        --eval_harmful advbench.csv --eval_task gsm8k.jsonl --max_eval_samples 200    # the paper's attack

`--data toy` (default) uses the offline safety world and the `toy` preset (the safety benchmark's standard attack);
`--data files` reads every set from a Hub id or a local file in any layout of `hf_immunize.data` and uses the `paper`
preset (the Booster paper's attack). `--judge` picks the harmful-score judge (refusal keywords by default; a Llama
Guard, StrongREJECT-style or moderation-classifier judge by preset or Hub id) and `--lm_eval_tasks` adds lm-eval
utility tasks before and after the attack. `hf-immunize evaluate` runs the same attack as a method's full measurement
and puts the report on the model's card; `hf-immunize sweep` searches the attacker's settings for the worst case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_immunize.commands.evaluate import _Formatter, add_attack_arguments, attack_config_from

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    from hf_immunize.commands.judging import add_judge_arguments, add_lm_eval_arguments

    p = argparse.ArgumentParser(prog="hf-immunize attack", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--model", required=True, help="folder of the (defended) model, full weights or a PEFT adapter")
    p.add_argument("--baseline", help="folder of an undefended model, attacked the same way for comparison")
    p.add_argument("--method", default="defended", help="name of the defense, for the report")
    p.add_argument("--output_dir", default="outputs/attack", help="where the report JSON and plot go")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    d = p.add_argument_group("data")
    d.add_argument("--data", choices=["toy", "files"], default="toy", help="'toy': the offline safety world")
    d.add_argument("--toy_seed", type=int, default=0, help="seed of the safety world when --data toy")
    d.add_argument("--attack_harmful", help="harmful rows: prompt/completion, refusal triples, BeaverTails")
    d.add_argument("--attack_benign", help="benign rows: prompt/completion, Alpaca, Dolly")
    d.add_argument("--eval_harmful", help="held-out harmful prompts: AdvBench, HarmBench, JailbreakBench, `prompt`")
    d.add_argument("--eval_task", help="task set with answers: GSM8K, `answer` column, a label task (optional)")
    add_attack_arguments(p)
    add_judge_arguments(p)
    add_lm_eval_arguments(p)
    return p


def main(argv: list[str] | None = None):
    from hf_immunize.commands.evaluate import build_data
    from hf_immunize.commands.judging import check_judge_arguments, judge_from_args, lm_eval_from_args
    from hf_immunize.core.hub import check_model_dir
    from hf_immunize.evaluation.protocols import load_saved_tokenizer, measure_attack

    args = make_parser().parse_args(argv)
    try:
        check_model_dir(args.model, "--model")
        if args.baseline:
            check_model_dir(args.baseline, "--baseline")
        check_judge_arguments(args)
        data = build_data(argparse.Namespace(**{**vars(args), "method": "booster"}))
        config = attack_config_from(args, args.data)
        lm_eval = lm_eval_from_args(args)
        judge = judge_from_args(args, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        print(f"hf-immunize attack: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    report = measure_attack(
        args.model,
        load_saved_tokenizer(args.model),
        data,
        config,
        method=args.method,
        baseline=args.baseline,
        seeds=args.seeds,
        progress=not args.no_progress,
        scorer=judge,
        lm_eval=lm_eval,
    )
    paths = report.save(args.output_dir)
    print(report.to_markdown())
    print(f"\nreport: {paths['json']}\nplot:   {paths['png']}")
    print(
        f"\nnext: hf-immunize evaluate --model {args.model} --method <method> --report {Path(args.output_dir)} "
        "--write_card   (puts this report on the model's card)"
    )
    return report


if __name__ == "__main__":
    main()
