"""Cost of the WHP pipeline: peak memory of label building against one model's inference, and time per stage.

Writes to `benchmarks/results/speed.json` (keys merged, others kept):

- `whp_label_peak_mem_vs_model`: peak bytes while building the labels of one block with the default pipeline (R a
  LoRA adapter on B: one set of base weights, B = adapter off), divided by the peak bytes of one plain inference
  forward of the same model on the same block. Peak = live tensors at the start + the peak of what the call
  allocates (profiler memory events). Goal ≤ 1.15.
- `whp_label_peak_mem_vs_model_full_copy`: the same with R a separate full model (the option without LoRA).
- `whp_stage_seconds`: CPU seconds of reinforce / labels / fine-tune on the book toy world (tiny model, one thread),
  with the wall seconds beside them (`whp_stage_wall_seconds`; the machine is shared, CPU time is the work).

Usage (repo root): `python benchmarks/unlearn_speed.py`.
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from pathlib import Path

from hf_immunize.utils import set_offline_env

set_offline_env()

import torch  # noqa: E402

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peft import LoraConfig, get_peft_model  # noqa: E402
from speed_common import live_tensor_bytes, merge_into  # noqa: E402

from hf_immunize.data.toy import make_book_world  # noqa: E402
from hf_immunize.methods.unlearn import (  # noqa: E402
    UnlearnConfig,
    UnlearnTrainer,
    build_generic_labels,
    reinforce,
    remove_adapter,
)
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer  # noqa: E402
from hf_immunize.utils import CPU_TRAINING_DEFAULTS, sft_config  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "speed.json"
MEMORY_MODEL = {"hidden_size": 512, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4}
BLOCK = 64


def peak_bytes(fn) -> int:
    """Live tensor bytes before `fn` + the peak of its net allocations."""
    gc.collect()
    baseline = live_tensor_bytes()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return baseline + peak


def memory(tok, texts, terms) -> dict:
    model = tiny_causal_lm(**MEMORY_MODEL, seed=0)
    model.eval()
    ids = torch.tensor([tok("\n\n".join(texts), add_special_tokens=False)["input_ids"][:BLOCK]])

    def inference():
        with torch.no_grad():
            model(input_ids=ids, use_cache=False).logits.float()

    reference = peak_bytes(inference)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft = get_peft_model(model, lora)
    adapter = peak_bytes(lambda: build_generic_labels(peft, tok, texts, terms, block_size=BLOCK, batch_size=1))
    base = remove_adapter(peft)
    base.eval()
    full = copy.deepcopy(base)
    full_copy = peak_bytes(
        lambda: build_generic_labels(full, tok, texts, terms, baseline=base, block_size=BLOCK, batch_size=1)
    )
    params = sum(p.numel() for p in base.parameters())
    return {
        "whp_label_peak_mem_vs_model": adapter / reference,
        "whp_label_peak_mem_vs_model_full_copy": full_copy / reference,
        "whp_label_memory_setup": {
            "model": {**MEMORY_MODEL, "params": params, "vocab": len(tok)},
            "block_tokens": BLOCK,
            "label_batch_size": 1,
            "lora": "r=16, all linear layers",
            "inference_peak_bytes": reference,
            "labels_adapter_peak_bytes": adapter,
            "labels_full_copy_peak_bytes": full_copy,
        },
    }


def stages(tok) -> dict:
    world = make_book_world(seed=0)
    model = tiny_causal_lm(seed=0)
    cpu, wall = {}, {}

    def timed(name, fn):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu[name], wall[name] = time.process_time() - c, time.perf_counter() - w
        return out

    reinforce_args = sft_config(
        "/tmp/whp-speed-reinforce", max_steps=40, per_device_train_batch_size=8, learning_rate=1e-3, max_length=128
    )
    reinforced = timed("reinforce", lambda: reinforce(model, tok, world.forget, reinforce_args))
    labelled = timed(
        "labels",
        lambda: build_generic_labels(reinforced, tok, world.forget["text"], world.anchored_terms, block_size=BLOCK),
    )
    base = remove_adapter(reinforced)
    args = UnlearnConfig(
        output_dir="/tmp/whp-speed-finetune",
        use_cpu=not torch.cuda.is_available(),
        max_length=128,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        block_size=BLOCK,
        **CPU_TRAINING_DEFAULTS,
    )
    trainer = UnlearnTrainer(model=base, args=args, train_dataset=labelled, processing_class=tok)
    timed("finetune", trainer.train)
    return {
        "whp_stage_seconds": cpu,
        "whp_stage_wall_seconds": wall,
        "whp_stage_setup": {
            "model": "tiny Llama hidden 64, 2 layers",
            "forget_blocks": len(labelled),
            "block_tokens": BLOCK,
            "reinforce": "LoRA r=16, 40 steps x 8",
            "finetune": "1 epoch x batch 8",
            "label_batch_size": 4,
        },
    }


def main() -> dict:
    tok = tiny_tokenizer()
    world = make_book_world(seed=0)
    results = memory(tok, world.forget["text"][:3], world.anchored_terms)
    results.update(stages(tok))
    merge_into(RESULTS, results)
    for key, value in results.items():
        print(key, value)
    return results


if __name__ == "__main__":
    main()
