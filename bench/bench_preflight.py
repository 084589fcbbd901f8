"""How long `xtask gpu-preflight` takes, against the floor of starting Python at all.

Targets (issue: preflight): median wall time <= 0.3 s, and <= 1.5x the time of the
same interpreter starting and importing the CLI without probing anything. Printed as
ratios measured in one run, never asserted.

    python bench/bench_preflight.py [--runs 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PEERS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import only (no probes)": [sys.executable, "-c", "import bitnet_xtask.cli"],
    "gpu-preflight --format json": [
        sys.executable, "-m", "bitnet_xtask", "gpu-preflight", "--format", "json",
    ],
    "preflight --format json": [
        sys.executable, "-m", "bitnet_xtask", "preflight", "--format", "json",
    ],
}  # fmt: skip


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Wall seconds of `runs` runs (after one warm-up), outputs discarded."""
    env = {k: v for k, v in os.environ.items() if k != "BITNET_GPU_FAKE"}
    subprocess.run(argv, env=env, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    medians: dict[str, float] = {}
    # Interleave peers round by round, so drift in machine load hits all alike.
    samples: dict[str, list[float]] = {name: [] for name in PEERS}
    for _ in range(args.runs):
        for name, argv in PEERS.items():
            samples[name] += wall_times(argv, 1)
    print(f"{'peer':32} {'median s':>9} {'p90 s':>8}")
    for name, times in samples.items():
        medians[name] = statistics.median(times)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"{name:32} {medians[name]:9.3f} {p90:8.3f}")
    gpu = medians["gpu-preflight --format json"]
    floor = medians["import only (no probes)"]
    bare = medians["python -c pass"]
    ratios = {
        "gpu_preflight_median_s": round(gpu, 3),
        "gpu_preflight_vs_import_only": round(gpu / floor, 2),
        "gpu_preflight_vs_python_pass": round(gpu / bare, 2),
    }
    print()
    print(f"gpu-preflight median {gpu:.3f} s (target <= 0.3 s): {'PASS' if gpu <= 0.3 else 'MISS'}")
    print(
        f"gpu-preflight / import-only {gpu / floor:.2f}x (target <= 1.5x): "
        f"{'PASS' if gpu / floor <= 1.5 else 'MISS'}"
    )
    print(f"gpu-preflight / python -c pass {gpu / bare:.2f}x (reported)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"medians": medians, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
