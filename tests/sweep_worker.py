"""One worker of a shared sweep, run as its own process by tests/test_sweep_study.py.

    python sweep_worker.py real MODEL_DIR STORAGE STUDY LOG OUT     # real attacks on the tiny model (toy world)
    python sweep_worker.py fake - STORAGE STUDY LOG OUT [SECONDS] [SAMPLER]   # a scripted attack that sleeps

Every attack this process runs is appended to LOG as one JSON line `[pid, trial, overrides]`; the SweepResult goes to
OUT as JSON.
"""

import json
import os
import sys
import time

from hf_immunize.utils import set_offline_env

set_offline_env()

import torch  # noqa: E402

torch.set_num_threads(1)

SPACE = {"learning_rate": [1e-4, 1e-3, 3e-3], "max_steps": [1, 2]}
BUDGET = 6


def tiny_attack():
    from hf_immunize.evaluation import AttackConfig

    return AttackConfig(n_samples=10, harmful_ratio=0.5, batch_size=5, max_new_tokens=4, max_eval_samples=4)


def toy_sets():
    from hf_immunize.data.toy import make_safety_world

    w = make_safety_world(seed=0, n_weapons=8, n_reverse=20, n_capitals=5, n_dishes=4)
    return w.attack_harmful, w.attack_benign, w.eval_harmful, w.eval_benign


def main(argv):
    import hf_immunize.evaluation.sweep as sweep_module
    from hf_immunize.evaluation import AttackResult
    from hf_immunize.testing import tiny_tokenizer

    mode, model_dir, storage, study, log, out = argv[:6]
    real_attack = sweep_module.run_attack

    def logged_attack(model, tokenizer, config, *args, **kwargs):
        overrides = {k: getattr(config, k) for k in SPACE}
        with open(log, "a") as f:
            f.write(json.dumps([os.getpid(), overrides]) + "\n")
        if mode == "real":
            return real_attack(model, tokenizer, config, *args, **kwargs)
        time.sleep(float(argv[6]) if len(argv) > 6 else 0.2)
        harmful = 1000 * config.learning_rate + config.max_steps  # a scripted outcome
        return AttackResult(
            config={},
            before={"harmful_score": 0.0, "task_accuracy": 80.0},
            after={"harmful_score": harmful, "task_accuracy": 80.0 - 10 * config.max_steps},
            curve=[],
        )

    sweep_module.run_attack = logged_attack
    # SWEEP_BARRIER=DIR:N: start only when N workers are ready (imports take a while, and unevenly), so that they
    # really share the study.
    barrier = os.environ.get("SWEEP_BARRIER")
    if barrier:
        folder, count = barrier.rsplit(":", 1)
        open(os.path.join(folder, f"ready-{os.getpid()}"), "w").close()
        while sum(name.startswith("ready-") for name in os.listdir(folder)) < int(count):
            time.sleep(0.1)
    sampler = argv[7] if len(argv) > 7 else "grid"
    result = sweep_module.sweep_attacks(
        model_dir if mode == "real" else None,
        tiny_tokenizer() if mode == "real" else None,
        tiny_attack(),
        *toy_sets(),
        space=SPACE,
        budget=BUDGET,
        sampler=sampler,
        storage=storage,
        study_name=study,
        heartbeat_interval=1,
        grace_period=3,
    )
    with open(out, "w") as f:
        json.dump(result.to_dict(), f)


if __name__ == "__main__":
    main(sys.argv[1:])
