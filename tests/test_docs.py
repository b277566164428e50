"""Every Python and shell snippet of README.md and docs/*.md runs in a test, as written up to small substitutions that
are listed here (so a reader can see exactly what the test changes: a tiny model for a 7B one, two steps for 300, a
local file for a Hub id, the local fake Hub for the real one).

How it works:
- `_snippets()` finds every fenced block of a shell or Python language in README.md and docs/*.md.
- `SNIPPETS` registers each of them, keyed by its *content*: `match` is a piece of text found in that one snippet
  (never in another), so snippets can move, and new text around them needs no change here.
- `test_every_snippet_has_exactly_one_entry` fails, naming the file and line, when a snippet has no entry (or two),
  and when an entry matches no snippet. It is fast and always runs.
- `test_snippet_runs` runs each entry: Python in a fresh namespace of the test's interpreter (in a fresh interpreter
  when it needs the fake Hub), shell with `bash -e`, both in a temporary working directory that links `recipes/`
  and `scripts/` of the repo, offline (unless `fake_hub`, which points the Hub at tests/fake_hub.py). A `prelude`
  defines what the text leaves to the reader (`tokenizer`, `alignment`, ...), `after` runs an earlier snippet of
  the same page first (pages that build on a previous block), `check` asserts on the outcome, every `(old, new)`
  substitution must occur exactly once. Long ones carry `slow=True`.
- `covered_by` names another test that runs the snippet (the README's release snippets in tests/test_release.py);
  the entry proves it by comparing the text that test runs with the snippet.

To register a new snippet: add a `Snippet(file, name, match, ...)` to `SNIPPETS` with a `match` copied from the
snippet, then the substitutions and prelude it needs; `pytest tests/test_docs.py -k <name>` runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DATA

LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
PAGES = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Snippet:
    file: str
    name: str
    match: str
    subs: tuple[tuple[str, str], ...] = ()
    prelude: str = ""
    after: str | None = None  # `name` of an earlier entry of the same file, run first in the same process
    check: str = ""
    slow: bool = False
    fake_hub: bool = False
    shared_data: bool = False  # needs ../shared/data (skipped with a reason when absent)
    covered_by: tuple[str, str, tuple] | None = None  # (test module, function, args): returns the text it runs
    env: tuple[tuple[str, str], ...] = ()
    timeout: int = 900


def _snippets() -> list[tuple[str, int, str, str]]:
    """(file, line, language, text) of every shell or Python block."""
    out = []
    for page in PAGES:
        text = (REPO_ROOT / page).read_text()
        for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
            if m.group(1).lower() in LANGUAGES:
                out.append((page, text[: m.start()].count("\n") + 1, LANGUAGES[m.group(1).lower()], m.group(2)))
    return out


# ---- what the snippets leave to the reader --------------------------------------------------------------------------

# Python preludes. `TINY` keeps a run to a couple of steps on the CPU.
TOY = """
import os, sys, torch
torch.set_num_threads(1)
from hf_immunize.data.toy import make_safety_world
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
world = make_safety_world(seed=0, n_weapons=8)
tokenizer = tiny_tokenizer()
TINY = dict(max_steps=2, per_device_train_batch_size=4, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
            activation_checkpointing=False, disable_tqdm=True)
"""
BOOSTER_DATA = (
    TOY
    + """
from peft import LoraConfig
alignment_dataset = alignment = world.alignment
harmful_dataset = harmful = world.alignment_harmful.map(
    lambda r: {"completion": r["harmful"]}).select_columns(["prompt", "completion"])
lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
MODEL_DIR = "tiny-base"
tiny_causal_lm(save_dir=MODEL_DIR)
"""
)
ATTACK_DATA = (
    TOY
    + """
