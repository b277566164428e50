"""Booster's cost per optimizer step against plain `SFTTrainer`, measured side by side in one process.

Same model (a config-built ~2.5M-parameter Llama, full fine-tuning, fp32), same data (the safety toy world's
alignment rows, which also feed Booster's harmful stream so that every pass sees as many tokens), same batch and
optimizer. SFT, exact Booster and the fast variant at several k take turns within every repeat (order rotated), so
drift on a shared machine hits them alike.

- step time: mean process CPU time of the timed optimizer steps of a run (one thread; a multiple of every k, so the
  fast variant pays its refresh steps); the ratio to the SFT run of the same repeat; median over repeats. CPU time,
  not wall time, because the development machines are shared: wall-clock ratios are recorded alongside.
- peak memory: live tensor bytes at the start of a step plus the peak of the allocations the step makes (CPU
  allocator events of `torch.profiler`), on a step where Booster computes a fresh correction.
- fidelity of the fast variant: on every step that reuses a correction, the cosine and relative error between the
  reused `g − g'` and the exact one at the current weights on the same harmful draw; for scale, the same between the
  exact corrections of that draw and of a fresh draw (the batch noise the exact method itself has).

Writes `booster_exact_step_vs_sft` (goal <= 3.1: three forward+backward passes are the floor),
`booster_fast_step_vs_sft` (goal <= 2.15; at `--headline-k`), `booster_exact_peak_memory_vs_sft`,
`booster_fast_peak_memory_vs_sft` and the details under `booster_speed` into `benchmarks/results/speed.json`,
keeping the other benchmarks' keys.

    python benchmarks/booster_speed.py            # ~4 minutes on 2 CPU cores
    python benchmarks/booster_speed.py --repeats 2 --steps 20 --output /tmp/speed.json
"""

from __future__ import annotations

from hf_immunize.utils import set_offline_env  # before any HF import

set_offline_env(override=False)

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
GOALS = {"booster_exact_step_vs_sft": 3.1, "booster_fast_step_vs_sft": 2.15}


def _datasets(seed: int):
    """The safety world's alignment rows, and its harmful rows (the alignment prompts with their harmful answers).

    The timed runs feed the alignment rows to the harmful stream as well: every pass then processes the same number
    of tokens, so the ratio measures the method and not the length of the toy world's harmful answers (longer than
    its refusals). The fidelity run of the fast variant uses the harmful rows.
    """
    from hf_immunize.data.toy import make_safety_world

    world = make_safety_world(seed=seed, n_weapons=80)
    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    return world.alignment, harmful


