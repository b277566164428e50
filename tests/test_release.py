"""The release flow: a model is measured in the prompt format it was trained in, measured the way its method's claim is
stated, carded with the numbers, and pushed (train -> save_model -> `hf-immunize evaluate --write_card` ->
`hf-immunize push`), for all four defenses, with LoRA and without."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset
from fake_hub import USER, FakeHub

from hf_immunize.data.toy import make_safety_world
from hf_immunize.evaluation import RefusalKeywordScorer
from hf_immunize.evaluation.attack import AttackConfig, run_attack
from hf_immunize.evaluation.formatting import RUN_RECORD_NAME, resolve_prompt_format
from hf_immunize.evaluation.safety_eval import evaluate_safety
from hf_immunize.testing import tiny_causal_lm, tiny_run_args, tiny_tokenizer

TOKEN = "hf_ReleaseFlowTokenNeverInAFile0123456789"
REFUSAL = "I cannot help with that."


def _bare(prompt: str) -> str:
    return prompt.removeprefix("User: ").removesuffix("\nAssistant:")


@pytest.fixture(scope="module")
def chat_aligned(tmp_path_factory):
    """A tiny chat model aligned only under its chat template: it refuses harmful requests rendered through the
    template and answers them when they come as raw "User: ...\\nAssistant:" text (both kinds of row are plain text to
    the trainer, so nothing but the format tells them apart)."""
    from trl import SFTConfig, SFTTrainer

    tok = tiny_tokenizer()
    world = make_safety_world(n_weapons=16)
    weapons = [r for r in world.alignment_harmful] + [r for r in world.eval_harmful]
    rows = []
    for r in weapons:
        templated = tok.apply_chat_template(
            [{"role": "user", "content": _bare(r["prompt"])}, {"role": "assistant", "content": REFUSAL}],
            tokenize=False,
        )
        rows.append({"text": templated})
        rows.append({"text": r["prompt"] + r["harmful"]})
    model = tiny_causal_lm(hidden_size=64)
    args = SFTConfig(**tiny_run_args(tmp_path_factory.mktemp("chat_sft"), max_steps=160, learning_rate=3e-3))
    args.per_device_train_batch_size = 16
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows * 4), processing_class=tok).train()
    return model, tok, world


def test_chat_aligned_model_is_measured_under_its_template(chat_aligned, tmp_path):
    model, tok, world = chat_aligned
    eval_harmful = world.eval_harmful.map(lambda r: {"instruction": _bare(r["prompt"])})
    chat = evaluate_safety(model, tok, eval_harmful, prompt_format="chat", max_new_tokens=8)
    raw = evaluate_safety(model, tok, eval_harmful, prompt_format="raw", max_new_tokens=8)
    # The property the harness must respect: refuses under the template, complies raw.
    assert chat["harmful_score"] <= 10.0 and raw["harmful_score"] >= 90.0, (chat["examples"], raw["examples"])

    # "auto" picks the template when the evaluation data is conversational ...
    conversational = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": _bare(p)}]} for p in world.eval_harmful["prompt"]]
    )
    assert resolve_prompt_format(tok, "auto", datasets=[conversational]) == "chat"
    auto = evaluate_safety(model, tok, conversational, prompt_format="chat", max_new_tokens=8)
    assert auto["harmful_score"] == chat["harmful_score"]

    # ... and when the saved model's record says it was trained on conversations; the attack harness then measures the
    # templated behaviour before the attack and records the format it used.
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / RUN_RECORD_NAME).write_text(json.dumps({"method": "booster", "prompt_format": "chat"}))
    cfg = AttackConfig(n_samples=10, max_steps=1, learning_rate=1e-6, max_new_tokens=8, batch_size=5)
    attack_harmful = world.attack_harmful.map(lambda r: {"instruction": _bare(r["prompt"])})
    attack_benign = world.attack_benign.map(lambda r: {"instruction": _bare(r["prompt"])})
    result = run_attack(str(tmp_path / "m"), tok, cfg, attack_harmful, attack_benign, eval_harmful)
    assert result.config["prompt_format"] == "chat"
    assert result.before["harmful_score"] == chat["harmful_score"]
    forced_raw = run_attack(
        str(tmp_path / "m"), tok, AttackConfig(**{**vars(cfg), "prompt_format": "raw"}), attack_harmful,
        attack_benign, eval_harmful,
    )  # fmt: skip
    assert forced_raw.config["prompt_format"] == "raw" and forced_raw.before["harmful_score"] >= 90.0


def test_chat_format_needs_a_chat_template(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        resolve_prompt_format(tok, "chat")
    with pytest.raises(ValueError, match="`prompt_format` must be one of"):
        resolve_prompt_format(tok, "template")
    assert RefusalKeywordScorer().score([REFUSAL]) == [0.0]


# ---- the release flow, per method --------------------------------------------------------------------------------


def _hub_base(tmp_path: Path, method: str) -> Path:
    """A tiny base model saved where the Hub cache would put `org/tiny-base`: its Hub id is known from its path."""
    from hf_immunize.data.toy import BIOS_DEFAULT_PROFESSIONS
    from hf_immunize.testing import tiny_encoder_classifier

    folder = tmp_path / "hub" / "models--org--tiny-base" / "snapshots" / "0123abcd"
    if method == "mlac":
        tiny_encoder_classifier(num_labels=len(BIOS_DEFAULT_PROFESSIONS), save_dir=folder)
    else:
        tiny_causal_lm(save_dir=folder)
    return folder


def _chat(rows: Dataset) -> Dataset:
    return rows.map(
        lambda r: {
            "prompt": [{"role": "user", "content": _bare(r["prompt"])}],
            "completion": [{"role": "assistant", "content": r["completion"].strip()}],
        },
        remove_columns=rows.column_names,
    )


def _train_and_save(method: str, peft: bool, base: Path, out: Path) -> None:
    """Two optimizer steps of `method` on its toy world, then `save_model()` (which writes our card)."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hf_immunize import (
        BoosterConfig,
        BoosterTrainer,
        MistakeSFTConfig,
        MistakeSFTTrainer,
        MLACConfig,
        MLACTrainer,
        UnlearnConfig,
        UnlearnTrainer,
    )
    from hf_immunize.data.toy import BiosWorld, make_bios_world, make_book_world

    tok = tiny_tokenizer()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    run = tiny_run_args(out, max_steps=2)
    if method == "mlac":
        world = make_bios_world(n=200, scrub_pronouns=True)
        seq_lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
        args = MLACConfig(**{**run, "max_length": 64}, inner_steps=1, inner_batch_sizes=[4],
                          learn_inner_learning_rate=False, adversary_params="lora" if peft else "all")  # fmt: skip
        trainer = MLACTrainer(
            model=AutoModelForSequenceClassification.from_pretrained(base, attn_implementation="eager"),
            args=args,
            train_dataset=world.train,
            harmful_dataset=BiosWorld.with_label(world.train, "gender"),
            processing_class=tok,
            peft_config=seq_lora if peft else None,
        )
    elif method == "unlearn":
        world = make_book_world(n_passages=20)
        trainer = UnlearnTrainer(
            model=AutoModelForCausalLM.from_pretrained(base),
            args=UnlearnConfig(**run, unlearning_loss="grad_diff"),
            train_dataset=world.forget,
            retain_dataset=world.retain,
            processing_class=tok,
            peft_config=lora if peft else None,
        )
    else:
        world = make_safety_world(n_weapons=8)
        if method == "booster":
            harmful = world.alignment_harmful.map(lambda r: {"completion": r["harmful"]})
            trainer = BoosterTrainer(
                model=AutoModelForCausalLM.from_pretrained(base),
                args=BoosterConfig(**run),
                train_dataset=_chat(world.alignment),  # a chat model: trained on conversations
                harmful_dataset=_chat(harmful.select_columns(["prompt", "completion"])),
                processing_class=tok,
                peft_config=lora if peft else None,
            )
        else:
            from hf_immunize.methods.mistake_sft import analysis_prompt, plain_prompt

            cfg = MistakeSFTConfig(**run)
            rows = [
                {"prompt": analysis_prompt(_bare(r["prompt"]), r["harmful"], cfg, guided=False),
                 "completion": " It can hurt people. A harmless reply is: I cannot help."}
                for r in world.alignment_harmful
            ] + [{"prompt": plain_prompt(_bare(r["prompt"]), cfg), "completion": r["completion"]}
                 for r in world.attack_benign.select(range(8))]  # fmt: skip
            trainer = MistakeSFTTrainer(
                model=AutoModelForCausalLM.from_pretrained(base),
                args=cfg,
                train_dataset=Dataset.from_list(rows),
                processing_class=tok,
                peft_config=lora if peft else None,
            )
    trainer.train()
    trainer.save_model()