from hf_immunize.evaluation import AttackConfig
model = tiny_causal_lm()
harmful_pairs = attack_harmful = world.attack_harmful
benign_pairs = attack_benign = world.attack_benign
eval_harmful, eval_benign = world.eval_harmful.select(range(4)), world.eval_benign.select(range(4))
"""
)
MLAC_DATA = """
import torch
torch.set_num_threads(1)
from hf_immunize.data.toy import BiosWorld, make_bios_world
from hf_immunize.testing import tiny_encoder_classifier, tiny_tokenizer
world = make_bios_world(n=120, scrub_pronouns=True)
classifier = tiny_encoder_classifier(num_labels=len(world.professions))
bios_profession, bios_gender = world.train, BiosWorld.with_label(world.train, "gender")
tokenizer = tiny_tokenizer()
TINY = dict(max_steps=1, per_device_train_batch_size=4, inner_batch_sizes=[4], use_cpu=True, report_to="none",
            save_strategy="no", disable_tqdm=True)
"""
UNLEARN_DATA = """
import json, torch
torch.set_num_threads(1)
from hf_immunize.data.toy import make_book_world
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
from hf_immunize.utils import sft_config
book = make_book_world(n_passages=20)
model, tokenizer = tiny_causal_lm(), tiny_tokenizer()
forget = forget_dataset = book.forget
retain = book.retain
json.dump(book.anchored_terms, open("my_terms.json", "w"))
reinforce_args = sft_config("reinforce", max_steps=2, max_length=64)
"""
RELEASE = (
    BOOSTER_DATA
    + """
from hf_immunize import BoosterConfig, BoosterTrainer
from hf_immunize.evaluation import AttackConfig, SafetyEvalData
BASELINE = "undefended"
tiny_causal_lm(seed=1, save_dir=BASELINE)
args = BoosterConfig(output_dir="booster-out", hub_model_id="fake-user/booster", hub_token="hf_fake", **TINY)
trainer = BoosterTrainer(model=tiny_causal_lm(), args=args, train_dataset=alignment, harmful_dataset=harmful,
                         processing_class=tokenizer)