def _build(kind: str, settings, model_dir: Path, output_dir: str, alignment, harmful, tokenizer):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from hf_immunize import BoosterConfig, BoosterTrainer

    common = dict(
        output_dir=output_dir,
        max_steps=settings.warmup + settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        max_length=settings.max_length,
        seed=settings.seed,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if kind == "sft":
        trainer = SFTTrainer(
            model=model, args=SFTConfig(**common), train_dataset=alignment, processing_class=tokenizer
        )
        expected = SFTTrainer
    else:
        refresh = 1 if kind == "booster_exact" else int(kind.removeprefix("booster_fast_k"))
        args = BoosterConfig(**common, perturbation_refresh_steps=refresh)
        trainer = BoosterTrainer(
            model=model, args=args, train_dataset=alignment, harmful_dataset=harmful, processing_class=tokenizer
        )
        expected = BoosterTrainer
    # The official overhead script silently fell back to plain `Trainer` (reference §8.4): check what is measured.
    if type(trainer) is not expected:
        raise RuntimeError(f"{kind}: built a {type(trainer).__name__}, expected {expected.__name__}.")
    return trainer


def _fast_variant_fidelity(k: int, settings, model_dir: Path, output_dir: str, alignment, harmful, tokenizer):
    """Reused correction vs the exact one at the same weights and draw, and exact vs exact on another draw."""
    from hf_immunize import BoosterTrainer
    from hf_immunize.core import perturbed
    from hf_immunize.methods.booster.booster_trainer import _HarmfulBatch

    def cosine_and_error(estimate, reference):
        cosine = torch.nn.functional.cosine_similarity(estimate, reference, dim=0).item()
        return cosine, ((estimate - reference).norm() / reference.norm()).item()

    class Probe(BoosterTrainer):
        reused: list[tuple[float, float]] = []
        batch_noise: list[tuple[float, float]] = []

        def exact_difference(self, unwrapped, params, indices):
            batches = [self._prepare_inputs(self.harmful_stream.collate(ix)) for ix in indices]
            harmful = _HarmfulBatch(indices, batches, self._count_loss_tokens(batches))
            grad, _ = self._harmful_gradient(unwrapped, params, harmful)  # weights, .grad and RNG left untouched
            with perturbed(params, grad.views, self.args.perturbation_step_size, norm=grad.norm()):
                grad_perturbed, _ = self._harmful_gradient(unwrapped, params, harmful)
            return grad.flat - grad_perturbed.flat

        def _add_booster_gradient(self, model):
            unwrapped = self.accelerator.unwrap_model(model)
            params = [p for p in unwrapped.parameters() if p.requires_grad]
            reusing = self._reused is not None
            before = [p.grad.detach().clone() for p in params]
            super()._add_booster_gradient(model)
            if not reusing:
                return
            weight = self.args.regularizer_weight
            applied = torch.cat([((p.grad - b) / weight).flatten() for p, b in zip(params, before)])
            exact = self.exact_difference(unwrapped, params, self.last_harmful_indices)
            state = self.harmful_stream.state_dict()  # peek at the next draw without consuming it
            fresh = [self.harmful_stream.next_indices() for _ in self.last_harmful_indices]
            self.harmful_stream.load_state_dict(state)
            other = self.exact_difference(unwrapped, params, fresh)
            self.reused.append(cosine_and_error(applied, exact))
            self.batch_noise.append(cosine_and_error(other, exact))

    trainer = _build(f"booster_fast_k{k}", settings, model_dir, output_dir, alignment, harmful, tokenizer)
    trainer.__class__ = Probe
    trainer.train()

    def summary(pairs):
        return {
            "cosine_mean": round(statistics.fmean(c for c, _ in pairs), 3),
            "relative_error_mean": round(statistics.fmean(e for _, e in pairs), 3),
        }

    return {"reused_vs_exact": summary(Probe.reused), "exact_other_draw_vs_exact": summary(Probe.batch_noise)}


class _PartTimer:
    """CPU time spent inside a few methods, summed: wraps them on the class for the duration of one run."""

    def __init__(self, parts: dict[str, tuple[type, str]]):
        self.parts, self.seconds, self._saved = parts, dict.fromkeys(parts, 0.0), []

    def __enter__(self):
        import time

        for name, (owner, attr) in self.parts.items():
            original = getattr(owner, attr)
            self._saved.append((owner, attr, original))

            def timed(*args, _f=original, _name=name, **kwargs):
                start = time.process_time()
                try:
                    return _f(*args, **kwargs)
                finally:
                    self.seconds[_name] += time.process_time() - start

            setattr(owner, attr, timed)
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)