# Small evaluation settings per method (flags of `hf-immunize evaluate`): seconds, not minutes.
EVAL_FLAGS = {
    "booster": ["--max_steps", "2", "--n_samples", "20", "--eval_every", "1"],
    "mistake-sft": ["--max_steps", "2", "--n_samples", "20", "--max_new_tokens", "8"],
    "mlac": ["--n_examples", "12", "--budget", "2", "--repeats", "1", "--search_steps", "5"],
    "unlearn": ["--relearn_steps", "4", "--relearn_passages", "4"],
}
# What each method's card must state (the measured numbers' headings).
CARD_TEXT = {
    "booster": ["**Harmful fine-tuning attack.**", "| booster |", "prompt format: the tokenizer's chat template"],
    "mistake-sft": ["**Mistake analysis.**", "| mistake-sft |", "**Harmful fine-tuning attack.**"],
    "mlac": ["**Few-shot attacker on the blocked task** (gender)", "| mlac |", "| random_init |"],
    "unlearn": ["**Unlearning.**", "familiarity after relearning", "| unlearn |"],
}


def _push_cli(folder: Path, endpoint: str, repo_id: str, tmp_path: Path, *extra: str):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HOME=str(tmp_path / "h")
    )
    command = [sys.executable, "-m", "hf_immunize.cli", "push", str(folder), "--repo_id", repo_id, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("method", ["booster", "mlac", "unlearn", "mistake-sft"])
def test_train_save_evaluate_card_push(method, peft, tmp_path, capsys):
    from hf_immunize.commands import evaluate

    base, out = _hub_base(tmp_path, method), tmp_path / "defended"
    _train_and_save(method, peft, base, out)
    card = (out / "README.md").read_text()
    assert "## Immunization report" not in card and "[More Information Needed]" not in card  # ours, not PEFT's
    record = json.loads((out / RUN_RECORD_NAME).read_text())
    assert record["method"] == method and record["card"]["base_model"] == "org/tiny-base"

    report = evaluate.main(
        ["--model", str(out), "--method", method, "--write_card", "--max_eval_samples", "4", "--no_progress",
         "--output_dir", str(tmp_path / "report"), *EVAL_FLAGS[method]]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert f"next: hf-immunize push {out}" in printed and str(tmp_path / "report") in printed
    assert report.method == method and (report.defended or report.measurements)

    with FakeHub() as hub:
        proc = _push_cli(out, hub.url, f"{USER}/{method}-{'lora' if peft else 'full'}", tmp_path, "--token", TOKEN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = hub.repos[f"{USER}/{method}-{'lora' if peft else 'full'}"]
    weights = "adapter_model.safetensors" if peft else "model.safetensors"
    assert {weights, "README.md", "immunization_report.png", "immunization_report.json", "tokenizer.json"} <= set(
        files
    )
    assert not [n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl")) or n == "hf_immunize_run.json"]
    assert files["immunization_report.png"][:8] == b"\x89PNG\r\n\x1a\n"

    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "org/tiny-base" and {"hf-immunize"} <= set(meta["tags"])
    if peft:
        assert meta["library_name"] == "peft" and "base_model:adapter:org/tiny-base" in meta["tags"]
        assert "lora" in meta["tags"]
    else:
        assert meta["library_name"] == "transformers" and not any(t.startswith("base_model:") for t in meta["tags"])
    section = card.split("## Immunization report")[1].split("\n## ")[0]
    for text in CARD_TEXT[method]:
        assert text in section, (text, section)
    assert "](immunization_report.png)" in section and "How it was measured:" in section
    assert "harmful score:" in section or "keyword familiarity grader" in section or "fresh" in section
    for name, data in files.items():
        if name.endswith((".md", ".json")):
            text = data.decode()
            for secret in (TOKEN, str(tmp_path), str(base)):
                assert secret not in text, f"{name} contains {secret!r}"
