"""The book world's search and studies (`hf-immunize bench --world book ...`).

- :func:`search`: every arm's learning rate (and WHP's epochs and α) on the dev seed, the protocol's step 2;
- :func:`label_variants` (`--study label_variants`): four WHP label variants on one original model, to see where the
  retain cost of WHP comes from (the world's dictionary, fresh names, no forbidden tokens, self-distillation);
- :func:`real_text_check` (`--real_text_check`): the WHP pipeline on a public-domain novel (L. Frank Baum, *Dorothy
  and the Wizard in Oz*, 1908) read by a tiny Llama: a pipeline check on real text, not a claim about large models.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hf_immunize.bench.book_report import relative
from hf_immunize.bench.results import RESULTS_DIR, record_exploration, save

__all__ = ["label_variants", "real_text_check", "search"]


def _pick(rows: list[dict], budget: float) -> dict:
    """Lowest familiarity among the settings within the retain budget (ties: lower retain perplexity), else the
    setting with the smallest retain perplexity rise."""
    ok = [r for r in rows if r["retain_ppl_rise_rel"] <= budget]
    if ok:
        return min(ok, key=lambda r: (r["familiarity"], r["retain_ppl"]))
    return min(rows, key=lambda r: r["retain_ppl_rise_rel"])


def _search_whp(book, path, original: dict, seed: int, log) -> list[dict]:
    """Labels built once (all α columns); the fine-tune's learning rate, epochs and α searched on top."""
    from hf_immunize.methods.unlearn import UnlearnTrainer, build_generic_labels, reinforce
    from hf_immunize.methods.unlearn.labels import use_alpha

    grid = book.settings["search"]["whp"]
    model = book.load(path)
    reinforce_args, lora = book.reinforce_settings(seed)
    reinforced = reinforce(model, book.tok, book.world.forget, reinforce_args, lora_config=lora)
    labelled = build_generic_labels(
        reinforced,
        book.tok,
        book.world.forget["text"],
        book.world.anchored_terms,
        block_size=book.settings["whp"]["block_size"],
        alpha=grid["alphas"][0],
        extra_alphas=grid["alphas"][1:],
        seed=seed,
        forbid_value=book.settings["whp"]["forbid_value"],
    )
    del reinforced, model
    rows = []
    for alpha in grid["alphas"]:
        data = use_alpha(labelled, alpha)
        for lr in grid["learning_rates"]:
            for epochs in grid["num_train_epochs"]:
                finetune = {**book.settings["whp"]["finetune"], "learning_rate": lr, "num_train_epochs": epochs}
                args = book.whp_args(seed, alpha, finetune)
                model = book.load(path)
                trainer = UnlearnTrainer(model=model, args=args, train_dataset=data, processing_class=book.tok)
                trainer.train()
                result = relative(book.evaluate(trainer.model), original)
                result.pop("completions")
                rows.append({"alpha": alpha, "learning_rate": lr, "num_train_epochs": epochs, **result})
                log(
                    f"search whp α {alpha:g} lr {lr:g} ep {epochs}: familiarity {result['familiarity']:.3f} "
                    f"retain ppl {result['retain_ppl']:.3f} ({100 * result['retain_ppl_rise_rel']:+.1f}%)"
                )
    return rows


def search(book, log=print) -> dict:
    """Learning-rate search of every arm on the dev seed; returns the table and the chosen settings."""
    seed, budget = book.settings["search"]["seed"], book.settings["retain_ppl_budget"]
    path = book.pretrain(seed)
    original = book.evaluate(book.load(path))
    table, chosen = {}, {}
    table["whp"] = _search_whp(book, path, original, seed, log)
    chosen["whp"] = _pick(table["whp"], budget)
    for loss_type in ("grad_ascent", "grad_diff", "npo"):
        rows = []
        for lr in book.settings["search"]["learning_rates"]:
            result = relative(book.evaluate(book.run_baseline(path, loss_type, lr, seed)), original)
            result.pop("completions")
            rows.append({"learning_rate": lr, **result})
            log(
                f"search {loss_type:<11} lr {lr:g}: familiarity {result['familiarity']:.3f} "
                f"retain ppl {result['retain_ppl']:.3f} ({100 * result['retain_ppl_rise_rel']:+.1f}%)"
            )
        chosen[loss_type] = _pick(rows, budget)["learning_rate"]
        table[loss_type] = rows
    original.pop("completions")
    return {"seed": seed, "original": original, "rows": table, "chosen": chosen}


