"""Step time and peak GPU memory of every trainer under FSDP2, against plain `SFTTrainer` in the same launch.

Run on a CUDA machine, through accelerate's FSDP2 path (the recipe's `mixed_precision: bf16`):

    accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 1 benchmarks/fsdp_speed.py
    accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes 8 benchmarks/fsdp_speed.py \\
        --hidden_size 2048 --layers 16

Same model for every arm (a config-built Llama, no download: hidden 1024, 8 layers, ~0.1B parameters by default),
same toy data (the safety and book worlds), same per-device batch, bf16, full-parameter training, one model per arm
built from the same seed. Arms, in this order within one launch: `sft`, `booster` (exact), `booster_fast` (k=2),
`mlac` (first order, causal LM, K=2), `unlearn_grad_diff`, `unlearn_npo`, `mistake_sft`.

- step time: mean wall time of the timed optimizer steps (after `--warmup` steps), with `torch.cuda.synchronize()`
  at both ends of each step; the ratio to the `sft` arm.
- peak memory: `torch.cuda.max_memory_allocated()` over the timed steps (reset before them), the maximum over the
  processes; the ratio to the `sft` arm.

Writes `fsdp2` (one entry per arm and the settings: GPU name, world size, model size, versions) into
`benchmarks/results/fsdp_speed.json` (rank 0). Without a CUDA device it stops with exit status 2: the sharded math is
proven on CPU by tests/test_fsdp.py, the cost needs a GPU. `--dry_run` runs two tiny steps per arm wherever it is
(CPU included, one process or launched) to check that every arm builds and trains, and writes nothing unless
`--output` is given.
"""

from __future__ import annotations

from hf_immunize.utils import set_offline_env  # before any HF import

set_offline_env(override=False)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fsdp_speed.json"
ARMS = ("sft", "booster", "booster_fast", "mlac", "unlearn_grad_diff", "unlearn_npo", "mistake_sft")


class StepClock(TrainerCallback):
    """Wall time of each optimizer step (device synchronised at both ends) and the peak memory after `warmup` steps."""

    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.cuda = warmup, cuda
        self.seconds: list[float] = []
        self.peak_bytes = 0
        self._start = 0.0

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        if self.cuda and state.global_step == self.warmup:
            torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if state.global_step > self.warmup:
            self.seconds.append(time.perf_counter() - self._start)
            if self.cuda:
                self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden_size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8, help="per device")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--output", type=Path, default=None, help=f"default: {RESULTS} (not written by --dry_run)")
    parser.add_argument("--dry_run", action="store_true", help="two tiny steps per arm on any device; no result")
    return parser


