"""Unlearning efficacy on the book toy world: WHP against gradient ascent, gradient difference and NPO.

Protocol (every number in `benchmarks/results/efficacy.json` under `summary.book`, table in `efficacy_book.md`):

1. "original": a tiny Llama (hidden 64, 2 layers) trained with SFT on the world's forget passages plus 180 of its 200
   retain passages until it knows the invented universe (same world, seed 0, for every run; the model seed and data
   order change with the run seed).
2. each arm starts from that model:
   - whp: reinforce (LoRA r=16, all linear layers, on the forget passages) -> generic labels (α = 5, blocks of 64
     tokens, the world's dictionary, forbidden first tokens at the row mean) -> fine-tune B on the labels;
   - grad_ascent / grad_diff / npo: the learning rate picked by a small search on a separate dev seed (`--search`;
     rule: lowest familiarity among the settings whose retain perplexity rises ≤ 5 %, else the smallest rise).
3. metrics (hf_immunize.evaluation.unlearning): keyword-graded completion familiarity (5·n₃ + n₂)/N on the 30
   familiarity prompts (greedy, 12 new tokens), probability familiarity, perplexity on the 20 held-out forget
   passages and on the 20 held-out retain passages.

The real-text pipeline check on the Oz novel is `benchmarks/unlearn_oz.py`.
Usage (from the repo root): `python benchmarks/unlearn_efficacy.py --seeds 0 1 2 --search`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hf_immunize.utils import set_offline_env

set_offline_env()

import torch  # noqa: E402

torch.set_num_threads(1)

from datasets import concatenate_datasets  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from hf_immunize.benchmark import write_efficacy  # noqa: E402
from hf_immunize.data.toy import make_book_world  # noqa: E402
from hf_immunize.evaluation.report import mean_std  # noqa: E402
from hf_immunize.evaluation.unlearning import evaluate_unlearning  # noqa: E402
from hf_immunize.methods.unlearn import (  # noqa: E402
    UnlearnConfig,
    UnlearnTrainer,
    build_generic_labels,
    reinforce,
    run_whp_pipeline,
)
from hf_immunize.methods.unlearn.labels import use_alpha  # noqa: E402
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer  # noqa: E402
from hf_immunize.utils import CPU_TRAINING_DEFAULTS, sft_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("original", "whp", "grad_ascent", "grad_diff", "npo")

SETTINGS = {
    "world_seed": 0,
    "model": {"hidden_size": 64, "num_layers": 2},
    "pretrain": {"max_steps": 250, "batch_size": 16, "learning_rate": 3e-3, "schedule": "cosine", "max_length": 128},
    "whp": {
        "reinforce": {"max_steps": 40, "batch_size": 8, "learning_rate": 1e-3, "lora_r": 16},
        "alpha": 5.0,
        "extra_alphas": [2.5, 10.0],
        "block_size": 64,
        "forbid_value": "mean",
        # "tiny CPU recipes: paper learning rates do not move a 2M-parameter model; use ~1e-3" (reference §7);
        # used without --search, else replaced by the search's choice (learning rate, epochs, α)
        "finetune": {"num_train_epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
    },
    "baselines": {"batch_size": 8, "max_steps": 30, "npo_beta": 0.1, "forget_weight": 1.0, "retain_weight": 1.0},
    "search": {
        "seed": 100,
        "learning_rates": [1e-4, 3e-4, 1e-3, 3e-3],
        "whp": {"learning_rates": [1e-4, 3e-4, 1e-3], "num_train_epochs": [1, 2], "alphas": [2.5, 5.0, 10.0]},
    },
    "defaults_without_search": {"grad_ascent": 3e-4, "grad_diff": 1e-3, "npo": 1e-3},
    "eval": {"max_new_tokens": 12, "prompts": 30, "forget_heldout": 20, "retain_heldout": 20},
    "retain_ppl_budget": 0.05,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _world():
    world = make_book_world(seed=SETTINGS["world_seed"])
    n = len(world.retain)
    held = SETTINGS["eval"]["retain_heldout"]
    return world, world.retain.select(range(n - held)), world.retain.select(range(n - held, n))


def _args(output_dir, **overrides):
    kwargs = dict(output_dir=str(output_dir), use_cpu=not torch.cuda.is_available(), packing=False, max_length=128)
    kwargs.update(CPU_TRAINING_DEFAULTS)
    kwargs.update(overrides)
    return kwargs


def pretrain(seed: int, work: Path, tok, world, retain_train) -> Path:
    """The original model of one seed (cached in `work`)."""
    path = work / f"original-{seed}"
    if (path / "config.json").is_file():
        return path
    p = SETTINGS["pretrain"]
    model = tiny_causal_lm(seed=seed, hidden_size=SETTINGS["model"]["hidden_size"])
    data = concatenate_datasets([world.forget, retain_train]).shuffle(seed=seed)
    args = sft_config(
        work / "pretrain-tmp",
        max_steps=p["max_steps"],
        per_device_train_batch_size=p["batch_size"],
        learning_rate=p["learning_rate"],
        lr_scheduler_type=p["schedule"],
        max_length=p["max_length"],
        seed=seed,
    )
    SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train()
    tmp = work / f".original-{seed}-tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def evaluate(model, tok, world, retain_eval) -> dict:
    prompts = world.familiarity_prompts
    out = evaluate_unlearning(
        model,
        tok,
        prompts=prompts["prompt"],
        targets=prompts["targets"],
        anchored_terms=list(world.anchored_terms),
        theme_terms=world.theme_terms,
        forget_texts=world.forget_heldout["text"],
        retain_texts=retain_eval["text"],
        max_new_tokens=SETTINGS["eval"]["max_new_tokens"],
    )
    out["completions"] = out["completions"][:5]
    return out


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")


def _reinforce_settings(work, seed):
    from peft import LoraConfig

    r = SETTINGS["whp"]["reinforce"]
    reinforce_args = sft_config(
        work / "reinforce",
        max_steps=r["max_steps"],
        per_device_train_batch_size=r["batch_size"],
        learning_rate=r["learning_rate"],
        max_length=128,
        seed=seed,
    )
    lora = LoraConfig(r=r["lora_r"], lora_alpha=2 * r["lora_r"], target_modules="all-linear", task_type="CAUSAL_LM")
    return reinforce_args, lora


def _whp_args(work, seed, alpha, finetune):
    s = SETTINGS["whp"]
    return UnlearnConfig(
        **_args(
            work / "whp",
            unlearning_loss="whp",
            whp_alpha=alpha,
            whp_extra_alphas=[a for a in s["extra_alphas"] if a != alpha],
            block_size=s["block_size"],
            forbid_value=s["forbid_value"],
            anchor_seed=seed,
            num_train_epochs=finetune["num_train_epochs"],
            per_device_train_batch_size=finetune["batch_size"],
            learning_rate=finetune["learning_rate"],
            seed=seed,
        )
    )


def run_whp(path, tok, world, seed, work, finetune, alpha) -> tuple:
    """The one-call pipeline (reinforce -> labels -> fine-tune) from the original model."""
    args = _whp_args(work, seed, alpha, finetune)
    reinforce_args, lora = _reinforce_settings(work, seed)
    t0 = time.time()
    trainer, _ = run_whp_pipeline(
        _load(path),
        tok,
        world.forget["text"],
        world.anchored_terms,
        args,
        reinforce_args=reinforce_args,
        reinforce_lora_config=lora,
    )
    return trainer.model, time.time() - t0


def run_baseline(path, tok, world, retain_train, loss_type, lr, seed, work):
    b = SETTINGS["baselines"]
    args = UnlearnConfig(
        **_args(
            work / loss_type,
            unlearning_loss=loss_type,
            max_steps=b["max_steps"],
            per_device_train_batch_size=b["batch_size"],
            learning_rate=lr,
            npo_beta=b["npo_beta"],
            forget_weight=b["forget_weight"],
            retain_weight=b["retain_weight"],
            seed=seed,
        )
    )
    trainer = UnlearnTrainer(
        model=_load(path),
        args=args,
        train_dataset=world.forget,
        retain_dataset=retain_train if args.needs_retain else None,
        processing_class=tok,
    )
    trainer.train()
    return trainer.model


def _relative(result: dict, original: dict) -> dict:
    out = dict(result)
    if original["familiarity"]:
        out["familiarity_drop_rel"] = 1 - result["familiarity"] / original["familiarity"]
    if original["prob_familiarity"]:
        out["prob_familiarity_drop_rel"] = 1 - result["prob_familiarity"] / original["prob_familiarity"]
    out["retain_ppl_rise_rel"] = result["retain_ppl"] / original["retain_ppl"] - 1
    out["forget_ppl_rise_rel"] = result["forget_ppl"] / original["forget_ppl"] - 1
    return out


def _pick(rows: list[dict]) -> dict:
    """Lowest familiarity among the settings within the retain budget (ties: lower retain perplexity), else the
    setting with the smallest retain perplexity rise."""
    ok = [r for r in rows if r["retain_ppl_rise_rel"] <= SETTINGS["retain_ppl_budget"]]
    if ok:
        return min(ok, key=lambda r: (r["familiarity"], r["retain_ppl"]))
    return min(rows, key=lambda r: r["retain_ppl_rise_rel"])


def _search_whp(path, tok, world, retain_eval, original, seed, work) -> list[dict]:
    """Labels built once (all α columns); the fine-tune's learning rate, epochs and α searched on top."""
    grid = SETTINGS["search"]["whp"]
    model = _load(path)
    reinforce_args, lora = _reinforce_settings(work, seed)
    reinforced = reinforce(model, tok, world.forget, reinforce_args, lora_config=lora)
    labelled = build_generic_labels(
        reinforced,
        tok,
        world.forget["text"],
        world.anchored_terms,
        block_size=SETTINGS["whp"]["block_size"],
        alpha=grid["alphas"][0],
        extra_alphas=grid["alphas"][1:],
        seed=seed,
        forbid_value=SETTINGS["whp"]["forbid_value"],
    )
    del reinforced, model
    rows = []
    for alpha in grid["alphas"]:
        data = use_alpha(labelled, alpha)
        for lr in grid["learning_rates"]:
            for epochs in grid["num_train_epochs"]:
                finetune = {**SETTINGS["whp"]["finetune"], "learning_rate": lr, "num_train_epochs": epochs}
                args = _whp_args(work, seed, alpha, finetune)
                trainer = UnlearnTrainer(model=_load(path), args=args, train_dataset=data, processing_class=tok)
                trainer.train()
                result = _relative(evaluate(trainer.model, tok, world, retain_eval), original)
                result.pop("completions")
                rows.append({"alpha": alpha, "learning_rate": lr, "num_train_epochs": epochs, **result})
                log(
                    f"search whp α {alpha:g} lr {lr:g} ep {epochs}: familiarity {result['familiarity']:.3f} "
                    f"retain ppl {result['retain_ppl']:.3f} ({100 * result['retain_ppl_rise_rel']:+.1f}%)"
                )
    return rows


