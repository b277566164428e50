"""MLAC's cost per outer step against one plain `Trainer` step, for K in {0, 4, 16} and each meta-gradient mode.

Same model (a config-built BERT-tiny-shaped classifier: hidden 128, 2 layers, 2 heads, eager attention, fp32, full
fine-tuning), same desired batch (20 bios of the toy world, the release's outer batch), same outer optimizer. MLAC's
episode uses a fixed inner batch of 24 (the middle of the release's {12, 24, 48}, fixed so that the runs compare), a
sampled inner lr (so that first order is allowed) and the main run's weights (a = 1, e = 1: the head-adjusted loss).
Modes: `second_order`, `first_order` and `truncated` with k = min(2, K) differentiated steps.

- step time: mean wall time of the optimizer steps after warm-up (callback from `on_step_begin` to `on_step_end`);
  each configuration's ratio to the plain run of the same repeat, median over repeats (the runs take turns within a
  repeat, so drift on a shared machine hits them alike);
- peak memory: live tensor bytes at the start of a step plus the peak of what the step allocates (CPU allocator
  events of `torch.profiler`).

Writes `mlac_step_vs_plain` and `mlac_peak_mem_vs_plain` (objects keyed by mode, then K) and the details under
`mlac_speed` into `benchmarks/results/speed.json`, keeping every other key.

    python benchmarks/mlac_speed.py                 # ~6 minutes on 2 CPU cores
    python benchmarks/mlac_speed.py --repeats 1 --steps 2 --output /tmp/speed.json
"""

from __future__ import annotations

from hf_immunize.utils import set_offline_env

set_offline_env(override=False)  # before any Hugging Face library is imported

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from speed_common import StepMemory, StepTimer, merge_into  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "speed.json"
MODES = ("second_order", "first_order", "truncated")
# max/min of first-order peak memory over the K > 0 runs must stay below this. K = 0 is left out: it has no inner
# step at all, so no inner optimizer state or inner batch, a constant that K > 0 pays once, whatever K is.
FIRST_ORDER_FLAT = 1.25


def _configs(ks: list[int]) -> list[tuple[str, int]]:
    return [("plain", 0)] + [(mode, k) for mode in MODES for k in ks]


