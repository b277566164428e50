"""`hf-immunize attack --model DIR ...`: attack a saved model, print a table, write the report JSON and PNG."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    from .attack import ATTACK_MODES, AttackConfig

    defaults = AttackConfig()
    p = argparse.ArgumentParser(prog="hf-immunize attack", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="directory of the (defended) model, full weights or a PEFT adapter")
    p.add_argument("--baseline", help="optional undefended model directory, attacked the same way for comparison")
    p.add_argument("--data", default="toy", choices=["toy", "files"], help="'toy': the offline safety world")
    p.add_argument("--toy_seed", type=int, default=0, help="seed of the safety world when --data toy")
    p.add_argument("--harmful", help="harmful prompt/completion pairs: a refusal file (prompt/response/refusal)")
    p.add_argument("--benign", help="benign instruction file (Alpaca/Dolly layout)")
    p.add_argument("--eval_harmful", help="harmful prompt list (AdvBench/HarmBench/JailbreakBench layout)")
    p.add_argument("--eval_benign", help="GSM8K-layout file for task accuracy (optional)")
    p.add_argument("--n_samples", type=int, default=defaults.n_samples)
    p.add_argument("--harmful_ratio", type=float, default=defaults.harmful_ratio)
    p.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
    p.add_argument("--num_epochs", type=float, default=defaults.num_epochs)
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=defaults.batch_size)
    p.add_argument("--mode", choices=ATTACK_MODES, default=defaults.mode)
    p.add_argument("--eval_every", type=int, default=None)
    p.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--method", default="defended", help="name of the defense, for the report")
    p.add_argument("--output_dir", default="outputs/attack")
    return p


def _datasets(args):
    if args.data == "toy":
        from hf_immunize.data.toy import make_safety_world

        w = make_safety_world(seed=args.toy_seed)
        return w.attack_harmful, w.attack_benign, w.eval_harmful, w.eval_benign, None
    from hf_immunize.data import load_gsm8k, load_harmful_prompts, load_instructions, load_refusal_file

    missing = [f"--{k}" for k in ("harmful", "benign", "eval_harmful") if not getattr(args, k)]
    if missing:
        raise SystemExit(f"hf-immunize attack: --data files needs {', '.join(missing)}.")
    harmful = load_refusal_file(args.harmful)
    harmful = harmful.map(lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"])
    benign = load_instructions(args.benign)
    eval_harmful = load_harmful_prompts(args.eval_harmful)
    eval_benign = None
    task_scorer = None
    if args.eval_benign:
        from .scorers import GSM8KScorer

        eval_benign = load_gsm8k(args.eval_benign).rename_column("final_answer", "answer")
        task_scorer = GSM8KScorer()
    return harmful, benign, eval_harmful, eval_benign, task_scorer


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    from transformers import AutoTokenizer

    from .attack import AttackConfig, run_attack
    from .report import ImmunizationReport

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise SystemExit(f"hf-immunize attack: --model {args.model!r} is not a directory.")
    base = AttackConfig(
        n_samples=args.n_samples,
        harmful_ratio=args.harmful_ratio,
        learning_rate=args.learning_rate,
        num_epochs=args.num_epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        mode=args.mode,
        eval_every=args.eval_every,
        max_new_tokens=args.max_new_tokens,
    )
    harmful, benign, eval_harmful, eval_benign, task_scorer = _datasets(args)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def attack_all(path):
        return [
            run_attack(
                str(path),
                tokenizer,
                dataclasses.replace(base, seed=seed),
                harmful,
                benign,
                eval_harmful,
                eval_benign,
                task_scorer=task_scorer,
            )
            for seed in args.seeds
        ]

    defended = attack_all(model_dir)
    undefended = attack_all(args.baseline) if args.baseline else []
    report = ImmunizationReport.from_results(args.method, model_dir.name, defended, undefended)
    paths = report.save(args.output_dir)
    print(report.to_markdown())
    print(f"\nreport: {paths['json']}\nplot:   {paths['png']}")
    return json.loads(paths["json"].read_text())