eval_data = SafetyEvalData(world.attack_harmful, world.attack_benign, world.eval_harmful, world.eval_benign)
TINY_ATTACK = AttackConfig(n_samples=10, max_steps=2, batch_size=5, max_new_tokens=4, max_eval_samples=4)
"""
)
# Shell preludes: a trained tiny Booster model where the docs expect one, and attack files from the shared data.
BOOSTER_TINY_RUN = (
    "hf-immunize booster --config recipes/booster_tiny.yaml --max_steps 2 --output_dir outputs/booster-tiny "
    '--toy_world \'{"seed": 0, "n_weapons": 8}\' > /dev/null\n'
)
ATTACK_FILES = f"""
cp {SHARED_DATA}/repnoise/decoding_trust_with_refusals_train.json refusals.json
cp {SHARED_DATA}/repnoise/decoding_trust_with_refusals_train.json beavertails_with_refusals_train.json
cp {SHARED_DATA}/benign_instructions/alpaca_data_safety_only.json alpaca.json
cp alpaca.json alpaca_data.json
cp {SHARED_DATA}/advbench/advbench.csv advbench.csv
cp {SHARED_DATA}/gsm8k/test.jsonl gsm8k.jsonl
cp gsm8k.jsonl gsm8k_test.jsonl
"""
SHORT_ATTACK = "--max_steps 2 --n_samples 20 --max_eval_samples 4 --max_new_tokens 8"
ON_CPU = "--bf16 false --tf32 false --use_cpu true"
ACCELERATE_ON_CPU = (("ACCELERATE_USE_CPU", "true"),)

SNIPPETS = [
    # ---- README.md --------------------------------------------------------------------------------------------------
    Snippet(
        "README.md",
        "make-demo-and-test",
        "make demo   # creates .venv",
        subs=(
            ("make demo ", f"make -C {REPO_ROOT} -o .venv/.installed demo DEMO_ARGS='--output_dir {{cwd}}/demo' "),
            ("make test ", f"make -C {REPO_ROOT} -o .venv/.installed test PYTEST_ARGS='tests/test_testing.py' "),
        ),
        check="test -f demo/demo_results.json",
        slow=True,
        timeout=1800,
    ),
    Snippet(
        "README.md",
        "quick-start",
        "measure_immunization(eval_data, baseline=",
        covered_by=("test_release", "_readme_block", ("## Quick start", "python")),
    ),
    Snippet(
        "README.md",
        "shell-release",
        "hf-immunize push outputs/booster-tiny --repo_id you/booster-tiny                 #",
        covered_by=("test_release", "_readme_block", ("Or from the shell, offline on a CPU", "bash")),
    ),
    Snippet(
        "README.md",
        "booster",
        'model="path/or/hub-id"',
        prelude=BOOSTER_DATA,
        subs=(
            ('model="path/or/hub-id"', "model=MODEL_DIR"),
            ("perturbation_step_size=0.1)", "perturbation_step_size=0.1, **TINY)"),
        ),
        check="assert trainer.state.global_step == 2",
    ),
    Snippet(
        "README.md",
        "mlac",
        'MLACConfig(output_dir="bert-mlac"',
        prelude=MLAC_DATA,
        subs=(('meta_gradient="second_order")', 'meta_gradient="second_order", **TINY)'),),
        check="assert trainer.state.global_step == 1",
    ),
    Snippet(
        "README.md", "unlearn-imports", "from hf_immunize import UnlearnConfig, UnlearnTrainer, run_whp_pipeline\n"
    ),
    Snippet(
        "README.md",
        "attack-api",
        "worst = sweep_attacks(",
        prelude=ATTACK_DATA,
        subs=(
            ("n_samples=1000,", "n_samples=20, max_steps=2, batch_size=5, max_new_tokens=4,"),
            ("budget=8)", "budget=2)"),
        ),
        check="assert os.path.isdir('report')",
    ),
    Snippet(
        "README.md",
        "attack-shell",
        "hf-immunize attack --model outputs/booster-tiny --output_dir outputs/attack",
        prelude=BOOSTER_TINY_RUN + ATTACK_FILES + "cp -r outputs/booster-tiny undefended\n",
        subs=(
            ("--output_dir outputs/attack ", f"--output_dir outputs/attack {SHORT_ATTACK} "),
            ("path/to/defended", "outputs/booster-tiny"),
            ("path/to/undefended", "undefended"),
            ("--max_eval_samples 200", f"{SHORT_ATTACK} --output_dir outputs/attack-files"),
        ),
        check=(
            "test -f outputs/attack/immunization_report.json && test -f outputs/attack-files/immunization_report.json"
        ),
        shared_data=True,
        slow=True,
    ),
    Snippet(
        "README.md",
        "data-loaders",
        'load_gsm8k("openai/gsm8k")',
        prelude=f"import shutil\nshutil.copy('{SHARED_DATA}/gsm8k/test.jsonl', 'gsm8k.jsonl')\n"
        + "from datasets import Dataset\n"
        + "Dataset.from_list([{'prompt': 'q', 'response': 'bad', 'refusal': 'Question: q\\nAnswer: No.'}] * 2)"
        + ".to_json('beavertails_with_refusals_train.json')\n",
        subs=(('load_gsm8k("openai/gsm8k")', 'load_gsm8k("gsm8k.jsonl")'),),
        check="assert alignment[0]['refusal'] == 'No.' and len(gsm8k) == 1319",
        shared_data=True,
    ),
    # ---- docs/booster.md --------------------------------------------------------------------------------------------
    Snippet(
        "docs/booster.md", "full", 'output_dir="outputs/booster-full"', check="assert trainer.state.global_step == 20"
    ),
    Snippet(
        "docs/booster.md", "lora", 'output_dir="outputs/booster-lora"', check="assert trainer.state.global_step == 20"
    ),
    Snippet(
        "docs/booster.md",
        "recipe-in-python",
        'yaml.safe_load(open("recipes/booster_tiny.yaml"))',
        subs=(
            (
                'yaml.safe_load(open("recipes/booster_tiny.yaml"))',
                '{**yaml.safe_load(open("recipes/booster_tiny.yaml")), "max_steps": 2}',
            ),
        ),
        check="assert trainer.state.global_step == 2",
    ),
    Snippet(
        "docs/booster.md",
        "shell",
        "scripts/booster.py --config recipes/booster_paper.yaml",
        subs=(
            ("--config recipes/booster_tiny.yaml ", "--config recipes/booster_tiny.yaml --max_steps 2 "),
            (
                "--config_file recipes/accelerate/ddp.yaml",
                (
                    "--config_file recipes/accelerate/ddp.yaml --num_processes 2 --mixed_precision no "
                    "--main_process_port 29571"
                ),
            ),
            (
                "--config recipes/booster_paper.yaml",
                (
                    f"--config recipes/booster_paper.yaml {ON_CPU} --model_name_or_path tiny-base --max_steps 2 "
                    "--per_device_train_batch_size 2 --dataset_name toy --hub_token hf_fake --output_dir out-ddp"
                ),
            ),
        ),
        prelude="python -c \"from hf_immunize.testing import tiny_causal_lm; tiny_causal_lm(save_dir='tiny-base')\"\n",
        fake_hub=True,
        env=ACCELERATE_ON_CPU,
        slow=True,
    ),
    # ---- docs/mistake_sft.md ----------------------------------------------------------------------------------------
    Snippet("docs/mistake_sft.md", "pipeline", "print(guided_generate(trainer.model, tokenizer, red_team, args))"),
    Snippet(
        "docs/mistake_sft.md",
        "paper-lora",
        'name = "PKU-Alignment/alpaca-7b-reproduced"',
        prelude="from hf_immunize.testing import tiny_causal_lm\ntiny_causal_lm(save_dir='tiny-base')\n",
        subs=(
            ('name = "PKU-Alignment/alpaca-7b-reproduced"', 'name = "tiny-base"'),
            ('dtype="bfloat16", device_map="cuda"', 'dtype="float32", device_map="cpu"'),
            (
                '"PKU-Alignment/PKU-SafeRLHF", name="alpaca-7b").select(range(2000))',
                f'"{SHARED_DATA}/pku_saferlhf/Alpaca-7B_test_first10.jsonl").select(range(2))',
            ),
            (
                "num_train_epochs=3,",
                "num_train_epochs=3, max_steps=2, max_new_tokens=8, activation_checkpointing=False,",
            ),
            ("gradient_accumulation_steps=32", "gradient_accumulation_steps=1"),
            (
                'load_dataset("tatsu-lab/alpaca", split="train")',
                (
                    'load_dataset("json", '
                    f'data_files="{SHARED_DATA}/benign_instructions/alpaca_data_safety_only.json", '
                    'split="train").select(range(8))'
                ),
            ),
        ),
        check="assert trainer.state.global_step == 2",
        shared_data=True,
    ),
    Snippet(
        "docs/mistake_sft.md",
        "shell",
        "hf-immunize mistake-sft --config recipes/mistake_sft_tiny.yaml",
        subs=(
            (
                "--config recipes/mistake_sft_tiny.yaml ",
                "--config recipes/mistake_sft_tiny.yaml --max_steps 2 --max_new_tokens 8 ",
            ),
            (
                "--config recipes/mistake_sft_paper.yaml",
                (
                    f"--config recipes/mistake_sft_paper.yaml {ON_CPU} --model_name_or_path tiny-base --dataset_name "
                    "toy --max_steps 2 --max_new_tokens 8 --output_dir out-paper --gradient_accumulation_steps 1 "
                    "--activation_checkpointing false"
                ),
            ),
        ),
        prelude="python -c \"from hf_immunize.testing import tiny_causal_lm; tiny_causal_lm(save_dir='tiny-base')\"\n",
        slow=True,
    ),
    # ---- docs/mlac.md -----------------------------------------------------------------------------------------------
    Snippet(
        "docs/mlac.md",
        "classifier",
        'output_dir="outputs/mlac-tiny"',
        subs=(("max_steps=300", "max_steps=2"), ("make_bios_world(n=2000", "make_bios_world(n=200")),
        check="assert trainer.state.global_step == 2",
    ),
    Snippet(
        "docs/mlac.md",
        "lora",
        'output_dir="outputs/mlac-lora"',
        after="classifier",
        subs=(("max_steps=300", "max_steps=2"),),
        check="assert trainer.state.global_step == 2",
        slow=True,
    ),
    Snippet(
        "docs/mlac.md",
        "causal-lm",
        'output_dir="outputs/mlac-lm"',
        after="classifier",
        subs=(("max_steps=20", "max_steps=2"),),
        check="assert trainer.state.global_step == 2",
        slow=True,
    ),
    Snippet(
        "docs/mlac.md",
        "paper-recipe",
        'args=["--config", "recipes/mlac_paper.yaml"]',
        prelude=(
            "from hf_immunize.testing import tiny_encoder_classifier\ntiny_encoder_classifier(num_labels=28, "
            "save_dir='tiny-bert')\n"
        ),
        subs=(
            (
                'args=["--config", "recipes/mlac_paper.yaml"]',
                (
                    'args=["--config", "recipes/mlac_paper.yaml", "--model_name_or_path", "tiny-bert", '
                    f'"--dataset_name", "{SHARED_DATA}/bias_in_bios", "--dataset_test_split", "train", "--max_steps", '
                    '"1", "--inner_steps", "2", "--eval_strategy", "no", "--load_best_model_at_end", "false", '
                    '"--output_dir", "out", "--use_cpu", "true", "--max_length", "128"]'
                ),
            ),
        ),
        check="assert trainer.state.global_step == 1",
        shared_data=True,
    ),
    Snippet(
        "docs/mlac.md",
        "shell",
        "hf-immunize mlac --config recipes/mlac_tiny.yaml --max_steps 50",
        subs=(
            ("--max_steps 50", "--max_steps 2 --inner_steps 2"),
            (
                "--config_file recipes/accelerate/ddp.yaml",
                (
                    "--config_file recipes/accelerate/ddp.yaml --num_processes 2 --mixed_precision no "
                    "--main_process_port 29572"
                ),
            ),
            (
                "--config recipes/mlac_paper.yaml",
                (
                    "--config recipes/mlac_paper.yaml --model_name_or_path tiny-bert --dataset_name "
                    f"{SHARED_DATA}/bias_in_bios --dataset_test_split train --max_steps 2 --inner_steps 2 "
                    "--eval_strategy no --load_best_model_at_end false --output_dir out-ddp --use_cpu true "
                    "--ddp_find_unused_parameters false --max_length 128"
                ),
            ),
        ),
        prelude=(
            'python -c "from hf_immunize.testing import tiny_encoder_classifier; '
            "tiny_encoder_classifier(num_labels=28, save_dir='tiny-bert')\"\n"
        ),
        env=ACCELERATE_ON_CPU,
        shared_data=True,
        slow=True,
    ),
    # ---- docs/unlearn.md --------------------------------------------------------------------------------------------
    Snippet(
        "docs/unlearn.md",
        "whp-pipeline",
        "trainer, labelled = run_whp_pipeline(",
        subs=(("world = make_book_world()", "world = make_book_world(n_passages=20)"),),
        check="assert trainer.state.global_step > 0",
    ),
    Snippet(
        "docs/unlearn.md",
        "whp-by-hand",
        'terms = load_anchored_terms("my_terms.json")',
        prelude=UNLEARN_DATA,
        subs=(
            ("block_size=512,", "block_size=64,"),
            (
                'UnlearnConfig(output_dir="out")',
                'UnlearnConfig(output_dir="out", max_steps=2, use_cpu=True, report_to="none")',
            ),
        ),
        check="assert trainer.state.global_step == 2",
    ),
    Snippet(
        "docs/unlearn.md",
        "npo",
        'unlearning_loss="npo", npo_beta=0.1',
        prelude=UNLEARN_DATA + "from hf_immunize import UnlearnConfig, UnlearnTrainer  # imported by the page above\n",
        check="assert trainer.retain_stream is not None and trainer.ref_model is not None",
    ),
    Snippet(
        "docs/unlearn.md",
        "shell",
        "hf-immunize unlearn --config recipes/unlearn_tiny.yaml",
        subs=(
            ("--config recipes/unlearn_tiny.yaml ", "--config recipes/unlearn_tiny.yaml --max_steps 2 "),
            (
                "--dataset_name my_books.txt --anchored_terms my_terms.json",
                (
                    f"--dataset_name my_books.txt --anchored_terms my_terms.json {ON_CPU} --model_name_or_path "
                    "tiny-base --max_steps 2 --reinforce_max_steps 2 --block_size 64 --output_dir out-paper "
                    "--activation_checkpointing false"
                ),
            ),
        ),
        prelude=(
            'python -c "import json; from hf_immunize.data.toy import make_book_world; '
            "from hf_immunize.testing import tiny_causal_lm; w = make_book_world(n_passages=20); "
            "open('my_books.txt', 'w').write(chr(10).join(w.forget['text'])); "
            "json.dump(w.anchored_terms, open('my_terms.json', 'w')); tiny_causal_lm(save_dir='tiny-base')\"\n"
        ),
        slow=True,
    ),
    # ---- docs/workflow.md -------------------------------------------------------------------------------------------
    Snippet(
        "docs/workflow.md",
        "release-python",
        'baseline="path/to/undefended")',
        prelude=RELEASE,
        subs=(('baseline="path/to/undefended")', "baseline=BASELINE, attack_config=TINY_ATTACK, progress=False)"),),
        fake_hub=True,
        check="assert report is not None",
        slow=True,
    ),
    Snippet(
        "docs/workflow.md",
        "release-shell",
        "hf-immunize evaluate --model outputs/booster-tiny --method booster --write_card\n",
        prelude=BOOSTER_TINY_RUN,
        subs=(
            ("--method booster --write_card", f"--method booster --write_card {SHORT_ATTACK}"),
            ("--repo_id you/booster-tiny", "--repo_id fake-user/booster-tiny --token hf_fake"),
        ),
        fake_hub=True,
        slow=True,
    ),
    Snippet(
        "docs/workflow.md",
        "evaluate-files",
        "hf-immunize evaluate --model llama-booster --method booster --baseline llama-sft --data files",
        prelude=BOOSTER_TINY_RUN
        + ATTACK_FILES
        + "cp -r outputs/booster-tiny llama-booster\ncp -r outputs/booster-tiny llama-sft\n",
        subs=(("--max_eval_samples 200", SHORT_ATTACK),),
        shared_data=True,
        slow=True,
    ),
    Snippet(
        "docs/workflow.md",
        "attack-report",
        "defended = run_attack(trainer.model",
        prelude=RELEASE
        + "attack_harmful, attack_benign = world.attack_harmful, world.attack_benign\n"
        + "eval_harmful, eval_benign = world.eval_harmful.select(range(4)), world.eval_benign.select(range(4))\n",
        subs=(("n_samples=1000,", "n_samples=20, max_steps=2, batch_size=5, max_new_tokens=4,"),),
    ),
    Snippet(
        "docs/workflow.md",
        "callbacks",
        "HarmfulLossGapCallback(harmful_rows, step_size=0.1).bind(trainer)",
        prelude=BOOSTER_DATA
        + """
