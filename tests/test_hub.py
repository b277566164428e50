"""`trainer.push_to_hub()` against a local fake Hub (tests/fake_hub.py): what arrives, the card's metadata, and a clear
error when the Hub cannot be reached.

`HF_ENDPOINT` is read when `huggingface_hub` is imported, and this test process imported it long ago (offline), so
each push runs in a fresh subprocess with the endpoint and without `HF_HUB_OFFLINE`.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from fake_hub import USER, FakeHub

TOKEN = "hf_FakeHubTokenNeverInAFile0123456789"

PUSH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM

    from hf_immunize import BoosterConfig, BoosterTrainer
    from hf_immunize.data.toy import make_safety_world
    from hf_immunize.evaluation.attack import AttackResult
    from hf_immunize.evaluation.report import ImmunizationReport
    from hf_immunize.testing import tiny_tokenizer

    torch.set_num_threads(1)
    model_path, output_dir, repo_id, token = sys.argv[1:5]
    world = make_safety_world(n_weapons=8)
    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.config._name_or_path = "org/tiny-base"  # as if it had come from the Hub
    args = BoosterConfig(
        output_dir, max_steps=1, per_device_train_batch_size=4, use_cpu=True, bf16=False,
        activation_checkpointing=False, report_to="none", save_strategy="no", disable_tqdm=True,
        hub_model_id=repo_id, hub_token=token,
    )
    trainer = BoosterTrainer(
        model=model, args=args, train_dataset=world.alignment, harmful_dataset=harmful,
        processing_class=tiny_tokenizer(),
    )
    result = AttackResult(
        config={"n_samples": 8, "harmful_ratio": 0.1, "learning_rate": 1e-3, "max_steps": 2, "batch_size": 4},
        before={"harmful_score": 0.0}, after={"harmful_score": 25.0},
        curve=[{"step": 0, "harmful_score": 0.0}, {"step": 2, "harmful_score": 25.0}],
    )
    trainer.set_immunization_report(ImmunizationReport.from_results("booster", model_path, [result]))
    if sys.argv[5] == "train":
        trainer.train()
    try:
        commit = trainer.push_to_hub(dataset_name="toy/safety-world", license="apache-2.0")
    except Exception as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}))
        sys.exit(3)
    print(json.dumps({"commit_url": str(commit.commit_url), "oid": commit.oid}))
    """
)


def _push(tmp_path: Path, endpoint: str, model_path: Path, repo_id: str, mode: str = "train"):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HOME=str(tmp_path / "hf")
    )
    env["HF_TOKEN"] = TOKEN[::-1]  # a stored token that must not reach any file either
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", PUSH_SCRIPT, str(model_path), str(out), repo_id, TOKEN, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a hang fails the test instead of the suite
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{") and '"' in line]
    result = json.loads(lines[-1]) if lines else {}
    return proc, result, out


def test_push_to_hub_uploads_weights_tokenizer_card_and_plot(tiny_lm_path, tmp_path):
    with FakeHub() as hub:
        proc, result, out = _push(tmp_path, hub.url, tiny_lm_path, f"{USER}/tiny-booster")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["commit_url"].startswith(f"{hub.url}/{USER}/tiny-booster/commit/")

    files = hub.repos[f"{USER}/tiny-booster"]
    expected = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"}
    assert expected | {"immunization_report.png", "immunization_report.json"} <= set(files)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))], sorted(files)
    assert not [name for name in files if name.startswith(("checkpoint-", "_"))]
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert files["immunization_report.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert files["immunization_report.png"] == (out / "immunization_report.png").read_bytes()

    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "org/tiny-base" and meta["license"] == "apache-2.0"
    assert {"hf-immunize", "booster"} <= set(meta["tags"]) and meta["datasets"] == ["toy/safety-world"]
    assert meta["model_name"] == "tiny-booster" and meta["library_name"] == "transformers"
    assert "](immunization_report.png)" in card and "## Immunization report" in card
    for name, data in files.items():
        if name.endswith((".md", ".json")):
            text = data.decode()
            for secret in (TOKEN, TOKEN[::-1], str(tmp_path), str(tiny_lm_path)):
                assert secret not in text, f"{name} contains {secret!r}"

    assert ("POST", "/api/repos/create") in hub.requests
    assert ("POST", f"/api/models/{USER}/tiny-booster/commit/main") in hub.requests
    assert hub.commits[-1]["summary"] == "End of training"


def test_push_to_an_unreachable_hub_fails_fast_and_clearly(tiny_lm_path, tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, result, _ = _push(tmp_path, f"http://127.0.0.1:{port}", tiny_lm_path, f"{USER}/nowhere", mode="no-train")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert result["error"] == "ConnectionError"
    assert f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}" in result["message"]
    assert f"'{USER}/nowhere'" in result["message"] and TOKEN not in result["message"]


def test_push_in_offline_mode_says_so(tiny_lm, tiny_tokenizer, tmp_path):
    from hf_immunize import BoosterConfig, BoosterTrainer
    from hf_immunize.data.toy import make_safety_world

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest for the whole test session
    world = make_safety_world(n_weapons=8)
    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    args = BoosterConfig(
        str(tmp_path),
        max_steps=1,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        hub_model_id="someone/model",
    )
    trainer = BoosterTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=world.alignment,
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer,
    )
    with pytest.raises(ConnectionError, match="disabled by HF_HUB_OFFLINE=1"):
        trainer.push_to_hub()