def build_model(args, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def run_args(args, arm: str, cuda: bool, out: Path) -> dict:
    return {
        "output_dir": str(out / arm),
        "max_steps": args.warmup + args.steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-5,
        "lr_scheduler_type": "constant",
        "max_length": 128,
        "seed": 0,
        "bf16": cuda,
        "use_cpu": not cuda and "LOCAL_RANK" not in os.environ,
        "activation_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1000,
        "disable_tqdm": True,
    }


def build_trainer(args, arm: str, tokenizer, cuda: bool, out: Path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

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
    from hf_immunize.data.toy import make_book_world, make_safety_world
    from hf_immunize.methods.mistake_sft import build_mistake_dataset

    world = make_safety_world(seed=0, n_weapons=80)
    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    common = run_args(args, arm, cuda, out)
    model = build_model(args, tokenizer)
    if arm == "sft":
        return SFTTrainer(
            model=model, args=SFTConfig(**common), train_dataset=world.alignment, processing_class=tokenizer
        )
    if arm.startswith("booster"):
        refresh = 2 if arm == "booster_fast" else 1
        config = BoosterConfig(**common, perturbation_refresh_steps=refresh)
        return BoosterTrainer(
            model=model,
            args=config,
            train_dataset=world.alignment,
            harmful_dataset=harmful,
            processing_class=tokenizer,
        )
    if arm == "mlac":
        config = MLACConfig(
            **common,
            meta_gradient="first_order",
            inner_steps=2,
            inner_batch_sizes=[args.batch_size],
            learn_inner_learning_rate=False,
        )
        return MLACTrainer(
            model=model,
            args=config,
            train_dataset=world.alignment,
            harmful_dataset=harmful,
            processing_class=tokenizer,
        )
    if arm.startswith("unlearn"):
        book = make_book_world(seed=0)
        config = UnlearnConfig(**common, unlearning_loss=arm.removeprefix("unlearn_"))
        return UnlearnTrainer(
            model=model, args=config, train_dataset=book.forget, retain_dataset=book.retain, processing_class=tokenizer
        )
    rows = world.alignment_harmful
    pairs = Dataset.from_dict(
        {
            "instruction": [p.removeprefix("User: ").removesuffix("\nAssistant:") for p in rows["prompt"]],
            "response": rows["harmful"],
            "analysis": [" The reply names a weapon; a safe reply would refuse."] * len(rows),
        }
    )
    config = MistakeSFTConfig(**{**common, "max_length": 256})
    return MistakeSFTTrainer(
        model=model, args=config, train_dataset=build_mistake_dataset(pairs, cfg=config), processing_class=tokenizer
    )


def measure(args, arm: str, tokenizer, cuda: bool, out: Path) -> dict:
    trainer = build_trainer(args, arm, tokenizer, cuda, out)
    clock = StepClock(args.warmup, cuda)
    trainer.add_callback(clock)
    trainer.train()
    sharded = sorted({type(p).__name__ for p in trainer.model.parameters()})
    peak = torch.tensor(float(clock.peak_bytes))
    if trainer.accelerator.num_processes > 1:
        peak = trainer.accelerator.reduce(peak.to(trainer.args.device), reduction="max").cpu()
    result = {
        "trainer": type(trainer).__name__,
        "fsdp2": bool(trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2),
        "parameter_types": sharded,
        "step_seconds": sum(clock.seconds) / max(len(clock.seconds), 1),
        "peak_memory_gib": float(peak) / 2**30,
        "world_size": trainer.accelerator.num_processes,
    }
    del trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "fsdp_speed.py needs a CUDA device (FSDP2 in bf16 through accelerate's GPU path); the sharded math is "
            "proven on CPU by tests/test_fsdp.py. Use --dry_run to check that every arm builds and trains.",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        args.hidden_size, args.layers, args.heads, args.batch_size = 64, 2, 4, 2
        args.warmup, args.steps = 1, 1
    import tempfile

    from hf_immunize.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    rank = int(os.environ.get("RANK", "0"))
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            arms[arm] = measure(args, arm, tokenizer, cuda, Path(tmp))
            if rank == 0:
                print(arm, json.dumps(arms[arm]), flush=True)
    if "sft" in arms:
        base = arms["sft"]
        for entry in arms.values():
            entry["step_vs_sft"] = entry["step_seconds"] / base["step_seconds"] if base["step_seconds"] else None
            entry["peak_memory_vs_sft"] = (
                entry["peak_memory_gib"] / base["peak_memory_gib"] if base["peak_memory_gib"] else None
            )
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    output = args.output if args.output is not None or args.dry_run else RESULTS
    if rank == 0 and output is not None:
        import accelerate
        import transformers
        import trl

        parameters = sum(p.numel() for p in build_model(args, tokenizer).parameters())
        settings = {
            "command": " ".join(["accelerate launch ...", "benchmarks/fsdp_speed.py", *(argv or sys.argv[1:])]),
            "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            "world_size": next(iter(arms.values()))["world_size"] if arms else None,
            "model": {"hidden_size": args.hidden_size, "layers": args.layers, "parameters": parameters},
            "batch_size_per_device": args.batch_size,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "dry_run": args.dry_run,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "trl": trl.__version__,
                "accelerate": accelerate.__version__,
            },
        }
        existing = json.loads(output.read_text()) if output.is_file() else {}
        existing["fsdp2"] = {"settings": settings, "arms": arms}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(existing, indent=2) + "\n")
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
