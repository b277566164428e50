"""Real-text pipeline check: WHP on a public-domain novel (L. Frank Baum, *Dorothy and the Wizard in Oz*, 1908).

A tiny Llama (hidden 128) first reads the book (and some Alpaca answers, the retain text) so that it has something to
forget; the WHP pipeline (LoRA reinforcement -> generic labels from a hand-written dictionary of the book's anchors ->
fine-tune) then runs on the book. A pipeline check on real text, not a claim about large models: the tiny model
knows little of the book beyond its most frequent names.

Results go to `benchmarks/results/unlearn_oz.json` and are quoted in docs/unlearn.md.
Usage (repo root): `python benchmarks/unlearn_oz.py` (skips with a message when ../shared/data is absent).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hf_immunize.utils import set_offline_env

set_offline_env()

import torch  # noqa: E402

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from hf_immunize.evaluation.unlearning import evaluate_unlearning  # noqa: E402
from hf_immunize.methods.unlearn import UnlearnConfig, run_whp_pipeline  # noqa: E402
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer  # noqa: E402
from hf_immunize.utils import CPU_TRAINING_DEFAULTS, sft_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BOOK = DATA / "books" / "wizard_of_oz.txt"
ALPACA = DATA / "benign_instructions" / "alpaca_data_safety_only.json"
OUT = ROOT / "benchmarks" / "results" / "unlearn_oz.json"

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


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> dict:
    if not BOOK.is_file():
        print(f"skipped: {BOOK} not found (the shared data folder is needed for this check)")
        return {}
    tok = tiny_tokenizer()
    paragraphs = [p.strip() for p in BOOK.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    held = len(paragraphs) // 20
    forget, forget_heldout = paragraphs[:-held], paragraphs[-held:]
    alpaca = [r["output"] for r in json.loads(ALPACA.read_text()) if len(r["output"]) > 40]
    retain_train, retain_eval = alpaca[:600], alpaca[600:700]
    model = tiny_causal_lm(hidden_size=128, seed=0)
    t0 = time.time()
    pretrain = sft_config(
        "/tmp/oz-pretrain",
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
    log(f"original: { ({k: v for k, v in original.items() if k != 'completions'}) }")
    args = UnlearnConfig(
        output_dir="/tmp/oz-whp",
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
        "/tmp/oz-reinforce", max_steps=100, per_device_train_batch_size=8, learning_rate=1e-3, max_length=128
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
    log(f"whp: { ({k: v for k, v in after.items() if k != 'completions'}) }")
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
        "command": "python benchmarks/unlearn_oz.py",
    }
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, OUT)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
