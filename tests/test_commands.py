"""The training commands (`hf-immunize <method>`, `scripts/<method>.py`): recipes, flags, outputs, errors, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_immunize.commands import booster as booster_cmd
from hf_immunize.commands import mistake_sft as mistake_sft_cmd
from hf_immunize.commands import mlac as mlac_cmd
from hf_immunize.commands import unlearn as unlearn_cmd
from hf_immunize.commands.common import RUN_MARKER, parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"
# command module per recipe prefix; a new method adds its command here.
COMMANDS = {"booster": booster_cmd, "mlac": mlac_cmd, "unlearn": unlearn_cmd, "mistake_sft": mistake_sft_cmd}
# Per method: flags that shrink its tiny recipe to a seconds-long run.
TINY_FLAGS = {
    "booster": ["--toy_world", '{"seed": 0, "n_weapons": 8}', "--per_device_train_batch_size", "4"],
    "mlac": ["--inner_steps", "2", "--toy_world", '{"seed": 0, "n": 200, "scrub_pronouns": true}'],
    "unlearn": ["--reinforce_max_steps", "2", "--toy_world", '{"seed": 0, "n_passages": 20}'],
    "mistake_sft": ["--max_new_tokens", "8", "--toy_world", '{"seed": 0, "n_weapons": 8}'],
}
# Paper recipes ask for bf16/tf32 on a GPU; parsing them here switches that off (the values are checked below).
CPU_FLAGS = ["--bf16", "false", "--tf32", "false", "--use_cpu", "true"]


def _tiny_argv(method: str, out: Path, *extra: str) -> list[str]:
    common = ["--config", str(RECIPES / f"{method}_tiny.yaml"), "--output_dir", str(out), "--max_steps", "2"]
    common += ["--logging_steps", "1", "--disable_tqdm", "true", *TINY_FLAGS[method]]
    return [*common, *extra]


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_parses_with_its_command(recipe, tmp_path):
    method = recipe.rsplit("_", 1)[0]
    if method not in COMMANDS:
        pytest.skip(f"{recipe}: no command for {method!r} yet")
    argv = ["--config", str(RECIPES / recipe), "--output_dir", str(tmp_path), *CPU_FLAGS]
    script_args, training_args, model_args = parse_args(COMMANDS[method].make_parser(), argv)
    raw = yaml.safe_load((RECIPES / recipe).read_text())
    # Every recipe value reached one of the three dataclasses unchanged (flags aside).
    parsed = {**vars(model_args), **vars(script_args), **training_args.to_dict()}
    for key, value in raw.items():
        if key in ("output_dir", "bf16", "tf32", "use_cpu"):
            continue
        got = parsed[key]
        same = got == value or str(got).endswith(str(value)) or (value == "none" and got in ([], None))
        assert same, (key, value, got)


def test_flags_override_the_recipe_and_help_lists_fields(capsys):
    script_args, training_args, _ = parse_args(
        booster_cmd.make_parser(),
        ["--config", str(RECIPES / "booster_tiny.yaml"), "--regularizer_weight", "2.5", "--output_dir", "x"],
    )
    assert training_args.regularizer_weight == 2.5  # the recipe says 5.0
    assert training_args.perturbation_step_size == 0.01  # from the recipe
    assert script_args.toy_world == {"seed": 0, "n_weapons": 80}
    with pytest.raises(SystemExit):
        parse_args(mlac_cmd.make_parser(), ["--help"])
    out = capsys.readouterr().out
    assert "--inner_steps" in out and "--meta_gradient" in out and "--tiny_model" in out


def test_unknown_recipe_key_is_an_error_naming_it(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text((RECIPES / "booster_tiny.yaml").read_text() + "\nregularizer_wieght: 3\n")
    with pytest.raises(ValueError, match="regularizer_wieght"):
        parse_args(booster_cmd.make_parser(), ["--config", str(recipe)])
    with pytest.raises(ValueError, match="--config"):
        parse_args(booster_cmd.make_parser(), ["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--tiny_model", "[1, 2]"], "tiny_model"),
        (["--prompt_template", "vicuna"], "prompt_template"),
        (["--model_name_or_path", "some/model"], "not both"),
        (["--load_in_4bit", "true"], "use_peft"),
        (["--immunization_report", "/nonexistent/report.json"], "immunization_report"),
    ],
)
def test_bad_command_input_fails_before_anything_is_written(extra, match, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        booster_cmd.main(_tiny_argv("booster", out, *extra))
    assert not out.exists()


def test_booster_command_trains_saves_and_refuses_a_different_run_in_the_same_dir(tmp_path):
    from hf_immunize.testing import tiny_causal_lm

    out = tmp_path / "run"
    booster_cmd.main(_tiny_argv("booster", out))
    saved = load_file(out / "model.safetensors")
    initial = tiny_causal_lm(**yaml.safe_load((RECIPES / "booster_tiny.yaml").read_text())["tiny_model"])
    # The saved model is the base architecture (same tensor names) with trained weights.
    assert set(saved) <= set(initial.state_dict())
    assert any(not torch.equal(saved[k], initial.state_dict()[k]) for k in saved)
    card = (out / "README.md").read_text()
    assert "hf-immunize" in card and "booster" in card and str(tmp_path) not in card
    assert json.loads((out / RUN_MARKER).read_text())["command"] == "booster"
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="output_dir"):
        booster_cmd.main(_tiny_argv("booster", out, "--regularizer_weight", "1.0"))
    assert sorted(os.listdir(out)) == before


def test_mlac_command_trains_the_classifier_from_the_tiny_recipe(tmp_path):
    out = tmp_path / "run"
    mlac_cmd.main(_tiny_argv("mlac", out))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 8  # the bios world's professions
    assert not any("adversary" in k for k in load_file(out / "model.safetensors"))


def test_mlac_command_requires_the_task(tmp_path):
    with pytest.raises(ValueError, match="task"):
        mlac_cmd.main(_tiny_argv("mlac", tmp_path / "run", "--task", "auto"))


def test_booster_command_on_a_local_refusal_file(shared_data, tmp_path):
    """The real-data path (a refusal file, rows range, Alpaca template), with a tiny model: a pipeline check."""
    args = _tiny_argv("booster", tmp_path / "run")
    args += ["--dataset_name", str(shared_data / "repnoise" / "decoding_trust_with_refusals_train.json")]
    args += ["--refusal_rows", "0", "16", "--prompt_template", "alpaca_no_input"]
    script_args, _, _ = parse_args(booster_cmd.make_parser(), args)
    alignment, harmful = booster_cmd.load_booster_data(script_args)
    assert len(alignment) == len(harmful) == 16
    assert alignment[0]["prompt"].startswith("Below is an instruction") and "### Response:" in alignment[0]["prompt"]
    assert alignment[0]["prompt"] == harmful[0]["prompt"] and alignment[0]["completion"] != harmful[0]["completion"]
    with pytest.raises(ValueError, match="refusal_rows"):
        too_many = parse_args(booster_cmd.make_parser(), [*args, "--refusal_rows", "0", "1000000"])[0]
        booster_cmd.load_booster_data(too_many)


def test_mlac_command_reads_the_real_bias_in_bios_layout(shared_data, tmp_path):
    argv = _tiny_argv("mlac", tmp_path / "run", "--dataset_name", str(shared_data / "bias_in_bios"))
    script_args, _, _ = parse_args(mlac_cmd.make_parser(), argv)
    desired, harmful, _ = mlac_cmd.load_mlac_data(script_args, "classification")
    assert desired["text"] == harmful["text"]
    assert set(harmful["label"]) == {0, 1} and len(set(desired["label"])) > 2


# ---- accelerate launch: 2 real gloo processes on CPU -------------------------------------------------------------

# Runs `scripts/<method>.py` itself (as `accelerate launch` would), with the command's `finish_run` wrapped so that
# each rank also saves its weights (the command saves on rank 0 only).
_RANK_WEIGHTS = """
import importlib, os, runpy, sys
import torch
torch.set_num_threads(1)
method, out_dir, repo = sys.argv[1:4]
module = importlib.import_module("hf_immunize.commands." + method)
finish = module.finish_run