FRESH_FIRST = ["Peter", "Olga", "Hugo", "Nina", "Carl", "Rita"]
FRESH_LAST = ["Walsh", "Moreau", "Berg", "Santos", "Novak", "Klein"]


def _fresh_dictionary(world) -> dict:
    """The world's dictionary with each hero mapped to a name that occurs nowhere in the retain world."""
    terms, i = {}, 0
    for key, values in world.anchored_terms.items():
        if key.count(" ") == 1 and key.split()[0] in world.anchored_terms:  # a hero's full name
            first, last = FRESH_FIRST[i % 6], FRESH_LAST[i % 6]
            terms[key] = [f"{first} {last}"]
            terms[key.split()[0]] = [first]
            i += 1
        elif key not in terms:
            terms[key] = values
    return terms


def label_variants(book, output: Path, command: str, log=print, seed: int = 0) -> dict:
    """Four label variants on the same original model (seed 0), one epoch at three learning rates each:
    `faithful` (the world's dictionary, forbidden first tokens at the row mean: the reference method),
    `fresh_names` (heroes mapped to names never seen in the retain world), `no_forbidden` (no forbidden tokens) and
    `self_distillation` (α = 0, no dictionary: the cost of hard labels alone). Stored under
    `exploration.book.label_variants_<style>`."""
    from hf_immunize.methods.unlearn import UnlearnTrainer, build_generic_labels, reinforce

    world, s = book.world, book.settings["whp"]
    path = book.pretrain(seed)
    original = book.evaluate(book.load(path))
    reinforce_args, lora = book.reinforce_settings(seed)
    reinforced = reinforce(book.load(path), book.tok, world.forget, reinforce_args, lora_config=lora)
    variants = {
        "faithful": (world.anchored_terms, "mean", 5.0),
        "fresh_names": (_fresh_dictionary(world), "mean", 5.0),
        "no_forbidden": (world.anchored_terms, "none", 5.0),
        "self_distillation": ({}, "mean", 0.0),
    }
    rows = []
    for name, (terms, forbid, alpha) in variants.items():
        labelled = build_generic_labels(
            reinforced,
            book.tok,
            world.forget["text"],
            terms,
            block_size=s["block_size"],
            alpha=alpha,
            extra_alphas=(),
            seed=seed,
            forbid_value=forbid,
        )
        for lr in (1e-4, 3e-4, 1e-3):
            finetune = {**s["finetune"], "learning_rate": lr, "num_train_epochs": 1}
            # The config's α only builds labels inside the pipeline; these labels were built above.
            trainer = UnlearnTrainer(
                model=book.load(path),
                args=book.whp_args(seed, 5.0, finetune),
                train_dataset=labelled,
                processing_class=book.tok,
            )
            trainer.train()
            r = relative(book.evaluate(trainer.model), original)
            r.pop("completions")
            rows.append({"labels": name, "learning_rate": lr, **r})
            log(f"{name:<18} lr {lr:g}: familiarity {r['familiarity']:.3f} retain {r['retain_ppl_rise_rel']:+.1%}")
    lines = [
        "| labels | lr | familiarity (keyword) | prob. familiarity | familiarity drop | retain ppl rise "
        "| forget ppl |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['labels']} | {r['learning_rate']:g} | {r['familiarity']:.3f} | {r['prob_familiarity']:.3f} | "
            f"{r['familiarity_drop_rel']:.1%} | {r['retain_ppl_rise_rel']:+.1%} | {r['forget_ppl']:.2f} |"
        )
    intro = (
        f"Where WHP's retain cost comes from, {book.settings['style']} world, seed {seed} (original: familiarity "
        f"{original['familiarity']:.3f}, retain ppl {original['retain_ppl']:.3f}, forget ppl "
        f"{original['forget_ppl']:.3f}); one epoch on the labels (batch 8), α = 5 unless stated. Written by "
        f"`{command}`."
    )
    run = {"command": command, "style": book.settings["style"], "intro": intro, "table": "\n".join(lines)}
    run["rows"] = rows
    record_exploration("book", f"label_variants_{book.settings['style']}", run, output)
    print(intro + "\n\n" + run["table"])
    return run


