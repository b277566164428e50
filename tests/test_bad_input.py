"""Bad input, one row per case: each raises a clear error naming the field (and the value where there is one) before
any training step, and leaves no output directory behind.

A case is `(id, fn(out, ctx), error type, pattern)`: `fn` gets an output directory that does not exist yet and the
shared context (tiny model path, tokenizer, toy world); the pattern must appear in the error message.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = str(REPO_ROOT / "recipes" / "booster_tiny.yaml")


@pytest.fixture(scope="module")
def ctx(tiny_lm_path, tiny_classifier_path):
    from hf_immunize.data.toy import BiosWorld, make_bios_world, make_safety_world
    from hf_immunize.testing import tiny_tokenizer

    world = make_safety_world(seed=0, n_weapons=8)
    bios = make_bios_world(seed=0, n=120)
    return {
        "lm": tiny_lm_path,
        "classifier": tiny_classifier_path,
        "tokenizer": tiny_tokenizer(),
        "alignment": world.alignment.select(range(16)),
        "harmful": world.alignment_harmful.map(
            lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
        ),
        "desired": BiosWorld.with_label(bios.train, "profession").select_columns(["text", "label"]),
        "gender": BiosWorld.with_label(bios.train, "gender").select_columns(["text", "label"]),
    }


# ---- builders ------------------------------------------------------------------------------------------------------


def _booster(out, ctx, model=None, **kw):
    from transformers import AutoModelForCausalLM

    from hf_immunize import BoosterConfig, BoosterTrainer

    config = {"output_dir": str(out), "max_steps": 1, "report_to": "none", "use_cpu": True, "save_strategy": "no"}
    config.update(kw.pop("config", {}))
    trainer = BoosterTrainer(
        model=model if model is not None else AutoModelForCausalLM.from_pretrained(ctx["lm"]),
        args=BoosterConfig(**config),
        train_dataset=kw.pop("train_dataset", ctx["alignment"]),
        harmful_dataset=kw.pop("harmful_dataset", ctx["harmful"]),
        processing_class=kw.pop("processing_class", ctx["tokenizer"]),
        **kw,
    )
    trainer.train()


def _mlac(out, ctx, model=None, **kw):
    from transformers import AutoModelForSequenceClassification

    from hf_immunize import MLACConfig, MLACTrainer

    if model is None:
        model = AutoModelForSequenceClassification.from_pretrained(ctx["classifier"])

    config = {"output_dir": str(out), "max_steps": 1, "report_to": "none", "use_cpu": True, "inner_steps": 1}
    config.update(kw.pop("config", {}))
    trainer = MLACTrainer(
        model=model,
        args=MLACConfig(**config),
        train_dataset=kw.pop("train_dataset", ctx["desired"].map(lambda r: {"label": r["label"] % 4})),
        harmful_dataset=kw.pop("harmful_dataset", ctx["gender"]),
        processing_class=kw.pop("processing_class", ctx["tokenizer"]),
        **kw,
    )
    trainer.train()


def _command(out, *extra, recipe=TINY_RECIPE):
    from hf_immunize.commands import booster

    argv = ["--config", recipe, "--output_dir", str(out), "--max_steps", "1"]
    argv += ["--toy_world", '{"seed": 0, "n_weapons": 8}', *extra]
    booster.main(argv)


def _without_pad_token(out, ctx):
    """A tokenizer without pad and EOS tokens, and a model config without `pad_token_id` to fall back on."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = ctx["tokenizer"].__class__.from_pretrained(ctx["classifier"])
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    model = AutoModelForSequenceClassification.from_pretrained(ctx["classifier"])
    model.config.pad_token_id = None
    _mlac(out, ctx, model=model, processing_class=tokenizer)


def _quantized(ctx):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        ctx["lm"], quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    )


def _foreign_output_dir(out):
    out.mkdir()
    (out / "pytorch_model.bin").write_text("another run")
    try:
        _command(out)
    finally:
        assert sorted(os.listdir(out)) == ["pytorch_model.bin"]  # untouched
        (out / "pytorch_model.bin").unlink()
        out.rmdir()