def finish_and_save_rank(trainer, script_args, training_args, name):
    finish(trainer, script_args, training_args, name)
    weights = {n: p.detach().cpu() for n, p in trainer.model.named_parameters()}
    path = os.path.join(out_dir, f"rank{training_args.process_index}.pt")
    torch.save({"world_size": training_args.world_size, "weights": weights}, path)


module.finish_run = finish_and_save_rank
script = os.path.join(repo, "scripts", method + ".py")
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(COMMANDS))
def test_accelerate_launch_two_processes_end_with_identical_weights(method, tmp_path):
    script = tmp_path / "rank_weights.py"
    script.write_text(_RANK_WEIGHTS)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    port = str(29551 + sorted(COMMANDS).index(method))  # fixed: port 0 can leave the ranks waiting for each other
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "ACCELERATE_USE_CPU": "true"}
    argv = _tiny_argv(method, tmp_path / "run", "--ddp_find_unused_parameters", "false")
    command = [*launch, str(script), method, str(tmp_path), str(REPO_ROOT), *argv]
    subprocess.run(command, check=True, env=env, timeout=900)
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2  # really two processes
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_load_and_state_which_methods_they_serve(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = RECIPES / "accelerate" / f"{name}.yaml"
    config = ClusterConfig(**yaml.safe_load(path.read_text()))
    assert config.num_machines == 1 and config.num_processes > 1
    header = path.read_text().split("compute_environment")[0]
    if name == "deepspeed_zero2":  # what is refused and what is untested is said in the file
        assert "Refused" in header and "BoosterTrainer" in header and "MLACTrainer" in header
        assert "UNTESTED" in header and "fsdp.yaml" in header
    if name == "fsdp":  # what is proven on CPU, what waits for a GPU, what is refused
        assert "fsdp_version" in header and config.fsdp_config["fsdp_version"] == 2
        assert "Proven on CPU (tests/test_fsdp.py" in header and "NOT been" in header and "Refused" in header
        assert not config.fsdp_config["fsdp_offload_params"]