def search(tok, world, retain_train, retain_eval, work) -> dict:
    """Learning-rate search of the baselines on the dev seed; returns the table and the chosen rates."""
    seed = SETTINGS["search"]["seed"]
    path = pretrain(seed, work, tok, world, retain_train)
    original = evaluate(_load(path), tok, world, retain_eval)
    table, chosen = {}, {}
    table["whp"] = _search_whp(path, tok, world, retain_eval, original, seed, work)
    chosen["whp"] = _pick(table["whp"])
    for loss_type in ("grad_ascent", "grad_diff", "npo"):
        rows = []
        for lr in SETTINGS["search"]["learning_rates"]:
            model = run_baseline(path, tok, world, retain_train, loss_type, lr, seed, work)
            result = _relative(evaluate(model, tok, world, retain_eval), original)
            result.pop("completions")
            rows.append({"learning_rate": lr, **result})
            log(
                f"search {loss_type:<11} lr {lr:g}: familiarity {result['familiarity']:.3f} "
                f"retain ppl {result['retain_ppl']:.3f} ({100 * result['retain_ppl_rise_rel']:+.1f}%)"
            )
        chosen[loss_type] = _pick(rows)["learning_rate"]
        table[loss_type] = rows
    original.pop("completions")
    return {"seed": seed, "original": original, "rows": table, "chosen": chosen}


