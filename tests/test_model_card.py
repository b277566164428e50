"""Model cards: metadata, method sections, the attached immunization report, and no local paths or tokens."""

import json
import os

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin
from hf_immunize.data.toy import make_safety_world
from hf_immunize.evaluation.attack import AttackResult
from hf_immunize.evaluation.formatting import RUN_RECORD_NAME
from hf_immunize.evaluation.report import ImmunizationReport
from hf_immunize.model_card import (
    PLOT_NAME,
    REPORT_NAME,
    load_report,
    method_section,
    redact,
    render_model_card,
    write_model_card,
)

TOKEN = "hf_TestTokenThatMustNeverAppear0123456789"


def _result(before: float, after: float, seed: int = 0) -> AttackResult:
    config = {"n_samples": 20, "harmful_ratio": 0.1, "learning_rate": 1e-4, "max_steps": 4, "batch_size": 4}
    return AttackResult(
        config={**config, "mode": "full", "seed": seed},
        before={"harmful_score": before, "task_accuracy": 60.0},
        after={"harmful_score": after, "task_accuracy": 58.0},
        curve=[{"step": 0, "harmful_score": before}, {"step": 4, "harmful_score": after}],
    )


@pytest.fixture
def report(tiny_lm_path):
    # The report's `model` field is a local path on purpose: it must not reach the card or the JSON beside it.
    return ImmunizationReport.from_results(
        "booster", str(tiny_lm_path), [_result(10.0, 25.0), _result(12.5, 35.0, 1)], [_result(10.0, 95.0)]
    )


@pytest.fixture(scope="module")
def world():
    return make_safety_world(n_weapons=8)


def _metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _booster(tiny_lm, tiny_tokenizer, world, output_dir, **overrides):
    from hf_immunize import BoosterConfig, BoosterTrainer

    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    args = BoosterConfig(**{**kwargs, **overrides})
    return BoosterTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=world.alignment,
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer,
    )


def test_card_has_no_local_paths_or_tokens(
    tiny_lm, tiny_lm_path, tiny_tokenizer, world, report, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "run"
    trainer = _booster(tiny_lm, tiny_tokenizer, world, out, hub_token=TOKEN[::-1], learning_rate=3e-4)
    assert str(tiny_lm_path) in trainer.model.config._name_or_path  # the base model is a local directory
    trainer.set_immunization_report(report)
    trainer.create_model_card(dataset_name=["toy/safety", str(tmp_path / "local.jsonl")], tags="demo")

    files = {p.name: p.read_text(errors="replace") for p in out.iterdir() if p.suffix in (".md", ".json")}
    assert set(files) == {"README.md", REPORT_NAME, RUN_RECORD_NAME}  # the run record is uploaded too
    for name, text in files.items():
        for secret in (TOKEN, TOKEN[::-1], str(tiny_lm_path), str(tmp_path), str(out), str(os.path.expanduser("~"))):
            assert secret not in text, f"{name} contains {secret!r}"
    card = files["README.md"]
    meta = _metadata(card)
    assert "base_model" not in meta  # a local base model is left out rather than published as a path
    assert meta["datasets"] == ["toy/safety"] and meta["library_name"] == "transformers"
    assert meta["tags"][:2] == ["hf-immunize", "booster"] and "demo" in meta["tags"]
    assert "| `learning_rate` | `0.0003` |" in card and "hub_token" not in card and "output_dir" not in card
    assert json.loads(files[REPORT_NAME])["defended"][0]["after"]["harmful_score"] == 25.0
    record = json.loads(files[RUN_RECORD_NAME])
    assert record["method"] == "booster" and record["prompt_format"] == "raw" and record["card"]["base_model"] is None


def test_card_carries_the_report_and_links_its_plot(tiny_lm, tiny_tokenizer, world, report, tmp_path):
    trainer = _booster(tiny_lm, tiny_tokenizer, world, tmp_path)
    trainer.create_model_card(model_name="tiny-booster", finetuned_from="org/base", license="mit", report=report)
    card = (tmp_path / "README.md").read_text()
    meta = _metadata(card)
    assert meta["base_model"] == "org/base" and meta["license"] == "mit" and meta["model_name"] == "tiny-booster"
    section = card.split("## Immunization report")[1].split("\n## ")[0]
    assert "20 samples, harmful ratio 0.1, learning rate 0.0001, 4 steps, batch size 4, protocol `full`" in section
    assert "| booster | 11.2 ± 1.8 | 30.0 ± 7.1 | 60.0 ± 0.0 | 58.0 ± 0.0 |" in section
    assert "| undefended baseline | 10.0 ± 0.0 | 95.0 ± 0.0 |" in section
    assert f"]({PLOT_NAME})" in section  # relative link, resolved next to README.md on the Hub
    assert (tmp_path / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Known limitations" in card and "TamperBench" in card
    assert card.index("huang2025booster") < card.index("@software{hf_immunize")  # both BibTeX entries
    assert ImmunizationReport.load(tmp_path / REPORT_NAME).summary() == report.summary()


def test_report_attached_by_path_copies_its_plot(tiny_lm, tiny_tokenizer, world, report, tmp_path):
    saved = report.save(tmp_path / "report")
    trainer = _booster(tiny_lm, tiny_tokenizer, world, tmp_path / "run")
    trainer.set_immunization_report(tmp_path / "report")
    trainer.create_model_card()
    assert (tmp_path / "run" / PLOT_NAME).read_bytes() == saved["png"].read_bytes()
    assert "## Immunization report" in (tmp_path / "run" / "README.md").read_text()
    trainer.set_immunization_report(None)
    trainer.create_model_card()
    assert "## Immunization report" not in (tmp_path / "run" / "README.md").read_text()


def test_bad_reports_fail_early_and_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="`report`: no immunization report at"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not an immunization report JSON"):
        load_report(tmp_path / "x.json")
    with pytest.raises(ValueError, match="unknown keys \\['foo'\\]"):
        load_report({"foo": 1})
    with pytest.raises(TypeError, match="got int"):
        load_report(3)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("booster", ["alignment-stage", "TamperBench"]),
        ("mlac", ["simulates an adversary", "MLAC-AR"]),
        ("unlearn", ["not** knowledge removal", "MUSE", "2407.06460", "Lynch et al.", "2402.16835"]),
        ("mistake-analysis", ["analyse its own", "No official code", "2310.20689"]),
    ],
)
def test_each_method_has_a_description_and_limitations(method, expected):
    card = str(render_model_card("m", method=method, base_model="org/base"))
    meta = _metadata(card)
    assert meta["tags"] == ["hf-immunize", method] and meta["base_model"] == "org/base"
    assert "## What the method does" in card and "## Known limitations" in card
    for text in expected:
        assert text in card, text
    assert "{{" not in card and "{%" not in card


