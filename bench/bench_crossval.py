"""crossval's speed and memory, against peers run here in the same run.

Targets (issue: crossval):
- tiny fixture, end to end after the build (`xtask full-crossval --fixture tiny`, the
  build already in the cache): <= 3 s wall. Peers: the harness alone on that model, and
  a bare `python -c pass`.
- the NumPy reference on the small fixture: seconds per 100 positions, next to the
  llama.cpp harness evaluating the same ids.
- peak RSS of a crossval over 2,048 positions with a 32k vocabulary: below 2x the size
  of one backend's logits (2048 x 32000 float32 = 262 MB). Two stand-in engines
  (bench/engines/synthetic_engine.py) write the logits; crossval runs in its own process
  and reports its own peak (VmHWM), which excludes the engines.

Printed, never asserted; a missed target prints MISS and the exit status stays 0. Needs
a fetch-cpp llama.cpp build (`xtask fetch-cpp`; this script runs it, a no-op when built).

    python bench/bench_crossval.py [--runs 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bitnet_xtask.cpp.build import BuildRequest, build_reference
from bitnet_xtask.fixtures import generate_fixture

HERE = Path(__file__).parent
N_POSITIONS, N_VOCAB = 2048, 32000

RSS_PROBE = """
import json, sys
from pathlib import Path
from bitnet_xtask.crossval.request import CrossvalRequest
from bitnet_xtask.crossval.runner import run_crossval
model, a, b, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
request = CrossvalRequest((Path(model),), (a, b), token_ids=tuple(range(n)), n_predict=0)
result = run_crossval(request)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"vmhwm_kib": int(hwm.split()[1]), "passed": result.passed}))
"""


def wall(argv: list[str], runs: int, cwd: Path) -> list[float]:
    subprocess.run(argv, cwd=cwd, capture_output=True, check=True)  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def tiny_end_to_end(tiny: Path, harness: str, runs: int, work: Path) -> dict[str, float]:
    """A: full-crossval on the tiny fixture, next to the harness alone and a bare Python."""
    xtask = [sys.executable, "-m", "bitnet_xtask"]
    peers = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "xtask-logits alone (tiny)": [harness, "--model", str(tiny), "--prompt", "Hello",
                                      "--out", str(work / "h"), "--n-predict", "8"],
        "full-crossval --fixture tiny": [*xtask, "full-crossval", "--fixture", "tiny",
                                         "--receipt", str(work / "r.json")],
    }  # fmt: skip
    results: dict[str, float] = {}
    for name, argv in peers.items():
        results[name] = statistics.median(wall(argv, runs, work))
        print(f"   {name:32} {results[name]:7.3f} s")
    end_to_end = results["full-crossval --fixture tiny"]
    alone = end_to_end / results["xtask-logits alone (tiny)"]
    print(f"   target <= 3 s: {end_to_end:.2f} s {verdict(end_to_end, 3.0)}; "
          f"{alone:.1f}x the harness alone")  # fmt: skip
    return results


def reference_speed(harness: str, runs: int, work: Path) -> dict[str, float]:
    """B: the NumPy reference on the small fixture, per 100 positions, against the harness."""
    from bitnet_xtask.crossval.reference import load_model

    small = generate_fixture("small", "llama", "f32", 0, work / "small").model
    ids = list(range(3, 3 + 400))
    reference = load_model(small)
    reference.logits(ids[:8])  # dequantize once, as crossval's first call does
    started = time.perf_counter()
    reference.logits(ids)
    per_100 = (time.perf_counter() - started) / len(ids) * 100
    ids_file = work / "ids.txt"
    ids_file.write_text(" ".join(map(str, ids)))
    cpp = statistics.median(wall([harness, "--model", str(small), "--tokens-file",
                                  str(ids_file), "--out", str(work / "s"), "--n-predict",
                                  "0"], runs, work)) / len(ids) * 100  # fmt: skip
    print(
        f"B. NumPy reference, small, {len(ids)} positions: {per_100:.3f} s per 100 "
        f"positions (llama.cpp harness incl. load: {cpp:.3f} s; {per_100 / cpp:.1f}x)"
    )
    return {"numpy_small_s_per_100_positions": per_100, "harness_small_s_per_100_positions": cpp}


def peak_memory(work: Path) -> dict[str, float]:
    """C: crossval's own peak RSS over N_POSITIONS x N_VOCAB logits of two stand-ins. The
    model only has to admit N_POSITIONS (crossval refuses ids past its context): the
    medium fixture's context is 2,048; the stand-ins never read it."""
    model = generate_fixture("medium", "llama", "q4_0", 0, work / "crossval" / "fixtures").model
    engine = HERE / "engines" / "synthetic_engine.py"
    template = [sys.executable, str(engine), "{tokens}", "{logits}", "{continuation}",
                str(N_VOCAB)]  # fmt: skip
    a = "cmd:" + shlex.join(template)
    b = "cmd:" + shlex.join([*template, "0.001"])
    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(model), a, b, str(N_POSITIONS)],
        capture_output=True, text=True, check=True, env={**os.environ, "TMPDIR": str(work)},
    )  # fmt: skip
    measured = json.loads(probe.stdout.strip().splitlines()[-1])
    logits_mb = N_POSITIONS * N_VOCAB * 4 / 1e6
    rss_mb = measured["vmhwm_kib"] * 1024 / 1e6
    ratio = rss_mb / logits_mb
    print(
        f"C. crossval {N_POSITIONS} x {N_VOCAB}: peak RSS {rss_mb:.0f} MB = {ratio:.2f}x "
        f"one backend's logits ({logits_mb:.0f} MB); target < 2x {verdict(ratio, 2.0)}"
    )
    return {"crossval_peak_rss_mb": rss_mb, "one_backend_logits_mb": logits_mb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    build = build_reference(BuildRequest())
    harness = str(build.bin_dir / "xtask-logits")
    with tempfile.TemporaryDirectory(prefix="bench-crossval-") as scratch:
        work = Path(scratch)
        tiny = generate_fixture("tiny", "llama", "f32", 0, work / "crossval" / "fixtures").model
        print(f"A. tiny end to end ({args.runs} runs, build cached: {build.directory})")
        results = tiny_end_to_end(tiny, harness, args.runs, work)
        results |= reference_speed(harness, args.runs, work)
        results |= peak_memory(work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
