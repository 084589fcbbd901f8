"""How much building less saves: `xtask fetch-cpp` against a full default build.

Targets (issue: fetch-cpp): a cold `xtask fetch-cpp` (configure, the `llama` library, the
CLI and the harness) takes <= 0.5x the time of a full default build of the same source
(`cmake -B build && cmake --build build`: every target llama.cpp defines); a warm re-run,
which finds its receipt, takes <= 1 s. Printed as ratios measured in one run, never
asserted; a missed target prints MISS and the exit status stays 0.

Both builds compile the same tree (the pinned sdist's vendor/llama.cpp, fetch-cpp taking
it with --source) with the same compilers, generator (Ninja) and job count. The full build
keeps llama.cpp's default options except LLAMA_CURL=OFF, since libcurl's headers are not
a build requirement here.

    python bench/bench_fetch_cpp.py [--sdist PATH] [--jobs N] [--noop-runs 5] [--json OUT]

Without --sdist the pinned sdist is fetched with `pip download` (from the package index).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bitnet_xtask.cpp.pins import SdistPin, load_pins
from bitnet_xtask.cpp.toolchain import build_tools


def pinned_sdist(workdir: Path) -> Path:
    pin = load_pins()["llama.cpp"]
    assert isinstance(pin, SdistPin)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", pin.package,
         "-q", "-d", str(workdir), f"{pin.package}=={pin.version}"],
        check=True,
    )  # fmt: skip
    return workdir / pin.url.rsplit("/", 1)[1]


def unpack(sdist: Path, destination: Path) -> Path:
    pin = load_pins()["llama.cpp"]
    assert isinstance(pin, SdistPin)
    with tarfile.open(sdist) as tar:
        tar.extractall(destination, filter="tar")
    (top,) = destination.iterdir()
    return top / pin.subdir


def timed(argv: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as out:
        subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="the pinned llama-cpp-python sdist")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--noop-runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-cpp-", dir=args.workdir))
    try:
        sdist = args.sdist or pinned_sdist(work)
        source = unpack(sdist, work / "src")
        tools = build_tools()
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
        log = work / "bench.log"
        print(f"source {source} ({sdist.name}), {args.jobs} jobs, log {log}", flush=True)

        xtask = [sys.executable, "-m", "bitnet_xtask", "fetch-cpp", "--source", str(source),
                 "--jobs", str(args.jobs)]  # fmt: skip
        needed = timed(xtask, env, log)
        print(f"fetch-cpp cold (needed targets + harness): {needed:8.1f} s", flush=True)
        noop = [timed(xtask, env, log) for _ in range(args.noop_runs)]
        print(f"fetch-cpp warm no-op, median of {len(noop)}: {statistics.median(noop):8.2f} s")

        full_build = str(work / "full")
        configure = [tools["cmake"], "-S", str(source), "-B", full_build, "-G", "Ninja",
                     f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}", "-DCMAKE_BUILD_TYPE=Release",
                     "-DLLAMA_CURL=OFF"]  # fmt: skip
        build_all = [tools["cmake"], "--build", full_build, "-j", str(args.jobs)]
        full = timed(configure, env, log) + timed(build_all, env, log)
        print(f"full default build (all targets):          {full:8.1f} s", flush=True)

        ratio = needed / full
        results = {
            "needed_s": round(needed, 1),
            "full_s": round(full, 1),
            "ratio": round(ratio, 3),
            "noop_median_s": round(statistics.median(noop), 3),
            "noop_s": [round(t, 3) for t in noop],
            "jobs": args.jobs,
            "sdist": sdist.name,
        }
        for what, value, target in (
            ("cold needed / full", ratio, 0.5),
            ("warm no-op seconds", results["noop_median_s"], 1.0),
        ):
            verdict = "ok" if value <= target else "MISS"
            print(f"{what:20} {value:8.3f}  (target <= {target})  {verdict}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
