"""MLAC's efficacy on the bios toy world: how well does a few-shot attacker learn gender from each model?

Per seed: build the bios world (pronouns scrubbed, as in the MLAC release, so gender lives only in first names) and
a tiny BERT-style classifier (the shape of BERT-tiny, scaled down for CPU), then train four arms from that same start:

- `pretrained`: plain `transformers.Trainer` fine-tuning on profession (the undefended model);
- `random_init`: the same architecture, freshly initialised (`random_init_like`): the floor MLAC aims for;
- `mlac`: `MLACTrainer`, same data, steps and optimizer as `pretrained`, K inner steps (second order);
- `mlac_k0`: the same with K = 0 (adversarial censoring without meta-learning).

Each arm is then attacked with the MLAC attacker (`search_classifier_attack`: a fresh random head, a grid over lr in
[1e-5, 1e-2] x linear probe / full fine-tune x step counts, then repeats of the best setting over fresh subsets) on
gender, for n examples drawn from val1, scored on val2. Desired accuracy is the arm's own profession head on the test
split. Results go to `summary.bios.<arm>` of `benchmarks/results/efficacy.json` (other worlds and arms are kept) and
to `benchmarks/results/efficacy_bios.md`; `--study spread` (module `bios_spread`) explains the spread over seeds.

    hf-immunize bench --world bios                     # 3 seeds, every arm (MLAC K=16: ~40 min per seed)
    hf-immunize bench --world bios --seeds 1 --arms mlac --summary_json /tmp/s1.json --no_write   # one part
    hf-immunize bench --world bios --import_summary /tmp/s*.json --replaced_tag old   # the parts become the result
    hf-immunize bench --world bios --real_sample_only  # pipeline check on ../shared/data/bias_in_bios

Paths are relative to the working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from hf_immunize.bench.bios_arms import (
    Settings,
    base_model,
    desired_accuracy,
    shared_base,
    train_arm,
    train_mlac,
    train_pretrained,
)
from hf_immunize.bench.bios_report import ARMS, goals, import_summary, markdown, summarise, write_results
from hf_immunize.bench.results import (
    DEFAULT_OUTPUT,
    RESULTS_DIR,
    command_line,
    load,
    quiet_and_deterministic,
    record_exploration,
    save,
)

__all__ = ["ARMS", "Settings", "attack", "main", "run_seed"]


def attack(model, tokenizer, world, settings: Settings, seed: int) -> dict:
    from hf_immunize.data.toy import BiosWorld
    from hf_immunize.evaluation.classifier_attack import (
        ClassifierAttackConfig,
        ClassifierSearchSpace,
        search_classifier_attack,
    )

    pool = BiosWorld.with_label(world.val1, "gender")
    evaluation = BiosWorld.with_label(world.val2, "gender")
    space = ClassifierSearchSpace(
        learning_rate=tuple(settings.attack_lr_range),
        steps=tuple(settings.attack_steps),
        batch_sizes=tuple(settings.attack_batch_sizes),
        lr_grid_size=settings.attack_lr_grid,
    )
    out = {}
    for n in settings.attack_ns:
        result = search_classifier_attack(
            model,
            tokenizer,
            pool,
            evaluation,
            n_examples=min(n, len(pool)),
            space=space,
            budget=settings.attack_budget,
            patience=settings.attack_patience,
            repeats=settings.attack_repeats,
            seed=seed,
            sampler="grid",
            base_config=ClassifierAttackConfig(max_length=settings.max_length),
        )
        out[str(n)] = {
            "mean": result.mean,
            "std": result.std,
            "best_config": {k: result.best_config[k] for k in ("learning_rate", "steps", "batch_size", "mode")},
            "trials": [
                {**{k: c[k] for k in ("learning_rate", "steps", "mode")}, "best_accuracy": a} for c, a in result.trials
            ],
            "stop_reason": result.stop_reason,
            "majority_rate": result.majority_rate,
        }
    return out


def run_seed(settings: Settings, seed: int, log=print, model_dir: Path | None = None) -> dict:
    from hf_immunize.data.toy import make_bios_world
    from hf_immunize.testing import tiny_tokenizer

    world = make_bios_world(seed=seed, n=settings.n_bios, scrub_pronouns=settings.scrub_pronouns)
    tokenizer = tiny_tokenizer()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = shared_base(settings, seed, world, tokenizer, tmp)
        for arm in settings.arms:
            t0 = time.time()
            model, extra = train_arm(arm, base, tokenizer, world, settings, seed, tmp, model_dir)
            train_seconds = time.time() - t0
            desired = desired_accuracy(model, tokenizer, world.test, settings.max_length)
            attacks = attack(model, tokenizer, world, settings, seed)
            results[arm] = {
                "desired_accuracy": 100 * desired,
                "attacker": attacks,
                "train_seconds": round(train_seconds, 1),
                "attack_seconds": round(time.time() - t0 - train_seconds, 1),
                **extra,
            }
            by_n = "  ".join(f"n={n}: {100 * a['mean']:5.1f}" for n, a in attacks.items())
            seconds = time.time() - t0
            log(f"seed {seed} {arm:<12} desired {100 * desired:5.1f}  gender attacker {by_n}  ({seconds:.0f} s)")
    return results


def real_sample_check(settings: Settings, log=print) -> dict:
    """Pipeline check on the real Bias in Bios sample (280 rows, 28 professions): MLAC trains, attacks run."""
    from types import SimpleNamespace

    from hf_immunize.data.adapters import load_bias_in_bios
    from hf_immunize.testing import tiny_tokenizer
    from hf_immunize.utils import detached_copy

    source = Path(os.environ.get("HF_IMMUNIZE_SHARED_DATA", "../shared/data")) / "bias_in_bios"
    if not source.is_dir():
        raise FileNotFoundError(f"the Bias in Bios sample is not at {source} (set HF_IMMUNIZE_SHARED_DATA).")
    data = load_bias_in_bios(str(source), task="profession").shuffle(seed=0)
    parts = data.train_test_split(test_size=0.4, seed=0)
    rest = parts["test"].train_test_split(test_size=0.5, seed=0)
    world = SimpleNamespace(train=parts["train"], val1=rest["train"], val2=rest["test"], test=rest["test"])
    gender = parts["train"].map(lambda r: {"label": r["gender"]})
    tokenizer = tiny_tokenizer()
    base = base_model(settings, 0, 28)
    check = Settings(**{**asdict(settings), "train_steps": 20, "inner_steps": 2, "attack_ns": [20, 50]})
    check.attack_repeats, check.attack_budget, check.attack_lr_grid = 1, 2, 2
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("pretrained", "mlac"):
            model = detached_copy(base)
            if arm == "pretrained":
                model, _ = train_pretrained(model, tokenizer, world.train, check, 0, tmp)
            else:
                model, _ = train_mlac(model, tokenizer, world.train, gender, check, 0, tmp, check.inner_steps)
            attacks = attack(model, tokenizer, world, check, 0)
            out[arm] = {
                "desired_accuracy": 100 * desired_accuracy(model, tokenizer, world.test, check.max_length),
                "attacker": attacks,
            }
            log(f"bias_in_bios sample {arm}: {json.dumps({n: round(a['mean'], 3) for n, a in attacks.items()})}")
    return {"rows": len(data), "source": "../shared/data/bias_in_bios (28 CSVs)", "settings": asdict(check), **out}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-immunize bench --world bios", description=__doc__.split("\n")[0])
    defaults = Settings()
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--ns", type=int, nargs="+", default=defaults.attack_ns, help="attacker subset sizes")
    parser.add_argument("--train_steps", type=int, default=defaults.train_steps)
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--inner_steps", type=int, default=defaults.inner_steps)
    parser.add_argument("--meta_gradient", default=defaults.meta_gradient)
    parser.add_argument("--truncation_steps", type=int, default=None)
    parser.add_argument("--adapted_loss_weight", type=float, default=defaults.adapted_loss_weight)
    parser.add_argument("--head_adjusted_loss_weight", type=float, default=defaults.head_adjusted_loss_weight)
    parser.add_argument("--grad_norm_weight", type=float, default=defaults.grad_norm_weight)
    parser.add_argument("--no_learned_lr", action="store_true", help="sample the inner lr instead of learning it")
    parser.add_argument("--pretrain_gender_steps", type=int, default=0, help="stage 0: gender-aware base (steps)")
    parser.add_argument("--attack_steps", type=int, nargs="+", default=defaults.attack_steps, help="step counts")
    parser.add_argument("--attack_budget", type=int, default=defaults.attack_budget, help="attacker trials")
    parser.add_argument(
        "--attack_lr_grid", type=int, default=defaults.attack_lr_grid, help="log-spaced attacker learning rates"
    )
    parser.add_argument(
        "--attack_patience", type=int, default=defaults.attack_patience, help="trials without gain that stop it"
    )
    parser.add_argument("--log_every", type=int, default=defaults.log_every, help="steps between MLAC log points")
    parser.add_argument("--model_dir", type=Path, default=None, help="keep trained models here and reuse them")
    parser.add_argument(
        "--study",
        choices=["standard", "spread"],
        default="standard",
        help="spread: every grid point's attack curve and the search replayed (hf_immunize.bench.bios_spread)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--table", type=Path, default=RESULTS_DIR / "efficacy_bios.md")
    parser.add_argument("--no_write", action="store_true", help="print only (exploration)")
    parser.add_argument("--summary_json", type=Path, default=None, help="also dump this run's results here")
    parser.add_argument("--real_sample_only", action="store_true", help="only the Bias in Bios sample check")
    parser.add_argument("--exploration_tag", default=None, help="store under exploration.bios.<tag>, not summary")
    parser.add_argument("--from_json", action="store_true", help="re-summarise per_seed.bios of --output, no runs")
    parser.add_argument("--import_exploration", type=Path, default=None, help="a --summary_json dump to store")
    parser.add_argument(
        "--import_summary",
        type=Path,
        nargs="+",
        default=None,
        help="--summary_json dumps (e.g. one per seed and arm, run in parallel) that together become summary.bios; "
        "the result they replace is kept under exploration.bios.<--replaced_tag>",
    )
    parser.add_argument("--replaced_tag", default=None, help="exploration name of the result --import_summary retires")
    return parser


def main(argv: list[str] | None = None) -> dict:
    cli = _parser().parse_args(argv)
    settings = Settings(
        seeds=cli.seeds,
        arms=cli.arms,
        attack_ns=cli.ns,
        train_steps=cli.train_steps,
        learning_rate=cli.learning_rate,
        inner_steps=cli.inner_steps,
        meta_gradient=cli.meta_gradient,
        truncation_steps=cli.truncation_steps,
        adapted_loss_weight=cli.adapted_loss_weight,
        head_adjusted_loss_weight=cli.head_adjusted_loss_weight,
        grad_norm_weight=cli.grad_norm_weight,
        learn_inner_learning_rate=not cli.no_learned_lr,
        pretrain_gender_steps=cli.pretrain_gender_steps,
        attack_steps=cli.attack_steps,
        attack_budget=cli.attack_budget,
        attack_lr_grid=cli.attack_lr_grid,
        attack_patience=cli.attack_patience,
        log_every=cli.log_every,
    )
    if cli.from_json:
        data = load(cli.output)
        data["summary"]["bios"] = summarise(data["per_seed"]["bios"])
        data.setdefault("goals", {})["bios"] = goals(data["summary"]["bios"])
        save(data, cli.output)
        cli.table.write_text(markdown(data))
        print(cli.table.read_text())
        return data
    if cli.import_summary is not None:
        return import_summary(cli.import_summary, cli.output, cli.table, cli.replaced_tag)
    if cli.import_exploration is not None:
        dump = json.loads(cli.import_exploration.read_text())
        if "per_seed" in dump:  # summarised again by the current code
            dump["summary"] = summarise(dump["per_seed"])
        run = {"settings": dump["settings"], "summary": dump["summary"]}
        data = record_exploration("bios", cli.exploration_tag or cli.import_exploration.stem, run, cli.output)
        if "bios" in data.get("summary", {}):
            cli.table.write_text(markdown(data))
        return dump
    quiet_and_deterministic()
    if cli.study == "spread":
        from hf_immunize.bench import bios_spread

        return bios_spread.main(settings, cli.model_dir, cli.output, command_line("bios", argv))
    if cli.real_sample_only:
        check = real_sample_check(settings)
        if not cli.no_write:
            data = load(cli.output)
            data.setdefault("pipeline_checks", {})["mlac_bias_in_bios_sample"] = check
            save(data, cli.output)
        return check

    t0 = time.time()
    per_seed = {
        str(seed): run_seed(settings, seed, log=lambda m: print(m, flush=True), model_dir=cli.model_dir)
        for seed in settings.seeds
    }
    summary = summarise(per_seed)
    settings_dict = {**asdict(settings), "seconds": round(time.time() - t0), "command": command_line("bios", argv)}
    results = {"summary": summary, "settings": settings_dict, "seeds": settings.seeds, "per_seed": per_seed}
    print(json.dumps({"summary": summary, "goals": goals(summary)}, indent=1))
    if cli.summary_json:
        save({**results, "goals": goals(summary)}, cli.summary_json)
    if cli.no_write:
        return results
    if cli.exploration_tag:
        run = {"settings": settings_dict, "summary": summary}
        data = record_exploration("bios", cli.exploration_tag, run, cli.output)
        if "bios" in data.get("summary", {}):
            cli.table.write_text(markdown(data))
    else:
        data = write_results("bios", results, cli.output)
        cli.table.write_text(markdown(data))
        print(f"written to {cli.output} and {cli.table}")
    return results