def _breakdown(settings, model_dir: Path, output_dir: str, alignment, tokenizer) -> dict:
    """Where an exact Booster step's time goes, against SFT's: CPU milliseconds per optimizer step in the alignment
    pass (`SFTTrainer.training_step`, which Booster's own `training_step` calls before its harmful phase), the two
    harmful passes with their gradient buffers (`_harmful_gradient`), the
    rest of the harmful phase (norm, perturb and restore, g - g', adding it to `.grad`), the non-finite guard, and
    everything else of the step (clipping, optimizer, loop). Wrapping costs a few microseconds per call."""
    from trl import SFTTrainer

    from hf_immunize import BoosterTrainer
    from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin

    out = {}
    for kind in ("sft", "booster_exact"):
        parts = {
            "alignment pass": (SFTTrainer, "training_step"),
            "two harmful passes": (BoosterTrainer, "_harmful_gradient"),
            "harmful phase in all": (BoosterTrainer, "_add_booster_gradient"),
            "non-finite guard": (ImmunizeTrainerMixin, "_skip_non_finite_step"),
        }
        trainer = _build(kind, settings, model_dir, output_dir, alignment, alignment, tokenizer)
        timer = StepTimer()
        trainer.add_callback(timer)
        with _PartTimer(parts) as part:
            trainer.train()
        steps = len(timer.cpu)
        ms = {name: 1000 * seconds / steps for name, seconds in part.seconds.items()}
        step = 1000 * statistics.fmean(timer.cpu)
        ms["rest of the harmful phase"] = ms.pop("harmful phase in all") - ms["two harmful passes"]
        ms["rest of the step"] = step - sum(ms.values())
        out[kind] = {"step_ms": round(step, 2), **{k: round(v, 2) for k, v in ms.items()}}
        del trainer
        gc.collect()
    return out


