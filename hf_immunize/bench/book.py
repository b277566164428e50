"""Unlearning on the book toy world: WHP against gradient ascent, gradient difference and NPO
(`hf-immunize bench --world book`).

Protocol (numbers in `benchmarks/results/efficacy.json` under `summary.book`, table in `efficacy_book.md`):

1. "original": a tiny Llama (hidden 64, 2 layers) trained with SFT on the world's forget passages plus 180 of its 200
   retain passages until it knows the invented universe (the world is built with seed 0 for every run; the model
   seed and data order change with the run seed). `--style` picks the fair world (default) or the legacy one.
2. each arm starts from that model:
   - whp: reinforce (LoRA r=16, all linear layers, on the forget passages) -> generic labels (blocks of 64 tokens,
     the world's dictionary, forbidden first tokens at the row mean) -> fine-tune on the labels;
   - grad_ascent / grad_diff / npo: 30 steps at a learning rate;
   the learning rates (and WHP's epochs and α) are picked by a search on a separate dev seed (rule: lowest
   familiarity among the settings whose retain perplexity rises <= 5 %, else the smallest rise).
3. metrics (`hf_immunize.evaluation.unlearning`): keyword-graded completion familiarity (5·n₃ + n₂)/N on the 30
   familiarity prompts (greedy, 12 new tokens), probability familiarity, perplexity on the 20 held-out forget
   passages and on the 20 held-out retain passages; then the relearning attack as model cards report it
   (`relearning_attack` with `relearn_preset("toy")`: 20 steps at lr 1e-3 on 10 forget passages) and familiarity again.

    hf-immunize bench --world book                        # fair world, seeds 0 1 2, search on the dev seed
    hf-immunize bench --world book --style legacy --exploration_tag legacy_world    # the first world, kept apart
    hf-immunize bench --world book --study label_variants --style legacy           # where WHP's retain cost comes from
    hf-immunize bench --world book --real_text_check     # WHP on a public-domain novel (../shared/data)
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

from hf_immunize.bench.book_report import ARMS, markdown, relative, summarise
from hf_immunize.bench.results import (
    DEFAULT_OUTPUT,
    RESULTS_DIR,
    command_line,
    load,
    quiet_and_deterministic,
    record_exploration,
    replace_world,
    write_efficacy,
)

__all__ = ["ARMS", "SETTINGS", "Book", "main", "run_seed"]

SETTINGS = {
    "world_seed": 0,
    "style": "fair",
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
    "relearn": "toy",
    "retain_ppl_budget": 0.05,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Book:
    """One run's world, tokenizer, settings and scratch directory, and the steps every arm shares."""

    def __init__(self, settings: dict, work: Path):
        from hf_immunize.data.toy import make_book_world
        from hf_immunize.testing import tiny_tokenizer

        self.settings, self.work = settings, work
        self.tok = tiny_tokenizer()
        self.world = make_book_world(seed=settings["world_seed"], style=settings["style"])
        n, held = len(self.world.retain), settings["eval"]["retain_heldout"]
        self.retain_train = self.world.retain.select(range(n - held))
        self.retain_eval = self.world.retain.select(range(n - held, n))

    def _args(self, output_dir, **overrides) -> dict:
        import torch

        from hf_immunize.utils import CPU_TRAINING_DEFAULTS

        kwargs = dict(output_dir=str(output_dir), use_cpu=not torch.cuda.is_available(), packing=False, max_length=128)
        kwargs.update(CPU_TRAINING_DEFAULTS)
        kwargs.update(overrides)
        return kwargs

    def pretrain(self, seed: int) -> Path:
        """The original model of one seed (cached in the work directory, by world style and seed)."""
        from datasets import concatenate_datasets
        from trl import SFTTrainer

        from hf_immunize.testing import tiny_causal_lm
        from hf_immunize.utils import sft_config

        path = self.work / f"original-{self.settings['style']}-{seed}"
        if (path / "config.json").is_file():
            return path
        p = self.settings["pretrain"]
        model = tiny_causal_lm(seed=seed, hidden_size=self.settings["model"]["hidden_size"])
        data = concatenate_datasets([self.world.forget, self.retain_train]).shuffle(seed=seed)
        args = sft_config(
            self.work / "pretrain-tmp",
            max_steps=p["max_steps"],
            per_device_train_batch_size=p["batch_size"],
            learning_rate=p["learning_rate"],
            lr_scheduler_type=p["schedule"],
            max_length=p["max_length"],
            seed=seed,
        )
        SFTTrainer(model=model, args=args, train_dataset=data, processing_class=self.tok).train()
        tmp = self.work / f".{path.name}-{os.getpid()}-tmp"
        model.save_pretrained(tmp)
        self.tok.save_pretrained(tmp)
        os.replace(tmp, path)
        return path

    def load(self, path):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")

    def evaluate(self, model) -> dict:
        from hf_immunize.evaluation.unlearning import evaluate_unlearning

        prompts = self.world.familiarity_prompts
        out = evaluate_unlearning(
            model,
            self.tok,
            prompts=prompts["prompt"],
            targets=prompts["targets"],
            anchored_terms=list(self.world.anchored_terms),
            theme_terms=self.world.theme_terms,
            forget_texts=self.world.forget_heldout["text"],
            retain_texts=self.retain_eval["text"],
            max_new_tokens=self.settings["eval"]["max_new_tokens"],
        )
        out["completions"] = out["completions"][:5]
        return out

    def relearn(self, model, seed: int) -> dict:
        """The relearning attack as model cards report it: familiarity again after fine-tuning on forget passages."""
        import dataclasses

        from hf_immunize.evaluation.relearning import relearn_preset, relearning_attack
        from hf_immunize.evaluation.unlearning import evaluate_unlearning

        prompts = self.world.familiarity_prompts

        def point(m) -> dict:
            out = evaluate_unlearning(
                m,
                self.tok,
                prompts=prompts["prompt"],
                targets=prompts["targets"],
                anchored_terms=list(self.world.anchored_terms),
                theme_terms=self.world.theme_terms,
                max_new_tokens=self.settings["eval"]["max_new_tokens"],
            )
            return {"familiarity": out["familiarity"], "prob_familiarity": out["prob_familiarity"]}

        config = dataclasses.replace(relearn_preset(self.settings["relearn"]), seed=seed)
        return relearning_attack(model, self.tok, self.world.forget["text"], config, point, progress=False)

    def reinforce_settings(self, seed: int):
        from peft import LoraConfig

        from hf_immunize.utils import sft_config

        r = self.settings["whp"]["reinforce"]
        args = sft_config(
            self.work / "reinforce",
            max_steps=r["max_steps"],
            per_device_train_batch_size=r["batch_size"],
            learning_rate=r["learning_rate"],
            max_length=128,
            seed=seed,
        )
        lora = LoraConfig(
            r=r["lora_r"], lora_alpha=2 * r["lora_r"], target_modules="all-linear", task_type="CAUSAL_LM"
        )
        return args, lora

    def whp_args(self, seed: int, alpha: float, finetune: dict):
        from hf_immunize.methods.unlearn import UnlearnConfig

        s = self.settings["whp"]
        return UnlearnConfig(
            **self._args(
                self.work / "whp",
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

    def run_whp(self, path, seed: int, finetune: dict, alpha: float):
        """The one-call pipeline (reinforce -> labels -> fine-tune) from the original model."""
        from hf_immunize.methods.unlearn import run_whp_pipeline

        args = self.whp_args(seed, alpha, finetune)
        reinforce_args, lora = self.reinforce_settings(seed)
        t0 = time.time()
        trainer, _ = run_whp_pipeline(
            self.load(path),
            self.tok,
            self.world.forget["text"],
            self.world.anchored_terms,
            args,
            reinforce_args=reinforce_args,
            reinforce_lora_config=lora,
        )
        return trainer.model, time.time() - t0

    def run_baseline(self, path, loss_type: str, lr: float, seed: int):
        from hf_immunize.methods.unlearn import UnlearnConfig, UnlearnTrainer

        b = self.settings["baselines"]
        args = UnlearnConfig(
            **self._args(
                self.work / loss_type,
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
            model=self.load(path),
            args=args,
            train_dataset=self.world.forget,
            retain_dataset=self.retain_train if args.needs_retain else None,
            processing_class=self.tok,
        )
        trainer.train()
        return trainer.model


def run_seed(book: Book, seed: int, rates: dict, whp_alpha: float, whp_finetune: dict, arms) -> dict:
    """Every arm of one seed: familiarity and perplexities, relative to the original, and after relearning."""
    t0 = time.time()
    path = book.pretrain(seed)
    original = book.load(path)
    runs = {"original": {**book.evaluate(original), "relearning": book.relearn(original, seed)}}
    for arm in arms:
        if arm == "original":
            continue
        if arm == "whp":
            model, seconds = book.run_whp(path, seed, whp_finetune, whp_alpha)
            extra = {"pipeline_seconds": seconds, "alpha": whp_alpha, **whp_finetune}
        else:
            model = book.run_baseline(path, arm, rates[arm], seed)
            extra = {"learning_rate": rates[arm]}
        result = relative(book.evaluate(model), runs["original"])
        result["relearning"] = book.relearn(model, seed)
        runs[arm] = {**result, **extra}
    for arm, r in runs.items():  # after relearning, relative to the original model before it
        if arm != "original" and runs["original"]["familiarity"]:
            after = r["relearning"]["familiarity"]
            r["familiarity_drop_rel_after_relearning"] = 1 - after / runs["original"]["familiarity"]
    log(
        f"seed {seed} ({time.time() - t0:.0f} s): "
        + ", ".join(
            f"{a} fam {r['familiarity']:.2f} -> {r['relearning']['familiarity']:.2f} ret {r['retain_ppl']:.3f}"
            for a, r in runs.items()
        )
    )
    return runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-immunize bench --world book", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--style", choices=["fair", "legacy"], default="fair", help="the book world's style")
    parser.add_argument("--no_search", action="store_true", help="default learning rates, no search on the dev seed")
    parser.add_argument("--study", choices=["standard", "label_variants"], default="standard")
    parser.add_argument("--real_text_check", action="store_true", help="WHP on the Oz novel (../shared/data)")
    parser.add_argument("--work_dir", default="outputs/unlearn_bench", help="scratch directory (original models)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--table", default=str(RESULTS_DIR / "efficacy_book.md"))
    parser.add_argument("--exploration_tag", default=None, help="store under exploration.book.<tag>, not summary")
    parser.add_argument("--replace", action="store_true", help="make this run the book result, retiring the old one")
    parser.add_argument("--replaced_tag", default=None, help="exploration name of the result --replace retires")
    parser.add_argument("--from_json", action="store_true", help="only rewrite the Markdown table from --output")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    output = Path(args.output)
    if args.from_json:
        Path(args.table).write_text(markdown(load(output)))
        return load(output)
    quiet_and_deterministic()
    command = command_line("book", argv)
    if args.real_text_check:
        from hf_immunize.bench import book_studies

        return book_studies.real_text_check(output, command)
    settings = copy.deepcopy(SETTINGS)
    settings["style"] = args.style
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    book = Book(settings, work)
    if args.study == "label_variants":
        from hf_immunize.bench import book_studies

        return book_studies.label_variants(book, output, command, log)
    t_start = time.time()
    from hf_immunize.bench.book_studies import search

    searched = None if args.no_search else search(book, log)
    if searched:
        best = searched["chosen"].pop("whp")
        rates = searched["chosen"]
        whp_alpha = best["alpha"]
        whp_finetune = {
            **settings["whp"]["finetune"],
            "learning_rate": best["learning_rate"],
            "num_train_epochs": best["num_train_epochs"],
        }
    else:
        rates = dict(settings["defaults_without_search"])
        whp_alpha, whp_finetune = settings["whp"]["alpha"], settings["whp"]["finetune"]
    log(f"baseline learning rates: {rates}; whp: α {whp_alpha:g}, fine-tune {whp_finetune}")
    per_seed = {str(s): run_seed(book, s, rates, whp_alpha, whp_finetune, args.arms) for s in args.seeds}
    run_settings = {
        **settings,
        "search_on_dev_seed": searched is not None,
        "baseline_learning_rates": rates,
        "whp_chosen": {"alpha": whp_alpha, **whp_finetune},
        "grader": "keyword (offline), not GPT-4",
        "seconds": round(time.time() - t_start),
        "command": command,
    }
    results = {"summary": summarise(per_seed), "settings": run_settings, "seeds": args.seeds, "per_seed": per_seed}
    if args.exploration_tag:
        run = {**results, "search": searched}
        record_exploration("book", args.exploration_tag, run, output)
    else:
        if args.replace:
            replace_world("book", output, args.replaced_tag)

        def keep_search(data):
            if searched is not None:
                data.setdefault("search", {})["book"] = searched

        write_efficacy("book", results, output, summarise=summarise, finish=keep_search)
    data = load(output)
    if "book" in data.get("summary", {}):
        Path(args.table).write_text(markdown(data))
        print(Path(args.table).read_text())
    return results
