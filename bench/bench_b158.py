"""BitNet b1.58 2B-4T on one CPU machine: the NumPy reference and transformers (`hf:`) on
the `2b4t` twin (the real model's shapes, random weights), time and peak RSS, and the
NumPy reference's incremental decoding against recomputing the whole sequence.

1. numpy and hf each evaluate the same `--positions` token ids on the twin's i2_s GGUF
   (hf on its bf16 checkpoint, computed in float32) plus a `--predict`-token greedy
   continuation, in a process of their own: wall time and peak RSS (VmHWM). Then one
   `xtask crossval` with both backends, as full-crossval runs them, for the peak of the
   whole comparison (`getrusage` of the child). Ratios are numpy / hf.
2. On the `--decode-size` twin (default medium), numpy's greedy continuation of
   `--predict` tokens after `--decode-positions` positions, incremental (`greedy`, the KV
   cache) against the recompute it replaced (`logits` of the whole sequence per token).

Printed, never asserted (only that the two continuations of 2. agree); the
extrapolation to the real model is printed with them. The
twin is generated once into --work (about 6 GB for 2b4t) and reused while its twin.json
is there:

    python bench/bench_b158.py [--size 2b4t] [--positions 32] [--predict 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bitnet_xtask.fixtures import generate_twin
from bitnet_xtask.fixtures.twin_spec import TwinSpec, twin_layout

FAMILY = "bitnet-b1.58"

PROBE = """
import json, os, sys, time
from pathlib import Path
from bitnet_xtask.crossval.backends import make_backend
spec, model, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[5])
n, predict = int(sys.argv[3]), int(sys.argv[4])
ids = [1] + [3 + (i * 7) % 300 for i in range(n - 1)]
started = time.perf_counter()
make_backend(spec, threads=os.cpu_count()).evaluate(model, ids, predict, work)
seconds = time.perf_counter() - started
own = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_kib": int(own.split()[1])}))
"""

WHOLE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "rc": done.returncode,
                  "tail": done.stdout[-2000:] + done.stderr[-2000:]}))
"""
"""A fork of a small wrapper, so that the peak is the command's own (Linux carries a
process's peak RSS across execve)."""


def twin_gguf(size: str, work: Path) -> tuple[Path, Path]:
    """The twin's i2_s GGUF and checkpoint, generated unless already complete."""
    layout = twin_layout(TwinSpec.parse(FAMILY, size, 0), work)
    if not layout.manifest.is_file():
        started = time.perf_counter()
        generate_twin(FAMILY, size, ("i2_s",), 0, work)
        print(f"generated the {size} twin in {time.perf_counter() - started:.0f} s")
    return layout.gguf("i2_s"), layout.checkpoint


def measure(spec: str, model: Path, positions: int, predict: int, work: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, spec, str(model), str(positions), str(predict), str(work)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": measured["seconds"], "peak_rss_mb": measured["peak_kib"] * 1024 / 1e6}


def token_ids(n: int) -> list[int]:
    """The ids every measurement evaluates (PROBE spells the same rule)."""
    return [1] + [3 + (i * 7) % 300 for i in range(n - 1)]


def crossval_both(
    model: Path, checkpoint: Path, positions: int, predict: int, work: Path
) -> dict[str, Any]:
    """One `xtask crossval` with hf and numpy, as full-crossval runs the pair."""
    work.mkdir(parents=True, exist_ok=True)
    tokens = work / "tokens.txt"
    tokens.write_text(" ".join(map(str, token_ids(positions))) + "\n")
    command = [sys.executable, "-m", "bitnet_xtask", "crossval", "--model", str(model),
               "--backend", f"hf:{checkpoint}", "--backend", "numpy",
               "--tokens-file", str(tokens), "--n-predict", str(predict),
               "--receipt", str(work / "receipt.json")]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", WHOLE, *command], capture_output=True,
                          text=True, check=True)  # fmt: skip
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    receipt = work / "receipt.json"
    verdict = json.loads(receipt.read_text())["verdict"] if receipt.is_file() else None
    return {"seconds": measured["seconds"], "peak_rss_mb": measured["peak_kib"] * 1024 / 1e6,
            "exit": measured["rc"], "verdict": verdict,
            "tail": None if measured["rc"] == 0 else measured["tail"]}  # fmt: skip


def decoding(size: str, positions: int, predict: int, work: Path) -> dict[str, float]:
    """numpy's greedy continuation, incremental against recomputing the sequence."""
    from bitnet_xtask.crossval.reference import load_model

    model = load_model(twin_gguf(size, work)[0])
    ids = token_ids(positions)
    started = time.perf_counter()
    incremental = model.greedy(ids, predict)
    cached = time.perf_counter() - started
    started = time.perf_counter()
    recomputed: list[int] = []
    for _ in range(predict):
        recomputed.append(int(model.logits(ids + recomputed)[-1].argmax()))
    whole = time.perf_counter() - started
    assert recomputed == incremental, (recomputed, incremental)
    return {"incremental_s": cached, "recompute_s": whole}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="2b4t", choices=["tiny", "small", "medium", "2b4t"])
    parser.add_argument("--positions", type=int, default=32)
    parser.add_argument("--predict", type=int, default=8)
    parser.add_argument("--decode-size", default="medium", choices=["tiny", "small", "medium"])
    parser.add_argument("--decode-positions", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "bench-b158")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    model, checkpoint = twin_gguf(args.size, work)
    rows = {
        name: measure(spec, model, args.positions, args.predict, work / name)
        for name, spec in (("numpy", "numpy"), ("hf", f"hf:{checkpoint}"))
    }
    rows["crossval hf+numpy"] = crossval_both(
        model, checkpoint, args.positions, args.predict, work / "both"
    )
    size_gb = model.stat().st_size / 1e9
    print(f"{FAMILY} {args.size} twin ({size_gb:.2f} GB i2_s), {args.positions} positions "
          f"+ {args.predict} greedy, {os.cpu_count()} cores:")  # fmt: skip
    base = rows["hf"]
    for name, row in rows.items():
        print(f"   {name:18} {row['seconds']:8.1f} s ({row['seconds'] / base['seconds']:4.2f}x)"
              f"  peak RSS {row['peak_rss_mb']:8.0f} MB "
              f"({row['peak_rss_mb'] / base['peak_rss_mb']:4.2f}x)")  # fmt: skip
    both = rows["crossval hf+numpy"]
    print(f"   crossval exit {both['exit']}, verdict {json.dumps(both['verdict'])[:300]}")
    if both["tail"]:
        print(both["tail"])
    print(
        "   extrapolation: the real 2B-4T has exactly these shapes, so the same memory (the "
        "crossval peak above) and about the same time for the same positions; "
        "full-crossval's default prompt is shorter than 32 positions."
    )
    decode = decoding(args.decode_size, args.decode_positions, args.predict, work)
    print(f"numpy greedy, {args.predict} tokens after {args.decode_positions} positions "
          f"({FAMILY} {args.decode_size}): incremental {decode['incremental_s']:.2f} s, "
          f"recompute {decode['recompute_s']:.2f} s "
          f"({decode['recompute_s'] / decode['incremental_s']:.1f}x)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "decode": decode}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