def test_unlearning_section_names_its_settings_and_explicit_text_wins():
    section = method_section(
        "unlearn", alpha=5.0, dictionary_size=42, forget_corpus="`wizard_of_oz`", grader="keyword"
    )
    assert "α = 5.0" in section["description"] and "42 entries" in section["description"]
    assert "keyword" in section["description"]
    assert "Settings of this run" not in method_section("unlearn")["description"]
    card = str(render_model_card("m", method="booster", limitations="Only a toy.", method_description="Custom."))
    assert "Only a toy." in card and "Custom." in card and "TamperBench" not in card
    with pytest.raises(ValueError, match="`method`: no card section for 'nope'"):
        method_section("nope")


def test_render_model_card_keeps_its_old_keyword_api():
    card = render_model_card(
        "m",
        base_model="o/m",
        datasets=["d/x"],
        tags=["t"],
        license="apache-2.0",
        method_title="Booster",
        paper={"title": "T", "id": "1234.56789", "citation": "@misc{k}"},
        training_data=["rows"],
        hyperparameters={"a": 1},
        report="REPORT TEXT",
        limitations="LIMITS",
    )
    assert isinstance(card, ModelCard) and card.data.tags == ["hf-immunize", "t"]
    text = str(card)
    for part in ("REPORT TEXT", "LIMITS", "| `a` | `1` |", "- rows", "arxiv.org/abs/1234.56789", "@misc{k}"):
        assert part in text