def _build(kind: str, k: int, settings, model_dir: Path, output_dir: str, train, harmful, tokenizer):
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from hf_immunize import MLACConfig, MLACTrainer
    from hf_immunize.data.tokenize import PadCollator

    common = dict(
        output_dir=output_dir,
        max_steps=settings.warmup + settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_grad_norm=10.0,
        seed=settings.seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager")
    if kind == "plain":
        tokenized = train.map(lambda r: tokenizer(r["text"], truncation=True, max_length=128), batched=True)
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=tokenized.select_columns(["input_ids", "attention_mask", "label"]),
            data_collator=PadCollator(tokenizer.pad_token_id),
        )
    else:
        args = MLACConfig(
            **common,
            inner_steps=k,
            meta_gradient=kind,
            truncation_steps=min(settings.truncation_steps, k) if kind == "truncated" else None,
            inner_batch_sizes=[settings.inner_batch_size],
            learn_inner_learning_rate=False,
            max_length=128,
        )
        trainer = MLACTrainer(
            model=model, args=args, train_dataset=train, harmful_dataset=harmful, processing_class=tokenizer
        )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def run(settings) -> dict:
    from hf_immunize.data.toy import BiosWorld, make_bios_world
    from hf_immunize.testing import tiny_encoder_classifier, tiny_tokenizer

    torch.set_num_threads(settings.threads)
    world = make_bios_world(seed=settings.seed, n=1000, scrub_pronouns=True)
    train, harmful = world.train, BiosWorld.with_label(world.train, "gender")
    tokenizer = tiny_tokenizer()
    configs = _configs(settings.ks)
    per_step: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model = tiny_encoder_classifier(
            num_labels=len(world.professions), hidden_size=settings.hidden_size, num_layers=2, num_heads=2,
            seed=settings.seed, save_dir=model_dir,
        )  # fmt: skip
        n_params = sum(p.numel() for p in model.parameters())
        del model
        for repeat in range(settings.repeats):
            shift = repeat % len(configs)
            for kind, k in configs[shift:] + configs[:shift]:
                trainer = _build(kind, k, settings, model_dir, tmp, train, harmful, tokenizer)
                timer = StepTimer()
                trainer.add_callback(timer)
                trainer.train()
                per_step[(kind, k)].append(statistics.fmean(timer.wall[settings.warmup :]))
                print(f"repeat {repeat} {kind:>12} K={k:<3} {1000 * per_step[(kind, k)][-1]:8.1f} ms/step", flush=True)
                del trainer
                gc.collect()
        peak = {}
        for kind, k in configs:  # one trainer alive at a time: the live-tensor baseline is its own
            trainer = _build(kind, k, settings, model_dir, tmp, train, harmful, tokenizer)
            meter = StepMemory(step=1)  # the second step: optimizer state exists
            trainer.add_callback(meter)
            trainer.train()
            peak[(kind, k)] = meter.peak_bytes
            print(f"memory {kind:>12} K={k:<3} {peak[(kind, k)] / 2**20:8.1f} MiB", flush=True)
            del trainer
            gc.collect()

    plain_times = per_step[("plain", 0)]

    def by_mode(fn) -> dict:
        return {mode: {str(k): fn(mode, k) for k in settings.ks} for mode in MODES}

    step_ratio = by_mode(
        lambda m, k: round(statistics.median(t / p for t, p in zip(per_step[(m, k)], plain_times)), 2)
    )
    memory_ratio = by_mode(lambda m, k: round(peak[(m, k)] / peak[("plain", 0)], 2))
    first = [peak[("first_order", k)] for k in settings.ks if k > 0] or [peak[("first_order", 0)]]
    return {
        "mlac_step_vs_plain": step_ratio,
        "mlac_peak_mem_vs_plain": memory_ratio,
        "mlac_speed": {
            "first_order_memory_flat": max(first) / min(first) <= FIRST_ORDER_FLAT,
            "first_order_memory_max_over_min_k_positive": round(max(first) / min(first), 3),
            "seconds_per_step_median": {
                "plain": round(statistics.median(plain_times), 4),
                **by_mode(lambda m, k: round(statistics.median(per_step[(m, k)]), 4)),
            },
            "peak_memory_mib": {
                "plain": round(peak[("plain", 0)] / 2**20, 2),
                **by_mode(lambda m, k: round(peak[(m, k)] / 2**20, 2)),
            },
            "setup": {
                "model": f"BERT-style classifier, hidden {settings.hidden_size}, 2 layers, 2 heads, eager attention",
                "parameters": n_params,
                "precision": "fp32",
                "outer batch": settings.batch_size,
                "inner batch": settings.inner_batch_size,
                "truncated k": f"min({settings.truncation_steps}, K)",
                "inner lr": "sampled log-uniform [1e-4, 1e-2] (learned lr would refuse first order)",
                "weights": "a=1, c=0, d=0, e=1 (paper main run)",
                "data": "bios toy world (1000 bios, pronouns scrubbed), max_length 128",
                "steps_timed": settings.steps,
                "warmup_steps": settings.warmup,
                "repeats": settings.repeats,
                "threads": settings.threads,
                "machine": platform.machine(),
                "torch": torch.__version__,
            },
            "command": "python benchmarks/mlac_speed.py",
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--inner-batch-size", type=int, default=24)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--truncation-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    settings = parser.parse_args(argv)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    results = run(settings)
    merge_into(settings.output, results)
    print(json.dumps({k: v for k, v in results.items() if k != "mlac_speed"}, indent=2))
    print(f"first-order memory flat in K: {results['mlac_speed']['first_order_memory_flat']}")
    print(f"written to {settings.output}")
    return results


if __name__ == "__main__":
    main()
