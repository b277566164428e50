"""Security: safetensors weights, no remote code unless asked, no arbitrary unpickling when a checkpoint is loaded."""

import ast
import pickle
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_immunize"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(name: str):
    """(file, call node) for every call of an attribute or function called `name` in the package."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield path, node


def test_every_torch_load_in_the_package_is_weights_only():
    loads = list(_calls("load"))
    torch_loads = [
        (p, n) for p, n in loads if isinstance(n.func, ast.Attribute) and ast.unparse(n.func) == "torch.load"
    ]
    assert torch_loads, "expected the checkpoint state loader to use torch.load"
    for path, node in torch_loads:
        flags = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in flags and ast.literal_eval(flags["weights_only"]) is True, f"{path}:{node.lineno}"


def test_remote_code_is_never_switched_on_by_the_package():
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                value = node.value
                assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}:{value.lineno}"


class _Payload:
    """Unpickling it would write a file: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_poisoned_checkpoint_state_is_refused_without_running_code(tiny_lm_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_immunize import BoosterConfig, BoosterTrainer
    from hf_immunize.data.toy import make_safety_world
    from hf_immunize.testing import tiny_tokenizer

    world = make_safety_world(seed=0, n_weapons=8)
    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )

    def trainer(out):
        args = BoosterConfig(
            output_dir=str(out),
            max_steps=2,
            save_strategy="steps",
            save_steps=1,
            report_to="none",
            use_cpu=True,
            per_device_train_batch_size=2,
            max_length=64,
        )
        return BoosterTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_lm_path),
            args=args,
            train_dataset=world.alignment.select(range(8)),
            harmful_dataset=harmful,
            processing_class=tiny_tokenizer(),
        )

    first = trainer(tmp_path / "run")
    first.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    files = {p.name for p in checkpoint.iterdir()}
    assert "model.safetensors" in files and not {"pytorch_model.bin", "model.bin"} & files  # weights: safetensors

    marker = tmp_path / "pwned.txt"
    with open(checkpoint / "immunize_state.pt", "wb") as f:
        pickle.dump({"harmful_stream": _Payload(marker)}, f)
    with pytest.raises(pickle.UnpicklingError):
        trainer(tmp_path / "resumed").train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()