def run(settings) -> dict:
    from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(settings.threads)
    tokenizer = tiny_tokenizer()
    fast_kinds = [f"booster_fast_k{k}" for k in settings.refresh_steps]
    headline = f"booster_fast_k{settings.headline_k}"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model = tiny_causal_lm(
            hidden_size=settings.hidden_size, num_layers=settings.num_layers, seed=settings.seed, save_dir=model_dir
        )
        n_params = sum(p.numel() for p in model.parameters())
        del model
        alignment, toy_harmful = _datasets(settings.seed)
        harmful = alignment  # equal token counts in every pass, see `_datasets`
        kinds = ["sft", "booster_exact", *fast_kinds]
        per_step = {kind: [] for kind in kinds}  # CPU seconds per step, one mean per run
        per_step_wall = {kind: [] for kind in kinds}
        for repeat in range(settings.repeats):
            shift = repeat % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                trainer = _build(kind, settings, model_dir, tmp, alignment, harmful, tokenizer)
                timer = StepTimer()
                trainer.add_callback(timer)
                trainer.train()
                per_step[kind].append(statistics.fmean(timer.cpu[settings.warmup :]))
                per_step_wall[kind].append(statistics.fmean(timer.wall[settings.warmup :]))
                print(
                    f"repeat {repeat} {kind:18s} {1000 * per_step[kind][-1]:7.2f} ms/step CPU, "
                    f"{1000 * per_step_wall[kind][-1]:7.2f} ms/step wall",
                    flush=True,
                )
                del trainer
                gc.collect()

        peak = {}
        for kind in ("sft", "booster_exact", headline):  # one trainer alive at a time: the baseline is its own
            trainer = _build(kind, settings, model_dir, tmp, alignment, harmful, tokenizer)
            k = settings.headline_k  # a refresh step after warm-up (the first step also creates optimizer state)
            meter = StepMemory(step=-(-max(settings.warmup, 1) // k) * k)
            trainer.add_callback(meter)
            trainer.train()
            peak[kind] = meter.peak_bytes
            del trainer
            gc.collect()
        breakdown = _breakdown(settings, model_dir, tmp, alignment, tokenizer)
        fidelity = {
            f"k={k}": _fast_variant_fidelity(k, settings, model_dir, tmp, alignment, toy_harmful, tokenizer)
            for k in settings.refresh_steps
        }

    def ratios(kind, times=per_step):
        return [b / s for b, s in zip(times[kind], times["sft"])]

    exact, fast = statistics.median(ratios("booster_exact")), statistics.median(ratios(headline))
    # Other processes on shared cores only ever add time: the ratio of each kind's fastest run is the other estimate.
    fastest = {kind: min(values) for kind, values in per_step.items()}
    return {
        "booster_exact_step_vs_sft": round(exact, 3),
        "booster_fast_step_vs_sft": round(fast, 3),
        "booster_exact_peak_memory_vs_sft": round(peak["booster_exact"] / peak["sft"], 3),
        "booster_fast_peak_memory_vs_sft": round(peak[headline] / peak["sft"], 3),
        "booster_speed": {
            "goals": GOALS,
            "meets_goals": {
                "exact": exact <= GOALS["booster_exact_step_vs_sft"],
                "fast": fast <= GOALS["booster_fast_step_vs_sft"],
            },
            "fast_variant_headline_k": settings.headline_k,
            "step_ratio_median": {k: round(statistics.median(ratios(k)), 3) for k in kinds[1:]},
            "step_ratio_of_fastest_runs": {k: round(fastest[k] / fastest["sft"], 3) for k in kinds[1:]},
            "cpu_ms_per_step_breakdown": breakdown,
            "step_ratio_by_repeat": {k: [round(r, 3) for r in ratios(k)] for k in kinds[1:]},
            "wall_step_ratio_median": {k: round(statistics.median(ratios(k, per_step_wall)), 3) for k in kinds[1:]},
            "cpu_seconds_per_step_median": {k: round(statistics.median(v), 6) for k, v in per_step.items()},
            "wall_seconds_per_step_median": {k: round(statistics.median(v), 6) for k, v in per_step_wall.items()},
            "timing": "process CPU time per optimizer step (one thread), robust to other processes on shared cores; "
            "wall-clock ratios alongside",
            "peak_memory_mib": {k: round(v / 2**20, 2) for k, v in peak.items()},
            "fast_variant_fidelity": {
                "what": "cosine / relative error of the reused correction g - g' against the exact one at the same "
                "weights and harmful draw, on the steps that reuse it; for scale, the exact correction of another "
                "harmful draw against the same reference",
                "data": "toy world harmful answers",
                "learning_rate": 1e-4,
                "steps": settings.warmup + settings.steps,
                **fidelity,
            },
            "setup": {
                "model": f"Llama, hidden {settings.hidden_size}, {settings.num_layers} layers, eager attention",
                "parameters": n_params,
                "full fine-tuning": True,
                "precision": "fp32",
                "optimizer": "adamw_torch, lr 1e-4 constant",
                "batch_size": settings.batch_size,
                "max_length": settings.max_length,
                "data": "safety toy world alignment rows (prompt/completion, refusals and benign answers); the "
                "harmful stream draws the same rows, so all passes see equal token counts",
                "steps_timed": settings.steps,
                "warmup_steps": settings.warmup,
                "repeats": settings.repeats,
                "device": "cpu",
                "threads": settings.threads,
                "machine": platform.machine(),
                "torch": torch.__version__,
            },
            "command": "python benchmarks/booster_speed.py",
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument(
        "--refresh-steps", type=int, nargs="+", default=[2, 4, 10], help="k values of the fast variant"
    )
    parser.add_argument("--headline-k", type=int, default=4, help="the k reported as booster_fast_step_vs_sft")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    settings = parser.parse_args(argv)
    if settings.headline_k not in settings.refresh_steps:
        parser.error(f"--headline-k {settings.headline_k} must be one of --refresh-steps {settings.refresh_steps}.")
    for k in settings.refresh_steps:  # any run of k consecutive steps holds exactly one refresh
        if k < 2 or settings.steps % k:
            parser.error(
                f"--steps ({settings.steps}) must be a multiple of every --refresh-steps value >= 2, got {k}."
            )
    results = run(settings)
    merge_into(settings.output, results)
    print(json.dumps({k: v for k, v in results.items() if k != "booster_speed"}, indent=2))
    print(f"written to {settings.output}")
    return results


if __name__ == "__main__":
    main()
