"""How long `xtask models inventory` takes over a folder of many small GGUFs, cold (an
empty sha256 cache: every file hashed and its header read) and warm (a rerun over the
same, unchanged files: everything from the cache), against peers measured in the same
run over the same files: `sha256sum` of every file, and a plain Python process that
hashes every file with hashlib.

Target (issue 16): the warm rerun of 1,000 small GGUFs under a second. Printed as
figures and ratios, never asserted (a miss prints MISS; the exit status is 1 only when
a run itself failed).

    python bench/bench_inventory.py [--files 1000] [--runs 5] [--json OUT] [--keep]

Every run is a process of its own, timed from spawn to exit, so each pays interpreter
start-up as a user does; the files are in the page cache for every peer alike (they
were just written). The GGUFs are written with gguf-py's GGUFWriter: a 16-token llama
tokenizer and two small F32 tensors, distinct bytes per file, ~4 KB each, 100 to a
folder (`models/org-model-NN/`), with an mtime an hour old, as downloaded models have
(the cache does not record a file modified in its last 2 seconds: see hash_cache.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np

PER_FOLDER = 100
HASH_ALL = """
import hashlib, sys
for path in open(sys.argv[1]).read().splitlines():
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 << 20):
            digest.update(block)
    print(digest.hexdigest(), path)
"""
#: The warm inventory's own time, inside one process: load the cache, walk, build, save.
INSIDE = """
import sys, time
from pathlib import Path
started = time.perf_counter()
from bitnet_xtask.models.catalog import load_catalog
from bitnet_xtask.models.hash_cache import HashCache
from bitnet_xtask.models.inventory import build_inventory
imported = time.perf_counter()
cache = HashCache.load()
inventory = build_inventory(Path(sys.argv[1]), load_catalog(), cache)
cache.save()
assert inventory.hashed == inventory.parsed == 0
print(time.perf_counter() - imported, imported - started)
"""


def write_models(models: Path, count: int) -> list[Path]:
    """`count` distinct small GGUFs, `PER_FOLDER` to a folder, aged an hour."""
    paths = []
    old = time.time() - 3600
    tokens = ["<unk>", "<s>", "</s>", *(f"t{i}" for i in range(13))]
    for i in range(count):
        folder = models / f"org-model-{i // PER_FOLDER:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bench-{i:04d}-f32.gguf"
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_name(f"bench {i}")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(128)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        rng = np.random.default_rng(i)
        writer.add_tensor("token_embd.weight", rng.standard_normal((16, 32), dtype=np.float32))
        writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.utime(path, (old, old))
        paths.append(path)
    return paths


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of one run, and its stdout; a failed run stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(f"{' '.join(argv[:6])} ... failed ({done.returncode}):\n{done.stderr}")
        raise SystemExit(1)
    return seconds, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5, help="counted rounds of every peer")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="where the scratch folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-inventory-", dir=args.workdir))
    try:
        return run(scratch, args)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def run(scratch: Path, args: argparse.Namespace) -> int:
    models, xdg = scratch / "models", scratch / "xdg"
    started = time.perf_counter()
    paths = write_models(models, args.files)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} GGUFs, {size:,} bytes in all, written in "
          f"{time.perf_counter() - started:.1f} s ({scratch})")  # fmt: skip
    listing = scratch / "paths.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    # Bytecode compiled once, into the scratch folder (round 0), never into the checkout,
    # even where the environment sets PYTHONDONTWRITEBYTECODE (as bench_download does).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env |= {"XDG_CACHE_HOME": str(xdg), "PYTHONPYCACHEPREFIX": str(scratch / "pycache")}
    inventory = [sys.executable, "-m", "bitnet_xtask", "models", "inventory",
                 "--models", str(models), "--no-hf-cache", "--json"]  # fmt: skip
    peers: dict[str, list[str]] = {
        "sha256sum": ["sha256sum", *map(str, paths)],
        "python hashlib": [sys.executable, "-c", HASH_ALL, str(listing)],
        "python -c 'import bitnet_xtask.cli'": [sys.executable, "-c", "import bitnet_xtask.cli"],
    }
    inside = [sys.executable, "-c", INSIDE, str(models)]
    samples: dict[str, list[float]] = {"cold": [], "warm": [], "warm, inside the process": [],
                                       **{name: [] for name in peers}}  # fmt: skip
    cache = xdg / "bitnet_xtask" / "sha256-cache.json"
    for round_ in range(args.runs + 1):  # round 0 warms the page cache and bytecode: uncounted
        cache.unlink(missing_ok=True)
        cold, out = timed(inventory, env, scratch)
        report = json.loads(out)["summary"]
        if (report["files"], report["hashed"], report["parsed"]) != (len(paths),) * 3:
            sys.stderr.write(f"cold run did not hash and read every file: {report}\n")
            return 1
        warm, out = timed(inventory, env, scratch)
        if (summary := json.loads(out)["summary"])["hashed"] or summary["parsed"]:
            sys.stderr.write(f"warm run read files again: {summary}\n")
            return 1
        peer_times = {name: timed(argv, env, scratch)[0] for name, argv in peers.items()}
        peer_times["warm, inside the process"] = float(timed(inside, env, scratch)[1].split()[0])
        if round_:
            samples["cold"].append(cold)
            samples["warm"].append(warm)
            for name, seconds in peer_times.items():
                samples[name].append(seconds)
    return report_figures(samples, len(paths), cache, args.json)


def report_figures(
    samples: dict[str, list[float]], files: int, cache: Path, out: Path | None
) -> int:
    medians = {name: statistics.median(times) for name, times in samples.items()}
    print(f"\n{'peer':38} {'median s':>9} {'min s':>8}")
    for name, times in samples.items():
        label = {"cold": "inventory, cold (empty cache)", "warm": "inventory, warm (rerun)"}
        print(f"{label.get(name, name):38} {medians[name]:9.3f} {min(times):8.3f}")
    warm, cold = medians["warm"], medians["cold"]
    ratios: dict[str, Any] = {
        "warm_s": round(warm, 3),
        "warm_vs_cold": round(warm / cold, 3),
        "warm_vs_sha256sum": round(warm / medians["sha256sum"], 2),
        "warm_vs_python_hashlib": round(warm / medians["python hashlib"], 2),
        "warm_vs_import_only": round(warm / medians["python -c 'import bitnet_xtask.cli'"], 2),
        "cache_bytes": cache.stat().st_size,
    }
    print()
    verdict = "PASS" if warm < 1.0 else "MISS"
    print(f"warm rerun of {files} GGUFs: {warm:.3f} s (target < 1 s): {verdict}")
    print(f"warm / cold {ratios['warm_vs_cold']:.3f}x; warm / sha256sum "
          f"{ratios['warm_vs_sha256sum']:.2f}x; warm / python hashlib "
          f"{ratios['warm_vs_python_hashlib']:.2f}x; warm / import-only "
          f"{ratios['warm_vs_import_only']:.2f}x")  # fmt: skip
    print(f"sha256 cache: {ratios['cache_bytes']:,} bytes for {files} files")
    if out is not None:
        out.write_text(json.dumps({"samples": samples, "medians": medians, "ratios": ratios},
                                  indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
