"""What `crossval --trace` costs: each backend with and without its trace, and the whole
comparison, on the `medium` fixture (4 blocks of 768, n_ff 2048, a 4100-token vocabulary).

1. Each backend (numpy; cpp:<build> when --cpp names a build directory holding
   bin/xtask-logits, e.g. a fetch-cpp build) evaluates the same `--positions` ids in a
   process of its own, untraced and traced: wall time, peak RSS (VmHWM) and the trace's
   bytes on disk. Ratios are traced / untraced.
2. `xtask crossval` of numpy against the same backends, without and with `--trace`: wall
   time and peak RSS of the whole run (`getrusage` of the child), so the comparison's own
   memory (one tensor at a time) shows beside the traces it reads. Ratios as above.

Printed, never asserted:

    python bench/bench_trace.py [--positions 512] [--cpp BUILD_DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bitnet_xtask.fixtures import generate_fixture

PROBE = """
import json, os, sys, time
from pathlib import Path
from bitnet_xtask.crossval.backends import make_backend
from bitnet_xtask.crossval.eval_options import EvalOptions
from bitnet_xtask.crossval.traces import TraceRequest
spec, model, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[4])
n, traced = int(sys.argv[3]), sys.argv[5] == "1"
ids = [1] + [3 + (i * 7) % 4000 for i in range(n - 1)]
options = EvalOptions(trace=TraceRequest() if traced else None)
started = time.perf_counter()
make_backend(spec).evaluate(model, ids, 0, work, options)
seconds = time.perf_counter() - started
own = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file() and "trace" in str(p))
print(json.dumps({"seconds": seconds, "peak_kib": int(own.split()[1]), "trace_bytes": size}))
"""

WHOLE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "rc": done.returncode,
                  "tail": done.stderr[-1500:]}))
"""


def probe(spec: str, model: Path, positions: int, traced: bool, work: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        argv = [sys.executable, "-c", PROBE, spec, str(model), str(positions), scratch,
                "1" if traced else "0"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def crossval(
    model: Path, backends: list[str], ids: Path, traced: bool, work: Path
) -> dict[str, Any]:
    args = [a for b in backends for a in ("--backend", b)]
    argv = [sys.executable, "-m", "bitnet_xtask", "crossval", "--model", str(model), *args,
            "--tokens-file", str(ids), "--n-predict", "0", "--receipt",
            str(work / f"receipt-{int(traced)}.json"),
            *(["--trace"] if traced else [])]  # fmt: skip
    whole = [sys.executable, "-c", WHOLE, *argv]
    done = subprocess.run(whole, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--cpp", type=Path, help="a build directory holding bin/xtask-logits")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-trace")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = generate_fixture("medium", "llama", "f32", 0, args.work).model
    specs = ["numpy", *([f"cpp:{args.cpp}"] if args.cpp else [])]
    print(f"medium llama f32, {args.positions} positions, {os.cpu_count()} CPUs")
    results: dict[str, Any] = {"positions": args.positions, "backends": {}}
    for spec in specs:
        plain = probe(spec, model, args.positions, False, args.work)
        traced = probe(spec, model, args.positions, True, args.work)
        results["backends"][spec] = {"untraced": plain, "traced": traced}
        print(f"  {spec:28} {plain['seconds']:7.2f} s -> {traced['seconds']:7.2f} s "
              f"({traced['seconds'] / plain['seconds']:4.2f}x), peak "
              f"{plain['peak_kib'] / 1024:6.0f} -> {traced['peak_kib'] / 1024:6.0f} MiB "
              f"({traced['peak_kib'] / plain['peak_kib']:4.2f}x), trace "
              f"{traced['trace_bytes'] / 2**20:6.1f} MiB on disk")  # fmt: skip
    if len(specs) > 1:
        ids = args.work / "ids.txt"
        ids.write_text(" ".join(str(3 + (i * 7) % 4000) for i in range(args.positions)))
        plain = crossval(model, specs, ids, False, args.work)
        traced = crossval(model, specs, ids, True, args.work)
        results["crossval"] = {"untraced": plain, "traced": traced}
        print(f"  crossval {' vs '.join(specs)}: {plain['seconds']:.1f} s -> "
              f"{traced['seconds']:.1f} s ({traced['seconds'] / plain['seconds']:4.2f}x), peak "
              f"{plain['peak_kib'] / 1024:.0f} -> {traced['peak_kib'] / 1024:.0f} MiB "
              f"({traced['peak_kib'] / plain['peak_kib']:4.2f}x); exit {plain['rc']}, "
              f"{traced['rc']}")  # fmt: skip
        if traced["rc"] not in (0, 1):
            print(traced["tail"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
