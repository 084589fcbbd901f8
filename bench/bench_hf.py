"""The three backends of crossval's triangle on the same twin: transformers (`hf:`), the
NumPy reference and the llama.cpp harness, side by side, time and peak RSS.

Each backend evaluates the same token ids on the twin's f32 GGUF (hf on its checkpoint)
in a process of its own, `--runs` times: the cold call (the first of a process: imports,
loading, dequantization) and the warm calls after it are reported separately, with the
process's peak RSS (VmHWM; for the harness, its own peak from `getrusage` of the child).
Ratios are against the harness, run here in the same run. Printed, never asserted.
Needs the `hf` extra and a fetch-cpp llama.cpp build (this script runs fetch-cpp, a no-op
when built):

    python bench/bench_hf.py [--size small] [--positions 128] [--runs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bitnet_xtask.cpp.build import BuildRequest, build_reference
from bitnet_xtask.fixtures import generate_twin

PROBE = """
import json, resource, sys, time
from pathlib import Path
from bitnet_xtask.crossval.backends import make_backend
spec, model, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[5])
n, runs, threads = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])
ids = [1] + [3 + (i * 7) % 300 for i in range(n - 1)]
started = time.perf_counter()
backend = make_backend(spec, threads=threads)
seconds = []
for run in range(runs):
    backend.evaluate(model, ids, 0, work / str(run))
    seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
own = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "self_kib": int(own.split()[1]), "child_kib": child}))
"""


def measure(
    spec: str, model: Path, positions: int, runs: int, work: Path, threads: int
) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, spec, str(model), str(positions), str(runs), str(work),
         str(threads)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    cpp = spec.startswith("cpp:")
    peak_kib = measured["child_kib"] if cpp else measured["self_kib"]
    warm = sorted(measured["seconds"][1:]) or measured["seconds"]
    return {"cold_s": measured["seconds"][0], "warm_s": warm[len(warm) // 2],
            "peak_rss_mb": peak_kib * 1024 / 1e6}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    build = build_reference(BuildRequest())
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as scratch:
        work = Path(scratch)
        for family in ("llama", "bitnet"):
            twin = generate_twin(family, args.size, ("f32",), 0, work)
            model = twin.ggufs["f32"]
            specs = {"harness": f"cpp:{build.directory}", "numpy": "numpy",
                     "hf": f"hf:{twin.checkpoint}"}  # fmt: skip
            rows = {name: measure(spec, model, args.positions, args.runs, work / name,
                                  args.threads)
                    for name, spec in specs.items()}  # fmt: skip
            results[family] = rows
            base = rows["harness"]
            print(f"{family} {args.size} twin, {args.positions} positions, "
                  f"--threads {args.threads}:")  # fmt: skip
            for name, row in rows.items():
                print(f"   {name:8} " + "  ".join(
                    f"{label} {row[key]:8.3f} {unit} ({row[key] / base[key]:5.1f}x)"
                    for label, key, unit in (("cold", "cold_s", "s"), ("warm", "warm_s", "s"),
                                             ("peak RSS", "peak_rss_mb", "MB"))
                ))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
