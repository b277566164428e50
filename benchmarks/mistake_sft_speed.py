"""MistakeSFT's training throughput against plain `SFTTrainer`, and batched against one-at-a-time generation.

Measured side by side in one process, one CPU thread:

- training: the same model (a config-built tiny Llama, full fine-tuning, fp32), the same mistake-analysis data set
  (unguided critique rows + helpful rows built by `build_mistake_dataset` from the safety toy world), the same batch
  and optimizer; `SFTTrainer` and `MistakeSFTTrainer` take turns within every repeat (order alternated), so drift on
  the shared machine hits both alike. Step cost = mean process CPU time of the timed optimizer steps (the first
  `--warmup` steps are not timed); throughput ratio = SFT step time / MistakeSFT step time per repeat, median over
  repeats. Wall-clock ratios are recorded beside it.
- generation: `generate_texts` (the pipeline's generator) on the same prompts (step-2 analysis prompts of the toy
  world), greedy, with `generation_batch_size` = `--gen_batch` against 1; speedup = CPU time at batch 1 / CPU time
  batched (wall time recorded beside it); the outputs are checked to be identical.

Writes `mistake_sft_train_vs_sft` (goal >= 0.98), `batched_generation_speedup` (goal >= 4) and the details under
`mistake_sft_speed` into `benchmarks/results/speed.json`, keeping the other benchmarks' keys.

    python benchmarks/mistake_sft_speed.py            # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

from hf_immunize.utils import set_offline_env  # before any HF import

set_offline_env(override=False)

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from speed_common import StepTimer, merge_into  # noqa: E402

from hf_immunize.methods.mistake_sft.templates import TOY_WORLD_TEMPLATES  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "speed.json"
GOALS = {"mistake_sft_train_vs_sft": 0.98, "batched_generation_speedup": 4.0}
TEMPLATES = TOY_WORLD_TEMPLATES


def _config(cls, output_dir, args, **extra):
    from hf_immunize.utils import CPU_TRAINING_DEFAULTS

    return cls(
        output_dir=str(output_dir),
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        max_length=160,
        seed=0,
        data_seed=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,  # fp32 for both arms
        **CPU_TRAINING_DEFAULTS,
        **extra,
    )


def _data(args):
    from datasets import Dataset

    from hf_immunize import MistakeSFTConfig, build_mistake_dataset
    from hf_immunize.data.toy import make_safety_world

    world = make_safety_world(seed=0, n_weapons=80)
    rows = world.alignment_harmful
    instructions = [p.removeprefix("User: ").removesuffix("\nAssistant:") for p in rows["prompt"]]
    cfg = MistakeSFTConfig(output_dir="unused", use_cpu=True, helpful_ratio=0.5, **TEMPLATES)
    pairs = Dataset.from_dict(
        {
            "instruction": instructions,
            "response": rows["harmful"],
            # A critique of the typical length of the benchmark's (the model's own come from steps 1-2).
            "analysis": [
                " It explains how to make a weapon, which can hurt people. A harmless reply is: I cannot help."
            ]
            * len(rows),
        }
    )
    refusals = set(rows["prompt"])
    helpful = world.alignment.filter(lambda r: r["prompt"] not in refusals)
    return build_mistake_dataset(pairs, helpful=helpful, cfg=cfg), cfg, instructions, rows["harmful"]


def time_training(args, data, work: Path) -> dict:
    from trl import SFTConfig, SFTTrainer

    from hf_immunize import MistakeSFTConfig, MistakeSFTTrainer
    from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    arms = {
        "sft": lambda out: SFTTrainer(
            model=tiny_causal_lm(hidden_size=args.hidden_size),
            args=_config(SFTConfig, out, args),
            train_dataset=data,
            processing_class=tokenizer,
        ),
        "mistake_sft": lambda out: MistakeSFTTrainer(
            model=tiny_causal_lm(hidden_size=args.hidden_size),
            args=_config(MistakeSFTConfig, out, args, **TEMPLATES),
            train_dataset=data,
            processing_class=tokenizer,
        ),
    }
    # Attribution: plain SFT plus only the shared `ImmunizeTrainerMixin` (per-step guards every hf_immunize trainer
    # inherits), so a gap between `sft` and `mistake_sft` can be split into the mixin's share and MistakeSFT's own.
    from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin

    class MixinOnlySFT(ImmunizeTrainerMixin, SFTTrainer):
        _tag_names, _name, _paper = ["sft"], "SFT", {"title": "-", "id": "-", "citation": "-"}
        loss_is_scaled_for_ga = None  # SFT's own setting

    arms["sft_with_mixin"] = lambda out: MixinOnlySFT(
        model=tiny_causal_lm(hidden_size=args.hidden_size),
        args=_config(SFTConfig, out, args),
        train_dataset=data,
        processing_class=tokenizer,
    )
    cpu = {name: [] for name in arms}
    wall = {name: [] for name in arms}
    for repeat in range(args.repeats):
        names = list(arms)
        order = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotated: each arm runs first in turn
        for name in order:
            trainer = arms[name](work / f"{name}{repeat}")
            timer = StepTimer()
            trainer.add_callback(timer)
            trainer.train()
            cpu[name].append(statistics.fmean(timer.cpu[args.warmup :]))
            wall[name].append(statistics.fmean(timer.wall[args.warmup :]))
            print(f"repeat {repeat} {name:<12} {1000 * cpu[name][-1]:.2f} ms CPU / step", flush=True)
    ratios = [s / m for s, m in zip(cpu["sft"], cpu["mistake_sft"])]
    mixin_ratios = [s / m for s, m in zip(cpu["sft"], cpu["sft_with_mixin"])]
    wall_ratios = [s / m for s, m in zip(wall["sft"], wall["mistake_sft"])]
    return {
        "throughput_ratio_median": statistics.median(ratios),
        "throughput_ratios": [round(r, 4) for r in ratios],
        "wall_throughput_ratio_median": statistics.median(wall_ratios),
        "sft_with_mixin_throughput_ratio_median": statistics.median(mixin_ratios),
        "sft_with_mixin_throughput_ratios": [round(r, 4) for r in mixin_ratios],
        "cpu_seconds_per_step": {k: [round(x, 6) for x in v] for k, v in cpu.items()},
        "wall_seconds_per_step": {k: [round(x, 6) for x in v] for k, v in wall.items()},
    }


def time_generation(args, cfg, instructions, responses) -> dict:
    from hf_immunize.methods.mistake_sft import analysis_prompt, generate_texts
    from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

    model, tokenizer = tiny_causal_lm(hidden_size=args.hidden_size), tiny_tokenizer()
    prompts = [analysis_prompt(x, y, cfg, guided=True) for x, y in zip(instructions, responses)][: args.gen_prompts]
    runs = {}
    for batch_size in (1, args.gen_batch, 1, args.gen_batch):  # twice each, interleaved; the second pair is kept
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        texts, _ = generate_texts(
            model, tokenizer, prompts, max_new_tokens=args.gen_tokens, batch_size=batch_size, progress=False
        )
        runs[batch_size] = (time.process_time() - t_cpu, time.perf_counter() - t_wall, texts)
    (cpu_1, wall_1, texts_1), (cpu_b, wall_b, texts_b) = runs[1], runs[args.gen_batch]
    return {
        "speedup_cpu": cpu_1 / cpu_b,
        "speedup_wall": wall_1 / wall_b,
        "identical_outputs": texts_1 == texts_b,
        "cpu_seconds": {"batch_1": round(cpu_1, 3), f"batch_{args.gen_batch}": round(cpu_b, 3)},
        "wall_seconds": {"batch_1": round(wall_1, 3), f"batch_{args.gen_batch}": round(wall_b, 3)},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=96)
    parser.add_argument("--gen_prompts", type=int, default=64)
    parser.add_argument("--gen_batch", type=int, default=16)
    parser.add_argument("--gen_tokens", type=int, default=48)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    import datasets
    import transformers

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    data, cfg, instructions, responses = _data(args)
    with tempfile.TemporaryDirectory(prefix="mistake_sft_speed_") as tmp:
        training = time_training(args, data, Path(tmp))
    generation = time_generation(args, cfg, instructions, responses)
    results = {
        "mistake_sft_train_vs_sft": round(training["throughput_ratio_median"], 3),
        "batched_generation_speedup": round(generation["speedup_cpu"], 2),
        "mistake_sft_speed": {
            "command": "python benchmarks/mistake_sft_speed.py " + " ".join(argv or []),
            "goals": GOALS,
            "training": training,
            "generation": generation,
            # where the result was written is not a setting (and no machine path belongs in a result file)
            "settings": {k: v for k, v in vars(args).items() if k != "output"},
            "rows": len(data),
            "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread (shared 2-core CPU)",
        },
    }
    merge_into(args.output, results)
    print(
        f"mistake_sft_train_vs_sft = {results['mistake_sft_train_vs_sft']} (goal >= 0.98); "
        f"batched_generation_speedup = {results['batched_generation_speedup']} (goal >= 4); "
        f"identical outputs: {generation['identical_outputs']}"
    )
    return results


if __name__ == "__main__":
    main()
