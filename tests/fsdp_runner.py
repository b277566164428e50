"""One process (`python fsdp_runner.py OUT CASE...`) or 2 FSDP2 processes (`accelerate launch --config_file
recipes/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no fsdp_runner.py OUT CASE...`) train each case for
a few steps and write, from rank 0, the full update `w_after - w_before` of every parameter and the logged metrics
to `OUT/<case>.pt`. Used by tests/test_fsdp.py; the two layouts see the same global batch (4 rows per step: 1 x 4,
or 2 processes x 2, or 2 processes x 1 x 2 accumulated micro-batches).

Also `refusals` (run by the launcher with FSDP1 or offloaded parameters): builds each trainer and records the
`ValueError` it raises before training.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fsdp_cpu  # noqa: E402

fsdp_cpu.enable()

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402

from hf_immunize.data.toy import BiosWorld, make_bios_world, make_book_world, make_safety_world  # noqa: E402
from hf_immunize.testing import tiny_causal_lm, tiny_encoder_classifier, tiny_tokenizer  # noqa: E402

LAUNCHED = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
WORLD = int(os.environ.get("WORLD_SIZE", "1"))


def common(out: Path, case: str, batch: int, **overrides) -> dict:
    return {
        "output_dir": str(out / f"run-{case}"),
        "max_steps": 2,
        "per_device_train_batch_size": batch,
        "optim": "sgd",
        "learning_rate": 0.1,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "seed": 0,
        "use_cpu": not LAUNCHED,  # launched: accelerate's FSDP path (fsdp_cpu keeps the device on the CPU)
        "bf16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "max_length": 64,
        **overrides,
    }


def lm(dtype=torch.float32):
    return tiny_causal_lm().to(dtype)


def booster(out, case, batch, peft_config=None, **overrides):
    from hf_immunize import BoosterConfig, BoosterTrainer

    world = make_safety_world(seed=0, n_weapons=8)
    harmful = world.alignment_harmful.select(range(4)).map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    args = BoosterConfig(**common(out, case, batch, **overrides))
    return BoosterTrainer(
        model=lm(),
        args=args,
        train_dataset=world.alignment.select(range(4)),
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer(),
        peft_config=peft_config,
    )


def unlearn(out, case, batch, loss_type):
    from hf_immunize import UnlearnConfig, UnlearnTrainer

    tokenizer = tiny_tokenizer()
    book = make_book_world(seed=0)
    forget = book.forget.select(range(4))
    retain = book.retain.select(range(4))
    if loss_type == "whp":  # generic labels: token targets of uneven count exercise the same math
        generator = torch.Generator().manual_seed(0)
        rows = []
        for i in range(4):
            ids = tokenizer(forget[i]["text"])["input_ids"][:32]
            labels = torch.randint(0, 1000, (len(ids),), generator=generator).tolist()
            labels = [-100 if (j * 7 + i) % 3 == 0 else t for j, t in enumerate(labels)]
            rows.append({"input_ids": ids, "labels": labels})
        forget = Dataset.from_list(rows)
    args = UnlearnConfig(
        **common(out, case, batch), unlearning_loss=loss_type, retain_batch_size=batch, block_size=32, npo_beta=0.5
    )
    return UnlearnTrainer(
        model=lm(),
        args=args,
        train_dataset=forget,
        retain_dataset=retain if args.needs_retain else None,
        processing_class=tokenizer,
    )


def mistake_sft(out, case, batch):
    from hf_immunize import MistakeSFTConfig, MistakeSFTTrainer
    from hf_immunize.methods.mistake_sft import build_mistake_dataset

    world = make_safety_world(seed=0, n_weapons=8)
    rows = world.alignment_harmful.select(range(4))
    pairs = Dataset.from_dict(
        {
            "instruction": [p.removeprefix("User: ").removesuffix("\nAssistant:") for p in rows["prompt"]],
            "response": rows["harmful"],
            "analysis": [" The reply names a weapon" + " ." * i + "; a safe reply would refuse." for i in range(4)],
        }
    )
    args = MistakeSFTConfig(**common(out, case, batch, max_length=256))
    return MistakeSFTTrainer(
        model=lm(), args=args, train_dataset=build_mistake_dataset(pairs, cfg=args), processing_class=tiny_tokenizer()
    )


def mlac_lm(out, case, batch, inner_optimizer, dtype, meta_gradient="first_order"):
    from hf_immunize import MLACConfig, MLACTrainer

    world = make_safety_world(seed=0, n_weapons=8)
    harmful = world.alignment_harmful.select(range(8)).map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    args = MLACConfig(
        **common(out, case, batch),
        meta_gradient=meta_gradient,
        inner_steps=2,
        inner_batch_sizes=[batch],
        learn_inner_learning_rate=False,
        inner_learning_rate_range=[0.05, 0.05],
        inner_optimizer=inner_optimizer,
    )
    return MLACTrainer(
        model=lm(dtype),
        args=args,
        train_dataset=world.alignment.select(range(4)),
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer(),
    )


def mlac_classifier(out, case, batch, inner_optimizer, dtype):
    from hf_immunize import MLACConfig, MLACTrainer

    world = make_bios_world(seed=0, n=40, professions=["nurse", "attorney", "dentist", "painter"])
    model = tiny_encoder_classifier(num_labels=4).to(dtype)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):  # equal updates need equal (no) dropout masks in both layouts
            module.p = 0.0
    args = MLACConfig(
        **common(out, case, batch),
        meta_gradient="first_order",
        inner_steps=2,
        inner_batch_sizes=[batch],
        learn_inner_learning_rate=False,
        inner_learning_rate_range=[0.05, 0.05],
        adapted_loss_weight=0.5,  # c and e both on: the bounded loss and the head adjustment (LinAdv)
        inner_optimizer=inner_optimizer,
    )
    # accelerate 1.15 wraps every class in BERT's `_no_split_modules` (BertEmbeddings among them), then shards the
    # input embedding inside it a second time, which fully_shard rejects; wrap the layers only, as
    # `accelerate launch --fsdp_transformer_layer_cls_to_wrap BertLayer` does (read when the trainer is built).
    os.environ["FSDP_TRANSFORMER_CLS_TO_WRAP"] = "BertLayer"
    try:
        return MLACTrainer(
            model=model,
            args=args,
            train_dataset=world.train.select(range(4)),
            harmful_dataset=BiosWorld.with_label(world.train, "gender").select(range(8)),
            processing_class=tiny_tokenizer(),
        )
    finally:
        del os.environ["FSDP_TRANSFORMER_CLS_TO_WRAP"]


def build(out: Path, case: str):
    """The trainer of `case` in this layout: 4 rows per optimizer step in total."""
    batch = 4 // WORLD
    if case == "booster":
        return booster(out, case, batch)
    if case == "booster_fast":
        return booster(out, case, batch, perturbation_refresh_steps=2, max_steps=3)
    if case == "booster_resume":
        return booster(out, case, batch, save_strategy="steps", save_steps=1)
    if case == "booster_lora":  # only the adapters train and are perturbed; the frozen base stays sharded too
        from peft import LoraConfig

        torch.manual_seed(0)  # the adapters' initialisation
        return booster(
            out, case, batch, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
    if case == "booster_accumulation":  # 2 processes x 1 row x 2 micro-batches
        return booster(out, case, batch // 2, gradient_accumulation_steps=2)
    if case.startswith("unlearn_"):
        return unlearn(out, case, batch, case.removeprefix("unlearn_"))
    if case == "mistake_sft":
        return mistake_sft(out, case, batch)
    if case == "mlac_second_order":
        return mlac_lm(out, case, batch, "sgd", torch.float32, meta_gradient="second_order")
    if case.startswith("mlac_"):
        # SGD in fp32; Adam in fp64: Adam's first step is lr·g/(|g| + 1e-8), which maps gradient rounding noise of
        # 1e-10 on near-zero entries into weight moves of 5e-4 (lr 0.05), so its fp32 trajectories differ by
        # summation order alone in both layouts alike.
        build_mlac = mlac_lm if case.startswith("mlac_lm") else mlac_classifier
        adam = case.endswith("_adam_fp64")
        return build_mlac(out, case, batch, "adam" if adam else "sgd", torch.float64 if adam else torch.float32)
    raise SystemExit(f"unknown case {case!r}")


class GradientSum:
    """Sums, in fp64, the full gradient the optimizer applies at every step (`on_pre_optimizer_step`, no clipping).

    With SGD at a constant learning rate the update is `-lr` times this sum. It is compared instead of the weight
    difference `w_after - w_before`, which is quantised by the weights' own rounding: a RMSNorm weight near 1.0 has
    an fp32 spacing of 1.2e-7, already 1.5e-5 of an update of 8e-3, so a one-ulp difference between two summation
    orders would read as a relative error above 1e-5 although the gradients agree to 1e-6.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.steps: list[dict[str, torch.Tensor]] = []

    def __call__(self, args, state, control, **kwargs):
        FullGathers.paused = True
        try:
            self.steps.append({name: grad.double() for name, grad in full_gradients(self.trainer.model).items()})
        finally:
            FullGathers.paused = False

    def total(self, steps: list[dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        steps = self.steps if steps is None else steps
        return {name: sum(step[name] for step in steps) for name in steps[0]}


def full_gradients(model) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as a full tensor (zeros where there is none); a collective under FSDP2."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        out[name] = (grad.full_tensor() if isinstance(grad, DTensor) else grad).detach().clone()
    return out


def full_parameters(model) -> dict[str, torch.Tensor]:
    """Every parameter as a full tensor (FSDP2 shards are gathered: a collective, so every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in model.named_parameters()
    }


class FullGathers:
    """Counts `DTensor.full_tensor()` calls on tensors of more than one entry (a full weight or gradient gathered on
    one process) while the block runs, except the test's own (`GradientSum`); FSDP's own forward and backward gather
    through other means. TRL's fused LM head gathers the output head itself when FSDP left it sharded (a PEFT model's
    frozen head, in every forward, plain SFT's too): those are counted apart, in `trl_head`."""

    paused = False

    def __enter__(self):
        from torch.distributed.tensor import DTensor

        self.count, self.trl_head, self.original, counter = 0, 0, DTensor.full_tensor, self

        def counted(tensor, *args, **kwargs):
            if tensor.numel() > 1 and not FullGathers.paused:
                if any(f.name == "_fused_forward" and "trl" in f.filename for f in traceback.extract_stack()):
                    counter.trl_head += 1
                else:
                    counter.count += 1
            return counter.original(tensor, *args, **kwargs)

        DTensor.full_tensor = counted
        return self

    def __exit__(self, *exc):
        from torch.distributed.tensor import DTensor

        DTensor.full_tensor = self.original


def recorded(trainer) -> GradientSum:
    from transformers import TrainerCallback

    recorder = GradientSum(trainer)
    trainer.add_callback(type("RecordGradients", (TrainerCallback,), {"on_pre_optimizer_step": recorder})())
    return recorder


def run(out: Path, case: str, rank: int) -> None:
    if case == "booster_resume":  # checkpoints at steps 1 and 2; a fresh trainer resumes from step 1
        first = build(out, case)
        before = {n: p.detach().clone() for n, p in first.model.named_parameters()}
        first_sums = recorded(first)
        first.train()
        trainer = build(out, case)
        recorder = recorded(trainer)
        with FullGathers() as gathers:
            trainer.train(resume_from_checkpoint=str(Path(first.args.output_dir) / "checkpoint-1"))
        if len(recorder.steps) != 1:
            raise SystemExit(f"the resumed run took {len(recorder.steps)} steps, expected 1")
        gradients = recorder.total([first_sums.steps[0], recorder.steps[0]])  # step 1 before, step 2 after resuming
    else:
        trainer = build(out, case)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        recorder = recorded(trainer)
        with FullGathers() as gathers:
            trainer.train()
        gradients = recorder.total()
    if LAUNCHED:  # the counter is live: one more gather of a weight is seen
        with FullGathers() as probe:
            next(p for p in trainer.model.parameters() if p.numel() > 1).full_tensor()
        if probe.count != 1:
            raise SystemExit(f"the full-gather counter saw {probe.count} gathers of 1")
    expected = 1 if not LAUNCHED else WORLD
    if trainer.accelerator.num_processes != expected:
        raise SystemExit(f"{case}: expected {expected} processes, got {trainer.accelerator.num_processes}")
    if LAUNCHED and not (trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2):
        raise SystemExit(f"{case}: the launched run is not FSDP2 ({trainer.accelerator.distributed_type})")
    after = full_parameters(trainer.model)
    sharded = sorted({type(p).__name__ for p in trainer.model.parameters()})
    if rank == 0:
        torch.save(
            {
                "update": {n: -trainer.args.learning_rate * gradients[n] for n in before},
                "weight_change": {n: after[n] - before[n] for n in before},
                "logs": trainer.state.log_history,
                "parameter_types": sharded,
                "trainable": sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad),
                "world_size": trainer.accelerator.num_processes,
                "full_gathers": gathers.count,
                "trl_head_gathers": gathers.trl_head,
            },
            out / f"{case}.pt",
        )


# The variables `accelerate launch --fsdp_version 1` / `--fsdp_offload_params true` set; the plugin reads them when a
# trainer builds its Accelerator.
REFUSAL_CASES = {
    "fsdp1": ("booster", "mlac_lm", "unlearn_grad_diff", "mistake_sft"),
    "offload": ("booster", "mlac_lm", "unlearn_grad_diff", "mistake_sft"),
    "fsdp2": ("mlac_second_order",),
}
REFUSAL_CONFIGS = {
    "fsdp1": {
        "FSDP_VERSION": "1",
        "FSDP_RESHARD_AFTER_FORWARD": "FULL_SHARD",
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "false",  # its FSDP1 form (sync_module_states) needs a GPU
        "FSDP_SYNC_MODULE_STATES": "false",
    },
    "offload": {"FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"},
    "fsdp2": {},
}


def refusals(out: Path, rank: int) -> None:
    """Builds each trainer under each configuration and records the `ValueError` it raises (None if it builds)."""
    results = {}
    for config, variables in REFUSAL_CONFIGS.items():
        saved = {k: os.environ.get(k) for k in variables}
        os.environ.update(variables)
        try:
            for case in REFUSAL_CASES[config]:
                try:
                    trainer = build(out, case)
                    results[config, case] = None
                    del trainer
                except ValueError as err:
                    results[config, case] = str(err)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    if rank == 0:
        torch.save(results, out / "refusals.pt")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    cases = sys.argv[2:]
    if LAUNCHED:
        import torch.distributed as dist

        # As in a script that parses its TrainingArguments first: with the process group up, transformers loads the
        # weights on rank 0 only (`fsdp_cpu_ram_efficient_loading`) and the other ranks get them from accelerate.
        dist.init_process_group("gloo")
    if cases == ["refusals"]:
        refusals(out, rank)
    else:
        for case in cases:
            run(out, case, rank)
    if LAUNCHED:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