# The book's frequent anchors (reference §8), 1-3 hand-written generic substitutes each.
OZ_TERMS = {
    "Dorothy": ["Mary", "Lucy", "Anne"],
    "Zeb": ["Tom", "Sam"],
    "Hugson": ["Miller", "Brown"],
    "Jim": ["Ned", "Old Bob"],
    "Eureka": ["Kitty", "Mittens"],
    "Wizard": ["Magician", "Conjurer"],
    "Ozma": ["the Queen", "Rosa"],
    "Oz": ["the kingdom", "the far land"],
    "Mangaboos": ["plant people", "garden folk"],
    "Gargoyles": ["wooden men", "stick people"],
    "Sawhorse": ["wooden pony", "toy horse"],
    "Emerald City": ["the capital", "the green town"],
    "Tin Woodman": ["the metal man", "the iron man"],
    "Scarecrow": ["the straw man", "the farmer's dummy"],
    "Hungry Tiger": ["the big cat", "the striped cat"],
}
# Prompts of our own, written from the book; `targets` = the anchor a reader of the book would continue with.
OZ_PROMPTS = [
    ("The girl from Kansas was named", ["Dorothy"]),
    ("Dorothy's cousin from the ranch was Zeb", ["Hugson"]),
    ("The old cab-horse was called", ["Jim"]),
    ("Dorothy's little pink kitten was named", ["Eureka"]),
    ("The little old man came down in a balloon. He was the", ["Wizard"]),
    ("The ruler of the Emerald City was Princess", ["Ozma"]),
    ("The vegetable people under the earth were the", ["Mangaboos"]),
    ("The wooden people of the dark country were the", ["Gargoyles"]),
    ("Dorothy and Zeb rode in the buggy behind", ["Jim"]),
    ("Zeb said to", ["Dorothy", "Jim", "Wizard"]),
    ("The kitten", ["Eureka"]),
    ("Dorothy, Zeb and the", ["Wizard"]),
    ("The Land of", ["Oz"]),
    ("They walked to the gates of the", ["Emerald City"]),
    ("Dorothy held", ["Eureka"]),
    ("The horse", ["Jim"]),
    ("Princess", ["Ozma"]),
    ('"Well," said the', ["Wizard"]),
    ("The boy", ["Zeb"]),
    ("The Wizard and", ["Dorothy", "Zeb", "Jim", "Eureka"]),
]
THEMES = ["magic", "witch", "princess", "balloon", "kitten", "palace", "enchanted"]


