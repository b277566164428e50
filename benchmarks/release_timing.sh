#!/usr/bin/env bash
# Wall-clock times of the release flow's commands on this machine (the run times docs/workflow.md states):
# train the booster_tiny recipe, `hf-immunize attack` with the toy defaults, `hf-immunize evaluate --write_card`.
#
#   bash benchmarks/release_timing.sh        # writes benchmarks/results/release_timing.json (about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1
BIN="${BIN:-.venv/bin}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

time_of() {  # seconds a command takes, its output kept in $WORK/<name>.log
  local name="$1"; shift
  local start end
  start=$(date +%s.%N)
  "$@" > "$WORK/$name.log" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(round($end - $start, 1))"
}

train=$(time_of train "$BIN/hf-immunize" booster --config recipes/booster_tiny.yaml --output_dir "$WORK/booster-tiny" \
  --disable_tqdm true)
attack=$(time_of attack "$BIN/hf-immunize" attack --model "$WORK/booster-tiny" --output_dir "$WORK/attack" --no_progress)
evaluate=$(time_of evaluate "$BIN/hf-immunize" evaluate --model "$WORK/booster-tiny" --method booster --write_card \
  --output_dir "$WORK/evaluate" --no_progress)

mkdir -p benchmarks/results
python3 - "$train" "$attack" "$evaluate" <<'PY'
import json, os, platform, sys
train, attack, evaluate = map(float, sys.argv[1:4])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
result = {
    "command": "bash benchmarks/release_timing.sh",
    "machine": {"cpu": cpu, "cores": os.cpu_count()},
    "seconds": {
        "hf-immunize booster --config recipes/booster_tiny.yaml": train,
        "hf-immunize attack --model <booster-tiny> (toy defaults: 150 attack steps)": attack,
        "hf-immunize evaluate --model <booster-tiny> --method booster --write_card": evaluate,
    },
}
with open("benchmarks/results/release_timing.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
print(json.dumps(result, indent=2))
PY