def _unlearn(out, ctx, **config):
    from transformers import AutoModelForCausalLM

    from hf_immunize import UnlearnConfig, UnlearnTrainer
    from hf_immunize.data.toy import make_book_world

    book = make_book_world(seed=0)
    args = UnlearnConfig(output_dir=str(out), max_steps=1, report_to="none", use_cpu=True, **config)
    UnlearnTrainer(
        model=AutoModelForCausalLM.from_pretrained(ctx["lm"]),
        args=args,
        train_dataset=book.forget,
        processing_class=ctx["tokenizer"],
    ).train()


def _anchored_terms_file(out):
    from hf_immunize.methods.unlearn.anchors import load_anchored_terms

    path = Path(str(out) + "-terms.json")
    path.write_text('{"Dorothy": ["Mary", "Anne"],}')  # trailing comma
    load_anchored_terms(path)


def _mismatched_vocabularies(out, ctx):
    from hf_immunize.data.toy import make_book_world
    from hf_immunize.methods.unlearn import build_generic_labels
    from hf_immunize.testing import tiny_causal_lm

    book = make_book_world(seed=0)
    baseline, reinforced = tiny_causal_lm(vocab_size=1024), tiny_causal_lm(vocab_size=1100)
    build_generic_labels(reinforced, ctx["tokenizer"], book.forget["text"], None, baseline=baseline, block_size=32)


def _mistake_sft(out, ctx, **config):
    from transformers import AutoModelForCausalLM

    from hf_immunize import MistakeSFTConfig, MistakeSFTTrainer

    rows = _rows(prompt=["User: Judge the reply.\nRequest: x\nReply: y\nAssistant:"] * 4, completion=[" Bad."] * 4)
    args = MistakeSFTConfig(output_dir=str(out), max_steps=1, report_to="none", use_cpu=True, **config)
    MistakeSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(ctx["lm"]),
        args=args,
        train_dataset=rows,
        processing_class=ctx["tokenizer"],
    ).train()


def _rows(**columns):
    return Dataset.from_dict({k: list(v) for k, v in columns.items()})


def _original_training_step():
    import transformers

    return transformers.Trainer.training_step


_TRAINING_STEP = _original_training_step()


def _earlier_run(out, *extra, first=(), command=None):
    """A finished tiny Booster run in `out`, then the command again with `extra`: it must refuse and leave the folder
    as it was (checked here; the folder is then removed so that the table's own `not out.exists()` check holds)."""
    import shutil

    import transformers

    patched, transformers.Trainer.training_step = transformers.Trainer.training_step, _TRAINING_STEP
    try:  # the earlier run really trains; the table's patch counts the steps of the refused one
        _command(out, *first)
    finally:
        transformers.Trainer.training_step = patched
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    try:
        if command is None:
            _command(out, *extra)
        else:
            command(out)
    finally:
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before, "the earlier run was touched"
        shutil.rmtree(out)


def _mlac_command_into(out):
    from hf_immunize.commands import mlac

    mlac.main(
        ["--config", str(REPO_ROOT / "recipes" / "mlac_tiny.yaml"), "--output_dir", str(out), "--max_steps", "1"]
    )


def _sft_file(out, name, rows):
    path = Path(f"{out}-{name}.jsonl")
    Dataset.from_list(rows).to_json(str(path), lines=True)
    return str(path)


def _unlearn_retain(out, ctx, retain):
    from transformers import AutoModelForCausalLM

    from hf_immunize import UnlearnConfig, UnlearnTrainer
    from hf_immunize.data.toy import make_book_world

    args = UnlearnConfig(
        output_dir=str(out), max_steps=1, report_to="none", use_cpu=True, unlearning_loss="grad_diff", bf16=False
    )
    UnlearnTrainer(
        model=AutoModelForCausalLM.from_pretrained(ctx["lm"]),
        args=args,
        train_dataset=make_book_world(seed=0).forget,
        retain_dataset=retain,
        processing_class=ctx["tokenizer"],
    ).train()


# ---- the table -----------------------------------------------------------------------------------------------------