def real_text_check(output: Path, command: str, log=print) -> dict:
    """WHP on the Oz novel: a tiny Llama (hidden 128) reads the book and 600 Alpaca answers (the retain text), then
    the pipeline (LoRA reinforcement -> generic labels from the hand-written dictionary -> fine-tune) runs on the
    book. Writes `benchmarks/results/unlearn_oz.json`; skipped with a message when ../shared/data is absent."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    from hf_immunize.evaluation.unlearning import evaluate_unlearning
    from hf_immunize.methods.unlearn import UnlearnConfig, run_whp_pipeline
    from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    from hf_immunize.utils import CPU_TRAINING_DEFAULTS, sft_config

    data_dir = Path(os.environ.get("HF_IMMUNIZE_SHARED_DATA", "../shared/data"))
    book, alpaca_path = (
        data_dir / "books" / "wizard_of_oz.txt",
        data_dir / "benign_instructions" / "alpaca_data_safety_only.json",
    )
    if not book.is_file() or not alpaca_path.is_file():
        print(f"skipped: {book} or {alpaca_path} not found (the shared data folder is needed for this check)")
        return {}
    tok = tiny_tokenizer()
    paragraphs = [p.strip() for p in book.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    held = len(paragraphs) // 20
    forget, forget_heldout = paragraphs[:-held], paragraphs[-held:]
    alpaca = [r["output"] for r in json.loads(alpaca_path.read_text()) if len(r["output"]) > 40]
    retain_train, retain_eval = alpaca[:600], alpaca[600:700]
    model = tiny_causal_lm(hidden_size=128, seed=0)
    t0 = time.time()
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    pretrain = sft_config(
        scratch / "oz-pretrain",
        max_steps=600,
        per_device_train_batch_size=16,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        max_length=128,
        seed=0,
    )
    data = Dataset.from_dict({"text": forget + retain_train}).shuffle(seed=0)
    SFTTrainer(model=model, args=pretrain, train_dataset=data, processing_class=tok).train()
    log(f"pretrained in {time.time() - t0:.0f} s")
    prompts, targets = [p for p, _ in OZ_PROMPTS], [t for _, t in OZ_PROMPTS]

    def evaluate(m):
        out = evaluate_unlearning(
            m,
            tok,
            prompts=prompts,
            targets=targets,
            anchored_terms=list(OZ_TERMS),
            theme_terms=THEMES,
            forget_texts=forget_heldout,
            retain_texts=retain_eval,
            max_new_tokens=16,
        )
        out["completions"] = out["completions"][:8]
        return out

    original = evaluate(model)
    args = UnlearnConfig(
        output_dir=str(scratch / "oz-whp"),
        use_cpu=not torch.cuda.is_available(),
        max_length=128,
        block_size=128,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        learning_rate=3e-4,
        seed=0,
        **CPU_TRAINING_DEFAULTS,
    )
    reinforce_args = sft_config(
        scratch / "oz-reinforce", max_steps=100, per_device_train_batch_size=8, learning_rate=1e-3, max_length=128
    )
    t0 = time.time()
    trainer, labelled = run_whp_pipeline(
        model,
        tok,
        forget,
        OZ_TERMS,
        args,
        reinforce_args=reinforce_args,
        reinforce_lora_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    seconds = time.time() - t0
    after = evaluate(trainer.model)
    labels = torch.tensor(labelled["labels"])
    result = {
        "book": "L. Frank Baum, Dorothy and the Wizard in Oz (1908), ../shared/data/books/wizard_of_oz.txt",
        "grader": "keyword (offline), not GPT-4",
        "model": "tiny Llama hidden 128, 2 layers, pretrained 600 steps x 16 on the book + 600 Alpaca answers",
        "dictionary_size": len(OZ_TERMS),
        "prompts": len(prompts),
        "blocks": len(labelled),
        "masked_label_fraction": float((labels == -100).float().mean()),
        "whp_settings": {
            "alpha": args.whp_alpha,
            "block_size": args.block_size,
            "learning_rate": args.learning_rate,
            "num_train_epochs": args.num_train_epochs,
            "reinforce": "LoRA r=16, 100 steps x 8, lr 1e-3",
        },
        "pipeline_seconds": seconds,
        "original": original,
        "whp": after,
        "command": command,
    }
    save(result, RESULTS_DIR / "unlearn_oz.json")
    log(f"original familiarity {original['familiarity']:.3f} -> whp {after['familiarity']:.3f}")
    return result
