"""FSDP2 (`fsdp_version: 2`) for all four trainers: the sharded math proven on CPU, the refusals, and a GPU check.

The CPU proof runs accelerate's own FSDP2 preparation and the real Trainer path on 2 gloo processes: `accelerate
launch --config_file recipes/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no`, with accelerate's
device-type choice overridden (tests/fsdp_cpu.py; accelerate otherwise turns every CPU launch into plain DDP). The
parameters are then DTensor shards exactly as on GPUs (`fully_shard` per decoder layer, the input embedding, the final
norm with the head, the root), and every update is compared with one unsharded process at the same global batch.

What is compared: the sum over the steps of the gradient the optimizer applies (gathered at `on_pre_optimizer_step`;
SGD at a constant rate, so the update is −lr times it), per parameter, relative error ≤ 1e-5. Not `w_after −
w_before`: that difference is quantised by the weights' own rounding (a RMSNorm weight at 1.0 has an fp32 spacing of
1.2e-7, already 1.5e-5 of its 8e-3 update), so a one-ulp difference between the two summation orders read as 1.5e-5
although the gradients agree to 7e-7.

MLAC's inner Adam is compared in fp64: its first step is lr·g/(|g| + 1e-8), which turns the 1e-10 rounding noise of
near-zero gradient entries into weight moves of 5e-4 (lr 0.05), so fp32 Adam trajectories differ by summation order
alone, in any two layouts (measured: 8e-5 on the tiny Llama, 1e-2 on the tiny BERT in fp32; 3e-7 and 1e-11 in fp64).
The fp64 Llama stays at ~3e-7 because its RMSNorm and rotary embedding compute in fp32 and the two layouts pad their
batches differently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("fsdp_runner.py")
FSDP_RECIPE = REPO_ROOT / "recipes" / "accelerate" / "fsdp.yaml"
# Fixed rendezvous ports (port 0 can leave the ranks waiting for each other), distinct from test_distributed.py's
# 2954x, test_commands.py's 2955x, test_docs.py's 2957x and test_booster.py's 29531.
PORTS = {"equivalence": 29591, "refusals": 29592, "gpu": 29593, "benchmark": 29594}
TOLERANCE = 1e-5

SINGLE_CASES = [
    "booster",
    "booster_fast",
    "booster_lora",
    "unlearn_whp",
    "unlearn_grad_diff",
    "unlearn_npo",
    "mistake_sft",
    "mlac_lm",
    "mlac_lm_adam_fp64",
    "mlac_classifier",
    "mlac_classifier_adam_fp64",
]
# sharded case -> the one-process run it must equal
COMPARISONS = {
    **{case: case for case in SINGLE_CASES},
    "booster_accumulation": "booster",  # 2 processes x 1 row x 2 accumulated micro-batches
    "booster_resume": "booster",  # step 1, checkpoint (sharded state dict), step 2 in a fresh trainer
}
# Attention key biases get a gradient of exactly 0 (softmax is unchanged by adding q·b to every key's score); what
# they receive is rounding noise, so their relative error means nothing. They are checked to stay negligible.
ZERO_GRADIENT = ("attention.self.key.bias",)


def _launch(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP_RECIPE),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(port),
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _warm_model_cache() -> None:
    """Builds the cached tiny models in this process: a rank other than 0 cannot write one (`save_pretrained` writes
    nothing there once the process group is up)."""
    from hf_immunize.testing import tiny_causal_lm, tiny_encoder_classifier

    tiny_causal_lm()
    tiny_encoder_classifier(num_labels=4)


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory) -> Path:
    """Every case once in one process, and once on 2 FSDP2 processes (one launch for all of them)."""
    _warm_model_cache()
    out = tmp_path_factory.mktemp("fsdp")
    subprocess.run(
        [sys.executable, str(RUNNER), str(out / "single"), *SINGLE_CASES], check=True, env=_env(), timeout=600
    )
    command = [*_launch(PORTS["equivalence"]), str(RUNNER), str(out / "fsdp"), *COMPARISONS]
    subprocess.run(command, check=True, env=_env(), timeout=900)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(COMPARISONS))
def test_two_fsdp2_processes_give_the_update_of_one_process(case, fsdp_runs):
    single = torch.load(fsdp_runs / "single" / f"{COMPARISONS[case]}.pt")
    sharded = torch.load(fsdp_runs / "fsdp" / f"{case}.pt")
    assert sharded["world_size"] == 2 and sharded["parameter_types"] == ["DTensor"]  # really sharded, 2 processes
    assert single["world_size"] == 1 and single["parameter_types"] == ["Parameter"]
    # TRL's fused LM head gathers a PEFT model's frozen head itself in every forward (plain SFT's too): counted apart.
    assert sharded["full_gathers"] == 0, "a full weight or gradient was gathered during training"
    reference, update = single["update"], sharded["update"]
    total = torch.linalg.vector_norm(torch.cat([u.flatten() for u in reference.values()]))
    trainable = set(single["trainable"])
    assert trainable == set(sharded["trainable"]) and trainable
    for name in reference:
        if name not in trainable:  # frozen (a LoRA model's base): untouched in both layouts
            assert reference[name].norm() == 0 and update[name].norm() == 0, name
        elif name.endswith(ZERO_GRADIENT):
            assert max(reference[name].norm(), update[name].norm()) <= 1e-8 * total, name
        else:
            assert reference[name].norm() > 0, f"{name} did not train"
            rel = (reference[name] - update[name]).norm() / reference[name].norm()
            assert rel <= TOLERANCE, (name, rel.item())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SINGLE_CASES))
def test_sharded_runs_log_the_same_method_metrics(case, fsdp_runs):
    """The method's logged values (harmful losses, NPO ratios, MLAC's trajectory losses) are global, not per shard."""
    single = torch.load(fsdp_runs / "single" / f"{case}.pt")["logs"]
    sharded = torch.load(fsdp_runs / "fsdp" / f"{case}.pt")["logs"]
    # Unlearn's own metrics are each process's local means (as under DDP); its `loss` is global.
    prefixes = ("booster/", "mlac/desired", "mlac/harmful_loss", "mlac/objective", "loss")
    compared = 0
    for a, b in zip(single[:-1], sharded[:-1], strict=True):  # the last entry is the run summary
        keys = sorted(k for k in a if k.startswith(prefixes))
        assert keys == sorted(k for k in b if k.startswith(prefixes)), (case, a, b)
        for key in keys:
            # abs: grad_diff's loss is a difference of two ~7-nat NLLs, so its error sits at their fp32 spacing
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (case, key)
        compared += len(keys)
    assert compared >= len(single) - 1, (case, single)


@pytest.mark.slow
def test_fsdp1_offload_and_second_order_are_refused_before_training(tmp_path):
    """On 2 launched FSDP processes: FSDP1 is refused by all four trainers; FSDP2 with the parameters offloaded to
    the CPU by Booster and MLAC (Unlearn and MistakeSFT build); MLAC's second order under FSDP2. Each error says
    what to use instead."""
    _warm_model_cache()
    command = [*_launch(PORTS["refusals"]), str(RUNNER), str(tmp_path), "refusals"]
    subprocess.run(command, check=True, env=_env(), timeout=600)
    results = torch.load(tmp_path / "refusals.pt")
    names = {"booster": "Booster", "mlac_lm": "MLAC", "unlearn_grad_diff": "Unlearn", "mistake_sft": "MistakeSFT"}
    for case, name in names.items():
        assert f"{name} does not support FSDP1" in results["fsdp1", case]
        assert "`fsdp_version: 2`" in results["fsdp1", case]
    for case in ("booster", "mlac_lm"):
        assert "offloaded to the CPU" in results["offload", case]
        assert "`fsdp_offload_params: false`" in results["offload", case]
    assert results["offload", "unlearn_grad_diff"] is None and results["offload", "mistake_sft"] is None
    assert "meta_gradient='first_order'" in results["fsdp2", "mlac_second_order"]
    refused_everywhere = ("booster", "mlac_lm", "mlac_second_order")
    assert not any((tmp_path / f"run-{case}").exists() for case in refused_everywhere), "a refused run left a folder"


# ---- the checks that need no second process ---------------------------------------------------------------------


def _state(fsdp_version=None, offload=False, deepspeed=False):
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    plugin = None
    if fsdp_version is not None:
        plugin = SimpleNamespace(
            fsdp_version=fsdp_version, cpu_offload=CPUOffloadPolicy() if offload else OffloadPolicy()
        )
    return SimpleNamespace(
        is_fsdp_enabled=plugin is not None,
        is_deepspeed_enabled=deepspeed,
        accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)),
    )


@pytest.mark.parametrize(
    "state, edits_weights, match",
    [
        (dict(fsdp_version=2), True, None),
        (dict(fsdp_version=2), False, None),
        (dict(fsdp_version=1), True, r"does not support FSDP1 .*Set `fsdp_version: 2`"),
        (dict(fsdp_version=1), False, r"does not support FSDP1 .*Set `fsdp_version: 2`"),
        (dict(fsdp_version=2, offload=True), True, r"offloaded to the CPU .*`fsdp_offload_params: false`"),
        (dict(fsdp_version=2, offload=True), False, None),
        (dict(deepspeed=True), True, r"does not support DeepSpeed.*use FSDP2 .*recipes/accelerate/fsdp.yaml"),
        (dict(deepspeed=True), False, None),
    ],
)
def test_sharded_engine_check(state, edits_weights, match):
    from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin

    check = ImmunizeTrainerMixin._refuse_sharded_training
    if match is None:
        check(_state(**state), "Method", edits_weights=edits_weights)
    else:
        with pytest.raises(ValueError, match=match):
            check(_state(**state), "Method", edits_weights=edits_weights)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(meta_gradient="second_order"), "supports meta_gradient='first_order' only, got 'second_order'"),
        (dict(meta_gradient="truncated", truncation_steps=1), r"got 'truncated' \(truncation_steps=1\)"),
        (dict(meta_gradient="first_order"), None),
        (dict(meta_gradient="second_order", inner_steps=0), None),  # no inner step: nothing to differentiate
    ],
)
def test_mlac_fsdp2_episode_is_first_order(overrides, match, tiny_lm, tmp_path):
    from hf_immunize import MLACConfig
    from hf_immunize.methods.mlac.shared_episode import check_shared_episode

    kwargs = {"inner_steps": 2, "learn_inner_learning_rate": False, **overrides}
    args = MLACConfig(output_dir=str(tmp_path), use_cpu=True, **kwargs)
    if match is None:
        check_shared_episode(args, tiny_lm)
    else:
        with pytest.raises(ValueError, match=match):
            check_shared_episode(args, tiny_lm)


def test_mlac_fsdp2_adversary_cannot_adapt_frozen_weights(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model

    from hf_immunize import MLACConfig
    from hf_immunize.methods.mlac.shared_episode import check_shared_episode

    model = get_peft_model(tiny_lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    first_order = dict(output_dir=str(tmp_path), use_cpu=True, meta_gradient="first_order", inner_steps=2)
    args = MLACConfig(**first_order, learn_inner_learning_rate=False, adversary_params="all")
    with pytest.raises(ValueError, match="adapts frozen weights .*adversary_params='lora'"):
        check_shared_episode(args, model)
    args = MLACConfig(**first_order, learn_inner_learning_rate=False, adversary_params="lora")
    check_shared_episode(args, model)


def test_sharding_helpers_on_plain_tensors_are_local_operations():
    from hf_immunize.core.perturbation import global_norm
    from hf_immunize.core.sharding import (
        backward_into,
        is_sharded,
        local_tensors,
        reshard,
        sharded_norm,
        stashed_grads,
    )

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    params = list(model.parameters())
    assert not is_sharded(params)
    local = local_tensors(params)
    with torch.no_grad():
        local[0].add_(1.0)  # a local view shares the parameter's storage
    assert torch.equal(local[0], params[0].detach()) and not local[0].requires_grad
    assert sharded_norm(local, params) == pytest.approx(float(global_norm(params)), rel=1e-6)

    model(torch.ones(4, 3)).sum().backward()
    kept = [p.grad.clone() for p in params]
    with stashed_grads(params) as saved:
        assert all(p.grad is None for p in params) and all(torch.equal(s, k) for s, k in zip(saved, kept))
        grads = backward_into(model(torch.ones(4, 3)).sum(), params[:2], scale=2.0, clear=params[2:])
        assert all(p.grad is None for p in params)  # taken off and cleared: nothing left in .grad
        assert torch.allclose(grads[0], 2 * kept[0])
    assert all(torch.equal(p.grad, k) for p, k in zip(params, kept))  # the stashed gradient is back
    reshard(model)  # no FSDP unit: a no-op


# ---- on a GPU -----------------------------------------------------------------------------------------------------

_GPU_WRAPPER = """
import json, os, runpy, sys
method, out = sys.argv[1], sys.argv[2]
module = __import__("hf_immunize.commands." + method, fromlist=["finish_run"])
original = module.finish_run