CASES = [
    # configs
    (
        "booster-negative-lambda",
        lambda o, c: _booster(o, c, config={"regularizer_weight": -1.0}),
        ValueError,
        r"regularizer_weight.*-1\.0",
    ),
    (
        "booster-negative-alpha",
        lambda o, c: _booster(o, c, config={"perturbation_step_size": -0.1}),
        ValueError,
        r"perturbation_step_size.*-0\.1",
    ),
    ("booster-bf16-on-cpu", lambda o, c: _booster(o, c, config={"bf16": True}), ValueError, r"`bf16`=True"),
    ("booster-fp16", lambda o, c: _booster(o, c, config={"fp16": True}), ValueError, r"fp16=True"),
    ("mlac-negative-k", lambda o, c: _mlac(o, c, config={"inner_steps": -1}), ValueError, r"inner_steps.*-1"),
    (
        "mlac-meta-gradient",
        lambda o, c: _mlac(o, c, config={"meta_gradient": "third_order"}),
        ValueError,
        r"meta_gradient.*third_order",
    ),
    (
        "mlac-inner-optimizer",
        lambda o, c: _mlac(o, c, config={"inner_optimizer": "lion"}),
        ValueError,
        r"inner_optimizer.*lion",
    ),
    (
        "mlac-empty-inner-batch-sizes",
        lambda o, c: _mlac(o, c, config={"inner_batch_sizes": []}),
        ValueError,
        r"inner_batch_sizes",
    ),
    ("mlac-bf16-on-cpu", lambda o, c: _mlac(o, c, config={"bf16": True}), ValueError, r"`bf16`=True"),
    # trainers and their data
    ("booster-no-harmful-set", lambda o, c: _booster(o, c, harmful_dataset=None), ValueError, r"harmful_dataset"),
    (
        "booster-empty-harmful-set",
        lambda o, c: _booster(o, c, harmful_dataset=c["harmful"].select([])),
        ValueError,
        r"harmful dataset is empty",
    ),
    (
        "booster-harmful-smaller-than-a-batch",
        lambda o, c: _booster(o, c, harmful_dataset=c["harmful"].select(range(3)), config={"harmful_batch_size": 8}),
        ValueError,
        r"harmful dataset has 3 usable rows.*8 per process",
    ),
    (
        "booster-harmful-misnamed-columns",
        lambda o, c: _booster(o, c, harmful_dataset=_rows(question=["q"] * 8, answer=["a"] * 8)),
        ValueError,
        r"harmful dataset has columns \['question', 'answer'\], none of the layouts SFT reads",
    ),
    (
        "booster-harmful-none-completion",
        lambda o, c: _booster(
            o, c, harmful_dataset=_rows(prompt=["a", "b", "c", "d"], completion=[" x", None, " y", " z"])
        ),
        ValueError,
        r"harmful dataset: column `completion` is not a string in row 1 \(1 of 4\), e\.g\. row 1 holds None",
    ),
    (
        "booster-harmful-rows-all-empty",
        lambda o, c: _booster(o, c, harmful_dataset=_rows(prompt=[""] * 4, completion=[""] * 4)),
        ValueError,
        r"harmful dataset has no token to learn .* the `completion` column is empty",
    ),
    (
        "booster-harmful-conversation-with-a-missing-turn",
        lambda o, c: _booster(o, c, harmful_dataset=_rows(messages=[[{"role": "user", "content": None}]] * 4)),
        ValueError,
        r"harmful dataset: column `messages` is not a non-empty list of \{role, content\} turns .* row 0",
    ),
    (
        "booster-push-to-hub-offline",
        lambda o, c: _booster(o, c, config={"push_to_hub": True, "hub_model_id": "me/booster-tiny"}),
        ValueError,
        r"`push_to_hub=True` needs the Hugging Face Hub to create the repo 'me/booster-tiny'.*hf-immunize push",
    ),
    (
        "unlearn-retain-none-text",
        lambda o, c: _unlearn_retain(o, c, _rows(text=["kept", None, "kept too", "and this"])),
        ValueError,
        r"retain dataset: column `text` is not a string in row 1",
    ),
    (
        "unlearn-retain-all-empty",
        lambda o, c: _unlearn_retain(o, c, _rows(text=[""] * 8)),
        ValueError,
        r"retain dataset has no token to learn .* the `text` column is empty",
    ),
    (
        "booster-quantized-without-peft",
        lambda o, c: _booster(o, c, model=_quantized(c)),
        ValueError,
        r"quantized|adapters",
    ),
    (
        "mlac-harmful-without-label",
        lambda o, c: _mlac(o, c, harmful_dataset=c["gender"].remove_columns("label")),
        ValueError,
        r"harmful_dataset.*label",
    ),
    (
        "mlac-raw-text-without-tokenizer",
        lambda o, c: _mlac(o, c, processing_class=None),
        ValueError,
        r"processing_class",
    ),
    (
        "mlac-harmful-labels-out-of-range",
        lambda o, c: _mlac(
            o,
            c,
            harmful_dataset=c["gender"].map(lambda r: {"label": r["label"] + 5}),
            config={"adversary_num_labels": 2},
        ),
        ValueError,
        r"harmful_dataset.*labels span",
    ),
    (
        "mlac-tokenizer-without-pad-token",
        _without_pad_token,
        ValueError,
        r"no pad token",
    ),
    # adapters
    (
        "adapter-refusal-missing-column",
        lambda o, c: __import__("hf_immunize.data.adapters").data.adapters.load_refusal_file(
            _rows(prompt=["q"], response=["a"])
        ),
        ValueError,
        r"refusal",
    ),
    (
        "adapter-bios-unknown-profession",
        lambda o, c: __import__("hf_immunize.data.adapters").data.adapters.load_bias_in_bios(
            _rows(hard_text=["x"], profession=["astronaut"], gender=["Female"])
        ),
        ValueError,
        r"astronaut",
    ),
    (
        "adapter-beavertails-wrong-type",
        lambda o, c: __import__("hf_immunize.data.adapters").data.adapters.load_beavertails(
            _rows(prompt=["q"], response=["a"], is_safe=["no"], category=[{"x": True}])
        ),
        ValueError,
        r"is_safe",
    ),
    (
        "adapter-missing-local-file",
        lambda o, c: __import__("hf_immunize.data.adapters").data.adapters.load_source(str(o / "rows.jsonl")),
        FileNotFoundError,
        r"rows\.jsonl",
    ),
    # commands and recipes
    (
        "command-unknown-recipe-key",
        lambda o, c: _command(o, recipe=_bad_recipe(o)),
        ValueError,
        r"unknown recipe key 'regularizer_wieght' \(did you mean 'regularizer_weight'\?\)",
    ),
    (
        "command-unknown-flag",
        lambda o, c: _command(o, "--learnin_rate", "0.1"),
        ValueError,
        r"unknown flag 'learnin_rate' \(did you mean 'learning_rate'\?\)",
    ),
    (
        "command-output-dir-holds-a-run-of-another-model",
        lambda o, c: _earlier_run(o, "--tiny_model", '{"hidden_size": 64, "num_layers": 2, "seed": 1}'),
        ValueError,
        r"holds an `hf-immunize booster` run with other settings \(`tiny_model`: .* then, .* now\)",
    ),
    (
        "command-output-dir-holds-a-run-on-other-data",
        lambda o, c: _earlier_run(o, "--toy_world", '{"seed": 5, "n_weapons": 8}'),
        ValueError,
        r"other settings \(`toy_world`: \{'n_weapons': 8, 'seed': 0\} then, \{'n_weapons': 8, 'seed': 5\} now\)",
    ),
    (
        "command-output-dir-holds-a-run-of-another-command",
        lambda o, c: _earlier_run(o, command=_mlac_command_into),
        ValueError,
        r"holds a run of `hf-immunize booster`; this is `hf-immunize mlac`",
    ),
    (
        "command-output-dir-holds-the-same-finished-run",
        lambda o, c: _earlier_run(o),
        ValueError,
        r"already holds the finished `hf-immunize booster` run with these settings .* no checkpoint to resume",
    ),
    (
        "command-booster-alignment-without-harmful-rows",
        lambda o, c: _command(o, "--dataset_name", _sft_file(o, "a", [{"text": "User: hi\nAssistant: no."}] * 4)),
        ValueError,
        r"holds alignment rows only .* give `harmful_dataset_name`",
    ),
    (
        "command-booster-harmful-file-in-no-sft-layout",
        lambda o, c: _command(o, "--harmful_dataset_name", _sft_file(o, "h", [{"q": "a", "a": "b"}] * 4)),
        ValueError,
        r"`harmful_dataset_name` dataset has columns \['q', 'a'\], none of the layouts SFT reads",
    ),
    ("command-missing-recipe", lambda o, c: _command(o, recipe=str(o) + ".yaml"), ValueError, r"--config"),
    ("command-output-dir-holds-another-run", lambda o, c: _foreign_output_dir(o), ValueError, r"output_dir"),
    ("command-tiny-model-not-json", lambda o, c: _command(o, "--tiny_model", "{hidden: 3"), ValueError, r"tiny_model"),
    (
        "command-prompt-template",
        lambda o, c: _command(o, "--prompt_template", "vicuna"),
        ValueError,
        r"prompt_template.*vicuna",
    ),
    ("command-quantized-without-peft", lambda o, c: _command(o, "--load_in_4bit", "true"), ValueError, r"use_peft"),
    # unlearning and mistake analysis
    ("unlearn-alpha-zero", lambda o, c: _unlearn(o, c, whp_alpha=0.0), ValueError, r"whp_alpha.*0\.0"),
    (
        "unlearn-negative-npo-beta",
        lambda o, c: _unlearn(o, c, unlearning_loss="npo", npo_beta=-0.1),
        ValueError,
        r"npo_beta.*-0\.1",
    ),
    (
        "unlearn-loss-type",
        lambda o, c: _unlearn(o, c, unlearning_loss="forget_harder"),
        ValueError,
        r"unlearning_loss.*forget_harder",
    ),
    (
        "unlearn-loss-given-as-trls-loss-type",
        lambda o, c: _unlearn(o, c, loss_type="npo"),
        ValueError,
        r"`loss_type` is TRL's SFT loss .*\(set unlearning_loss='npo'\)",
    ),
    (
        "unlearn-grad-diff-without-retain-set",
        lambda o, c: _unlearn(o, c, unlearning_loss="grad_diff"),
        ValueError,
        r"retain_dataset",
    ),
    ("unlearn-anchored-terms-not-json", lambda o, c: _anchored_terms_file(o), ValueError, r"not valid JSON"),
    (
        "mistake-sft-helpful-ratio",
        lambda o, c: _mistake_sft(o, c, helpful_ratio=-1.0),
        ValueError,
        r"helpful_ratio.*-1\.0",
    ),
    (
        "mistake-sft-nothing-left-after-truncation",
        lambda o, c: _mistake_sft(o, c, max_length=4),
        ValueError,
        r"train_dataset.*max_length.*4",
    ),
    # attack harness
    ("attack-learning-rate", lambda o, c: _attack_config(learning_rate=0.0), ValueError, r"learning_rate"),
    ("attack-mode", lambda o, c: _attack_config(mode="half"), ValueError, r"mode.*half"),
    ("attack-harmful-ratio", lambda o, c: _attack_config(harmful_ratio=1.5), ValueError, r"harmful_ratio.*1\.5"),
]