def test_redact_removes_paths_and_tokens_but_keeps_urls_and_formulas(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    text = (
        f"token {TOKEN}; model at {tmp_path}/base, `/opt/data/x.json`, ~/models/m, C:\\Users\\me\\m; "
        "see https://huggingface.co/org/model and arxiv.org/abs/2409.01586; w' = w - a·g/‖g‖, 1/(K+1), and/or."
    )
    clean = redact(text, paths=[tmp_path])
    for leaked in (TOKEN, str(tmp_path), "/opt/data", "~/models", "C:\\Users"):
        assert leaked not in clean
    for kept in ("https://huggingface.co/org/model", "arxiv.org/abs/2409.01586", "g/‖g‖", "1/(K+1)", "and/or"):
        assert kept in clean


def test_write_model_card_is_atomic_and_reuses_an_unchanged_plot(report, tmp_path, monkeypatch):
    path = write_model_card(tmp_path, "m", report=report, method="booster")
    first = (tmp_path / PLOT_NAME).stat().st_mtime_ns
    monkeypatch.setattr(ImmunizationReport, "plot", lambda self, p: pytest.fail("redrawn an unchanged plot"))
    write_model_card(tmp_path, "m", report=report, method="booster")
    assert (tmp_path / PLOT_NAME).stat().st_mtime_ns == first and path.name == "README.md"

    def broken(self, p):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(ImmunizationReport, "plot", broken)
    changed = ImmunizationReport.from_results("booster", "m", [_result(1.0, 2.0)])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RuntimeError, match="plot failed"):
        write_model_card(tmp_path, "m", report=changed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", REPORT_NAME, PLOT_NAME]  # no temp files
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # card, JSON and plot all as they were


class _PlainSFT(ImmunizeTrainerMixin, __import__("trl").SFTTrainer):
    """A user's own trainer on top of TRL: inherits nothing of ours but the mixin."""

    _tag_names = ["hf-immunize", "mistake-analysis"]
    _name = "PlainSFT"
    _paper = {"title": "Gaining Wisdom from Setbacks", "id": "2310.10477", "citation": "@inproceedings{chen2024}"}
    loss_is_scaled_for_ga = None


class _PlainTrainer(ImmunizeTrainerMixin, __import__("transformers").Trainer):
    _tag_names = ["hf-immunize", "mlac"]
    _name = "Plain"
    _paper = {"title": "Self-Destructing Models", "id": "2211.14946", "citation": "@inproceedings{henderson}"}
    loss_is_scaled_for_ga = None


@pytest.mark.parametrize("base", ["sft", "trainer"])
def test_card_with_report_is_written_at_every_checkpoint(
    base, tiny_lm, tiny_tokenizer, world, report, tmp_path, monkeypatch
):
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    from hf_immunize.utils import sft_config

    common = dict(max_steps=2, save_strategy="steps", save_steps=1, per_device_train_batch_size=4, report_to="none")
    if base == "sft":
        args = sft_config(tmp_path, **common)
        trainer = _PlainSFT(model=tiny_lm, args=args, train_dataset=world.alignment, processing_class=tiny_tokenizer)
    else:
        rows = world.alignment.map(
            lambda r: tiny_tokenizer(r["prompt"] + r["completion"], truncation=True, max_length=48),
            remove_columns=world.alignment.column_names,
        )
        args = TrainingArguments(str(tmp_path), use_cpu=True, disable_tqdm=True, **common)
        trainer = _PlainTrainer(
            model=tiny_lm,
            args=args,
            train_dataset=rows,
            data_collator=DataCollatorForLanguageModeling(tiny_tokenizer, mlm=False),
        )
    trainer.set_immunization_report(report)
    renders = []

    def counting(directory, *args, **kwargs):
        renders.append((trainer.state.global_step, os.path.basename(directory)))
        return write_model_card(directory, *args, **kwargs)

    monkeypatch.setattr("hf_immunize.core.card.write_model_card", counting)  # where the trainers import it from
    trainer.train()
    card = (tmp_path / "README.md").read_text()
    method = "mistake-analysis" if base == "sft" else "mlac"
    assert _metadata(card)["tags"][:2] == ["hf-immunize", method] and "## Immunization report" in card
    assert (tmp_path / PLOT_NAME).is_file()
    assert "- sft" not in card and "trl" not in _metadata(card)["tags"]
    # Once per checkpoint into output_dir (TRL's own call in `SFTTrainer._save_checkpoint` is muted) and once into the
    # checkpoint folder itself (by `save_model`), so a checkpoint carries our card, not PEFT's or none.
    expected = [(step, name) for step in (1, 2) for name in (tmp_path.name, f"checkpoint-{step}")]
    assert renders == expected
    assert "## Immunization report" in (tmp_path / "checkpoint-2" / "README.md").read_text()


def test_unlearning_settings_line_has_no_stray_separators():
    from hf_immunize.model_card import render_model_card

    context = {"alpha": 5.0, "dictionary_size": 12, "forget_corpus": None, "grader": None}
    line = next(
        x
        for x in str(render_model_card("m", method="unlearn", section_context=context)).splitlines()
        if x.startswith("Settings of this run")
    )
    assert line == "Settings of this run: anchored-term dictionary of 12 entries; α = 5.0."