def finish_and_record(trainer, *args, **kwargs):
    kinds = sorted({type(p).__name__ for p in trainer.model.parameters()})
    logs = [e for e in trainer.state.log_history if "loss" in e]
    record = {"fsdp2": bool(trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2), "parameter_types": kinds,
              "bf16": bool(trainer.args.bf16), "logs": logs}
    if trainer.is_world_process_zero():
        with open(os.path.join(out, method + ".json"), "w") as f:
            json.dump(record, f)
    return original(trainer, *args, **kwargs)


module.finish_run = finish_and_record
script = os.path.join(sys.argv[3], "scripts", method + ".py")
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""
# Per method: the tiny recipe, a few steps, on the GPU in bf16; MLAC in first order (all FSDP2 runs), its tiny BERT
# wrapped per layer (accelerate 1.15 cannot shard BERT's embeddings module and its word embedding both).
_GPU_FLAGS = {
    "booster": ["--toy_world", '{"seed": 0, "n_weapons": 8}', "--per_device_train_batch_size", "4"],
    "mlac": ["--inner_steps", "2", "--meta_gradient", "first_order", "--learn_inner_learning_rate", "false"],
    "unlearn": ["--reinforce_max_steps", "2", "--toy_world", '{"seed": 0, "n_passages": 20}'],
    "mistake_sft": ["--max_new_tokens", "8", "--toy_world", '{"seed": 0, "n_weapons": 8}'],
}