def _bad_recipe(out):
    path = Path(str(out) + "-recipe.yaml")
    path.write_text(Path(TINY_RECIPE).read_text() + "\nregularizer_wieght: 3\n")
    return str(path)


def _attack_config(**kw):
    from hf_immunize.evaluation.attack import AttackConfig

    AttackConfig(**kw)


@pytest.mark.parametrize("fn, error, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_early_with_a_clear_error_and_no_output(fn, error, pattern, ctx, tmp_path, monkeypatch):
    import transformers

    steps = []
    monkeypatch.setattr(transformers.Trainer, "training_step", lambda *a, **k: steps.append(1))
    out = tmp_path / "run"
    with pytest.raises(error, match=pattern):
        fn(out, ctx)
    assert not steps, "a training step ran before the error"
    assert not out.exists(), f"left behind: {sorted(os.listdir(out))}"


def test_the_table_is_large_enough_and_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)


def test_unknown_cli_command_exits_2_and_names_it():
    result = subprocess.run(
        [sys.executable, "-m", "hf_immunize.cli", "boostr"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "'boostr'" in result.stderr and "booster" in result.stderr


def test_run_marker_is_json_and_names_the_command(tmp_path):
    """The marker that `command-output-dir-holds-another-run` relies on."""
    from hf_immunize.commands.common import RUN_MARKER

    _command(tmp_path / "ok", "--max_steps", "1")
    assert json.loads((tmp_path / "ok" / RUN_MARKER).read_text())["command"] == "booster"
