"""Wall time of every tiny recipe as a user runs it (`hf-immunize <method> --config recipes/<method>_tiny.yaml`): the
run times the recipes' headers and the docs state come from here.

    python benchmarks/recipe_times.py                      # all four tiny recipes, one after the other
    python benchmarks/recipe_times.py --recipes mlac       # one of them

Each recipe runs as a fresh process (imports included, as a user sees it) into a temporary output folder, with the
thread count the recipe runs with by default. The machine (CPU model, cores, load average before and after) is
recorded beside each time, because the development machines are shared: the same run takes longer while other jobs
use the cores. Results are merged into `benchmarks/results/recipe_times.json` under the recipe's name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "recipe_times.json"
RECIPES = {
    "booster": ("booster", "recipes/booster_tiny.yaml"),
    "mlac": ("mlac", "recipes/mlac_tiny.yaml"),
    "unlearn": ("unlearn", "recipes/unlearn_tiny.yaml"),
    "mistake_sft": ("mistake-sft", "recipes/mistake_sft_tiny.yaml"),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_recipe(name: str) -> dict:
    command, recipe = RECIPES[name]
    with tempfile.TemporaryDirectory(prefix=f"recipe-{name}-") as out:
        argv = [sys.executable, "-m", "hf_immunize.cli", command, "--config", recipe, "--output_dir", out]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        cpu_start = os.times()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        cpu_end = os.times()
        load_after = os.getloadavg()[0]
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # The Trainer's own summary line of the (last) training loop: {'train_runtime': '12.3', ...}.
    runtimes = re.findall(r"'train_runtime': '([0-9.]+)'", proc.stdout)
    train_seconds = round(float(runtimes[-1]), 1) if runtimes else None
    cpu = (cpu_end.children_user - cpu_start.children_user) + (cpu_end.children_system - cpu_start.children_system)
    return {
        "command": f"hf-immunize {command} --config {recipe}",
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "train_loop_seconds": train_seconds,
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
        "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
        "reproduce": f"python benchmarks/recipe_times.py --recipes {name}",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--output", default=str(RESULTS), help="JSON file the times are merged into")
    args = parser.parse_args(argv)
    path = Path(args.output)
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.recipes:
        print(f"{name}: running {RECIPES[name][1]} ...", flush=True)
        results[name] = time_recipe(name)
        print(f"{name}: {results[name]['wall_seconds']} s wall, {results[name]['cpu_seconds']} s CPU", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return results


if __name__ == "__main__":
    main()