from trl import SFTConfig, SFTTrainer
from hf_immunize.evaluation import ImmunizationReport
model = tiny_causal_lm()
args = SFTConfig(output_dir="sft-out", **TINY)
attack_harmful, attack_benign = world.attack_harmful, world.attack_benign
eval_harmful = world.eval_harmful.select(range(4))
harmful_rows = harmful
from hf_immunize.evaluation import AttackConfig, run_attack
tiny_attack = AttackConfig(n_samples=20, max_steps=1, batch_size=5, max_new_tokens=4, max_eval_samples=4)
result = run_attack(model, tokenizer, tiny_attack, attack_harmful, attack_benign, eval_harmful)
report = ImmunizationReport.from_results("booster", "my-model", [result])
""",
        subs=(
            (
                "AttackConfig(n_samples=100, max_steps=20,",
                "AttackConfig(n_samples=20, max_steps=2, max_new_tokens=4, max_eval_samples=4,",
            ),
            ("every_n_steps=200", "every_n_steps=2"),
        ),
        check="assert trainer.state.global_step == 2",
    ),
    # ---- docs/evaluation.md: run in order by tests/test_docs_evaluation.py (one namespace, the page's YAML task) --
    Snippet(
        "docs/evaluation.md",
        "judges",
        'GenerativeJudge.from_preset("llama-guard-3-8b"',
        covered_by=("test_docs_evaluation", "block", ("python", 0)),
    ),
    Snippet(
        "docs/evaluation.md",
        "evaluate-judge",
        "--judge llama-guard-3-8b --judge_dtype bfloat16",
        covered_by=("test_docs_evaluation", "block", ("bash", 0)),
    ),
    Snippet(
        "docs/evaluation.md",
        "lm-eval",
        "lm_eval=LmEvalConfig(",
        covered_by=("test_docs_evaluation", "block", ("python", 1)),
    ),
    Snippet(
        "docs/evaluation.md",
        "sweep",
        "--storage sqlite:///booster-sweep.db",
        covered_by=("test_docs_evaluation", "block", ("bash", 1)),
    ),
]


def _entry_for(page: str, text: str) -> list[Snippet]:
    return [s for s in SNIPPETS if s.file == page and s.match in text]


def test_every_snippet_has_exactly_one_entry():
    problems = []
    found = _snippets()
    for page, line, language, text in found:
        entries = _entry_for(page, text)
        if len(entries) != 1:
            first = text.strip().splitlines()[0] if text.strip() else ""
            problems.append(
                f"{page}:{line}: a {language} snippet ({first[:60]!r}) has {len(entries)} entries in SNIPPETS "
                f"({[e.name for e in entries]}); register it in tests/test_docs.py with a `match` taken from it"
            )
    for entry in SNIPPETS:
        hits = [(page, line) for page, line, _, text in found if page == entry.file and entry.match in text]
        if len(hits) != 1:
            problems.append(f"SNIPPETS entry {entry.file}:{entry.name} matches {len(hits)} snippets: {hits}")
    assert not problems, "\n".join(problems)
    assert len({(e.file, e.name) for e in SNIPPETS}) == len(SNIPPETS)


def _text_of(entry: Snippet) -> str:
    matches = [text for page, _, _, text in _snippets() if page == entry.file and entry.match in text]
    assert len(matches) == 1, f"{entry.file}:{entry.name}: {len(matches)} snippets contain {entry.match!r}"
    return matches[0]


def _substituted(entry: Snippet, text: str, cwd: Path) -> str:
    for old, new in entry.subs:
        count = text.count(old)
        assert count == 1, f"{entry.file}:{entry.name}: the snippet contains {old!r} {count} times (must be once)"
        text = text.replace(old, new.replace("{cwd}", str(cwd)))
    return text


def _language(entry: Snippet) -> str:
    text = _text_of(entry)
    return next(language for page, _, language, t in _snippets() if page == entry.file and t == text)


def _program(entry: Snippet, cwd: Path) -> str:
    parts = []
    if entry.after is not None:
        earlier = next(s for s in SNIPPETS if s.file == entry.file and s.name == entry.after)
        parts.append(_program(earlier, cwd))
    parts += [entry.prelude, _substituted(entry, _text_of(entry), cwd), entry.check]
    return "\n".join(p for p in parts if p)


def _params():
    for entry in SNIPPETS:
        marks = [pytest.mark.slow] if entry.slow else []
        yield pytest.param(entry, id=f"{entry.file.removeprefix('docs/')}:{entry.name}", marks=marks)


@pytest.mark.parametrize("entry", _params())
def test_snippet_runs(entry: Snippet, tmp_path, monkeypatch):
    if entry.shared_data and not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder ({SHARED_DATA})")
    if entry.covered_by is not None:
        module, function, args = entry.covered_by
        runs = getattr(__import__(module), function)(*args)
        assert runs == _text_of(entry), f"{module}.{function} no longer runs this snippet of {entry.file}"
        return
    for name in ("recipes", "scripts"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    program = _program(entry, tmp_path)
    if _language(entry) == "python" and not entry.fake_hub and not entry.env:
        # In this interpreter (its imports are paid once), in a fresh namespace, from the temporary directory. The
        # offline environment of conftest applies; a snippet that needs another (the fake Hub) runs in a subprocess.
        monkeypatch.chdir(tmp_path)
        exec(compile(program, f"<{entry.file}:{entry.name}>", "exec"), {"__name__": "__main__"})
        return
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **dict(entry.env)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-c", program] if _language(entry) == "python" else ["bash", "-e", "-c", program]
    if entry.fake_hub:
        from fake_hub import FakeHub

        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.pop(key, None)
        with FakeHub() as hub:
            env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))
            proc = subprocess.run(
                command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=entry.timeout
            )
        assert hub.repos, "the snippet pushed nothing to the (fake) Hub"
    else:
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=entry.timeout)
    assert proc.returncode == 0, f"{entry.file}:{entry.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
