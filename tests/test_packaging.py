"""Packaging: every package is listed, and a non-editable install ships the card templates."""

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def test_every_package_directory_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {
        ".".join(p.relative_to(REPO_ROOT).parts[:-1])
        for p in (REPO_ROOT / "hf_immunize").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found | {"hf_immunize.model_cards"} == listed


def test_constraints_pin_the_tested_versions():
    pins = dict(line.split("==") for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["torch"] == "2.13.0" and pins["transformers"] == "5.23.0" and pins["trl"] == "1.16.0"
    assert set(pins) >= {"peft", "datasets", "accelerate", "evaluate", "bitsandbytes", "huggingface_hub"}


def test_non_editable_install_ships_card_templates(tmp_path):
    """`pip install .` (no editable link) into a separate target, then render a card from outside the repo."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "hf_immunize" / "model_cards" / "base.md").is_file()
    for template in ("rubric.txt", "logits.txt"):  # the judges' prompt templates ship too
        assert (target / "hf_immunize" / "evaluation" / "judge_templates" / template).is_file()
    script = (
        "import hf_immunize, hf_immunize.model_card as m;"
        "assert 'site' in hf_immunize.__file__, hf_immunize.__file__;"
        "card = m.render_model_card('demo-model', method='booster', base_model='org/base');"
        "print(m.template_path()); print(card.data.tags)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(target) in out.stdout and "['hf-immunize', 'booster']" in out.stdout


def test_cli_lists_commands_and_rejects_unknown(capsys):
    from hf_immunize.cli import main

    assert main([]) == 0 and "demo" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["base.md"])
def test_card_template_renders_metadata_without_local_paths(name):
    from hf_immunize.model_card import render_model_card

    card = render_model_card("m", method="booster", datasets=["PKU-Alignment/BeaverTails"], license="apache-2.0")
    text = str(card)
    assert text.startswith("---\n") and "hf-immunize" in text and "license: apache-2.0" in text
    assert str(Path.home()) not in text and str(REPO_ROOT) not in text