@pytest.mark.gpu
@pytest.mark.parametrize("method", sorted(_GPU_FLAGS))
def test_each_trainer_runs_under_accelerate_fsdp2_on_a_gpu_in_bf16(method, tmp_path):
    """`accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1` (one rank still shards: its
    parameters are DTensors, the code path of any world size) runs `scripts/<method>.py` in bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: FSDP2 in bf16 through accelerate's GPU path (the CPU proof is above)")

    script = tmp_path / "record.py"
    script.write_text(_GPU_WRAPPER)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_RECIPE)]
    launch += ["--num_processes", "1", "--main_process_port", str(PORTS["gpu"])]
    if method == "mlac":
        launch += ["--fsdp_transformer_layer_cls_to_wrap", "BertLayer"]
    argv = ["--config", str(REPO_ROOT / "recipes" / f"{method}_tiny.yaml"), "--output_dir", str(tmp_path / "run")]
    argv += ["--max_steps", "3", "--logging_steps", "1", "--use_cpu", "false", "--bf16", "true", *_GPU_FLAGS[method]]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(
        [*launch, str(script), method, str(tmp_path), str(REPO_ROOT), *argv], check=True, env=env, timeout=900
    )
    record = json.loads((tmp_path / f"{method}.json").read_text())
    assert record["fsdp2"] and record["parameter_types"] == ["DTensor"] and record["bf16"]
    assert record["logs"] and all(torch.isfinite(torch.tensor(e["loss"])) for e in record["logs"])
    assert (tmp_path / "run" / "model.safetensors").is_file()


BENCHMARK = REPO_ROOT / "benchmarks" / "fsdp_speed.py"
_BENCHMARK_ON_CPU = """
import runpy, sys
sys.path.insert(0, {tests!r})
import fsdp_cpu
fsdp_cpu.enable()
sys.argv = [{script!r}, "--dry_run", "--output", sys.argv[1]]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_gpu_benchmark_stops_with_a_reason_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run")
    import runpy

    main = runpy.run_path(str(BENCHMARK))["main"]
    assert main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_benchmark_dry_run_trains_every_arm_under_fsdp2_on_cpu(tmp_path):
    """The benchmark's code path (every arm built, sharded and stepped, the JSON written), not its numbers."""
    _warm_model_cache()
    script = tmp_path / "bench_on_cpu.py"
    script.write_text(_BENCHMARK_ON_CPU.format(tests=str(Path(__file__).parent), script=str(BENCHMARK)))
    output = tmp_path / "fsdp_speed.json"
    subprocess.run([*_launch(PORTS["benchmark"]), str(script), str(output)], check=True, env=_env(), timeout=600)
    result = json.loads(output.read_text())["fsdp2"]
    assert result["settings"]["dry_run"] and result["settings"]["world_size"] == 2
    assert sorted(result["arms"]) == sorted(runpy_arms())
    for arm, entry in result["arms"].items():
        assert entry["fsdp2"] and entry["parameter_types"] == ["DTensor"], arm
        assert entry["step_seconds"] > 0 and entry["step_vs_sft"] > 0, arm


def runpy_arms() -> tuple[str, ...]:
    import runpy

    return runpy.run_path(str(BENCHMARK))["ARMS"]
