"""2-process gloo DDP against one process at the same global batch, for the Unlearn and MistakeSFT trainers (Booster's
own test is in test_booster.py; MLAC, whose adversary episodes are per process, is checked for rank agreement in
test_commands.py). Tolerance: relative difference of the update <= 1e-5 in float32 (summation order differs)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import os, sys
import torch
torch.set_num_threads(1)
from datasets import Dataset
from hf_immunize.data.toy import make_book_world, make_safety_world
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

method, out, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
common = dict(
    output_dir=os.path.join(os.path.dirname(out), "run-" + method + str(batch_size)), max_steps=2,
    per_device_train_batch_size=batch_size, optim="sgd", learning_rate=0.1, max_grad_norm=0.0, seed=0,
    use_cpu=True, bf16=False, activation_checkpointing=False, report_to="none", save_strategy="no",
    logging_steps=1, disable_tqdm=True, ddp_find_unused_parameters=False, max_length=64,
)
tokenizer = tiny_tokenizer()
if method.startswith("unlearn"):
    from hf_immunize import UnlearnConfig, UnlearnTrainer

    loss_type = method.split("-")[1]
    book = make_book_world(seed=0)
    forget = book.forget.select(range(8))
    retain = book.retain.select(range(8))
    if loss_type == "whp":  # generic labels: any token targets of uneven count exercise the same math
        generator = torch.Generator().manual_seed(0)
        rows = []
        for i in range(8):
            ids = tokenizer(forget[i]["text"])["input_ids"][:32]
            labels = torch.randint(0, 1000, (len(ids),), generator=generator).tolist()
            labels = [-100 if (j * 7 + i) % 3 == 0 else t for j, t in enumerate(labels)]
            rows.append({"input_ids": ids, "labels": labels})
        forget = Dataset.from_list(rows)
    args = UnlearnConfig(**common, unlearning_loss=loss_type, retain_batch_size=batch_size, block_size=32)
    trainer = UnlearnTrainer(
        model=tiny_causal_lm(), args=args, train_dataset=forget,
        retain_dataset=retain if args.needs_retain else None, processing_class=tokenizer,
    )
else:
    from hf_immunize import MistakeSFTConfig, MistakeSFTTrainer
    from hf_immunize.methods.mistake_sft import build_mistake_dataset

    world = make_safety_world(seed=0, n_weapons=8)
    rows = world.alignment_harmful.select(range(8))
    pairs = Dataset.from_dict({
        "instruction": [p.removeprefix("User: ").removesuffix("\\nAssistant:") for p in rows["prompt"]],
        "response": rows["harmful"],
        "analysis": [" The reply names a weapon" + " ." * i + "; a safe reply would refuse." for i in range(8)],
    })
    args = MistakeSFTConfig(**{**common, "max_length": 256})  # the analysis prompt quotes the whole bad answer
    trainer = MistakeSFTTrainer(
        model=tiny_causal_lm(), args=args, train_dataset=build_mistake_dataset(pairs, cfg=args),
        processing_class=tokenizer,
    )
before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
trainer.train()
if trainer.accelerator.num_processes != 4 // batch_size:
    raise SystemExit(f"expected {4 // batch_size} processes, got {trainer.accelerator.num_processes}")
if trainer.is_world_process_zero():
    torch.save({n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}, out)
trainer.end()
"""


# A fixed port per case: `--master_port 0` can leave the two ranks waiting for each other.
PORTS = {"unlearn-whp": 29541, "unlearn-grad_diff": 29542, "mistake_sft": 29543}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(PORTS))
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(method, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    subprocess.run([sys.executable, str(script), method, str(single), "4"], check=True, env=env, timeout=600)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(PORTS[method]),
    ]
    subprocess.run([*torchrun, str(script), method, str(ddp), "2"], check=True, env=env, timeout=600)
    a, b = torch.load(single), torch.load(ddp)
    moved = [name for name in a if a[name].norm() > 0]
    assert moved, "the run did not train"
    for name in a:
        rel = (a[name] - b[name]).norm() / a[name].norm().clamp(min=1e-12)
        assert rel <= 1e-5, (name, rel.item())