_KEYS = ("familiarity", "class3_rate", "prob_familiarity", "forget_ppl", "retain_ppl")
_REL = ("familiarity_drop_rel", "prob_familiarity_drop_rel", "retain_ppl_rise_rel", "forget_ppl_rise_rel")


def summarise(per_seed: dict) -> dict:
    summary = {}
    for arm in ARMS:
        runs = [seed[arm] for seed in per_seed.values() if arm in seed]
        if not runs:
            continue
        entry = {}
        for key in (*_KEYS, *_REL):
            if all(key in r for r in runs):
                stats = mean_std([r[key] for r in runs])
                entry[key], entry[f"{key}_std"] = stats["mean"], stats["std"]
        if arm != "original":
            entry["meets_goal_all_seeds"] = all(
                r["familiarity_drop_rel"] >= 0.9 and r["retain_ppl_rise_rel"] <= 0.05 for r in runs
            )
        entry["n_seeds"] = len(runs)
        summary[arm] = entry
    return summary


def table(summary: dict, extra: dict | None = None) -> str:
    lines = [
        "| arm | familiarity (keyword) | class-3 rate | prob. familiarity | forget ppl | retain ppl | familiarity "
        "drop | retain ppl rise | goal met (all seeds) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(entry, key, fmt="{:.3f}", scale=1.0):
        if entry.get(key) is None:
            return "–"
        return (fmt.format(scale * entry[key]) + " ± " + fmt.format(scale * entry[f"{key}_std"])).replace("± -", "± ")

    for arm, e in summary.items():
        lines.append(
            f"| {arm} | {cell(e, 'familiarity')} | {cell(e, 'class3_rate')} | {cell(e, 'prob_familiarity')} | "
            f"{cell(e, 'forget_ppl', '{:.2f}')} | {cell(e, 'retain_ppl', '{:.3f}')} | "
            f"{cell(e, 'familiarity_drop_rel', '{:.1f}%', 100)} | {cell(e, 'retain_ppl_rise_rel', '{:+.1f}%', 100)} "
            f"| {'–' if arm == 'original' else ('yes' if e.get('meets_goal_all_seeds') else 'no')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search", action="store_true", help="learning-rate search of the baselines on a dev seed")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "unlearn_bench"))
    parser.add_argument("--out", default=str(RESULTS / "efficacy.json"))
    parser.add_argument("--table", default=str(RESULTS / "efficacy_book.md"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    world, retain_train, retain_eval = _world()
    t_start = time.time()
    searched = search(tok, world, retain_train, retain_eval, work) if args.search else None
    if searched:
        best = searched["chosen"].pop("whp")
        rates = searched["chosen"]
        whp_alpha = best["alpha"]
        whp_finetune = {
            **SETTINGS["whp"]["finetune"],
            "learning_rate": best["learning_rate"],
            "num_train_epochs": best["num_train_epochs"],
        }
    else:
        rates = dict(SETTINGS["defaults_without_search"])
        whp_alpha, whp_finetune = SETTINGS["whp"]["alpha"], SETTINGS["whp"]["finetune"]
    log(f"baseline learning rates: {rates}; whp: α {whp_alpha:g}, fine-tune {whp_finetune}")
    per_seed = {}
    for seed in args.seeds:
        t0 = time.time()
        path = pretrain(seed, work, tok, world, retain_train)
        original = evaluate(_load(path), tok, world, retain_eval)
        runs = {"original": original}
        model, seconds = run_whp(path, tok, world, seed, work, whp_finetune, whp_alpha)
        runs["whp"] = _relative(evaluate(model, tok, world, retain_eval), original)
        runs["whp"].update(pipeline_seconds=seconds, alpha=whp_alpha, **whp_finetune)
        for loss_type in ("grad_ascent", "grad_diff", "npo"):
            model = run_baseline(path, tok, world, retain_train, loss_type, rates[loss_type], seed, work)
            runs[loss_type] = _relative(evaluate(model, tok, world, retain_eval), original)
            runs[loss_type]["learning_rate"] = rates[loss_type]
        per_seed[str(seed)] = runs
        log(
            f"seed {seed} ({time.time() - t0:.0f} s): "
            + ", ".join(f"{a} fam {r['familiarity']:.2f} ret {r['retain_ppl']:.3f}" for a, r in runs.items())
        )
    summary = summarise(per_seed)
    results = {
        "summary": summary,
        "settings": {
            **SETTINGS,
            "baseline_learning_rates": rates,
            "whp_chosen": {"alpha": whp_alpha, **whp_finetune},
            "grader": "keyword (offline), not GPT-4",
        },
        "seeds": list(args.seeds),
        "per_seed": per_seed,
    }
    write_efficacy("book", results, args.out)
    extra_path = RESULTS / "unlearn_book_search.json"
    tmp = extra_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"search": searched}, indent=1))
    os.replace(tmp, extra_path)
    md = [
        "# Unlearning on the book toy world",
        "",
        f"Seeds {args.seeds}; mean ± std. Generated by `python benchmarks/unlearn_efficacy.py --seeds "
        f"{' '.join(map(str, args.seeds))}{' --search' if args.search else ''}` in {time.time() - t_start:.0f} s "
        "(2 shared CPU cores). Familiarity: keyword grader (5·n₃ + n₂)/N on 30 prompts, not comparable to the "
        "paper's GPT-4 grader. Goal: familiarity drop ≥ 90 % with retain perplexity rise ≤ 5 %.",
        "",
        table(summary),
        "",
        f"Baseline learning rates: {rates}; WHP fine-tune: α {whp_alpha:g}, {whp_finetune}"
        + (f" (search on dev seed {searched['seed']})." if searched else " (defaults, no search)."),
    ]
    if searched:
        md += [
            "",
            f"## Search on the dev seed {searched['seed']} (original: familiarity "
            f"{searched['original']['familiarity']:.3f}, retain ppl {searched['original']['retain_ppl']:.3f})",
            "",
        ]
        md += [
            "| loss | α | lr | epochs / steps | familiarity | prob. familiarity | retain ppl rise | forget ppl |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for loss_type, rows in searched["rows"].items():
            for r in rows:
                md.append(
                    f"| {loss_type} | {r.get('alpha', '–')} | {r['learning_rate']:g} | "
                    f"{r.get('num_train_epochs', str(SETTINGS['baselines']['max_steps']) + ' steps')} | "
                    f"{r['familiarity']:.3f} | {r['prob_familiarity']:.3f} | "
                    f"{100 * r['retain_ppl_rise_rel']:+.1f}% | {r['forget_ppl']:.2f} |"
                )
    Path(args.table).write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
