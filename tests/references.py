"""Where the test suite's real C++ references come from.

llama.cpp: the pinned llama-cpp-python sdist, fetched once per session through pip (a
registry client) and then served by the local nginx, so the code under test downloads
only from 127.0.0.1. bitnet.cpp: microsoft/BitNet with its llama.cpp fork, from
`XTASK_TEST_BITNET_SOURCE` (a recursive checkout) or from local git mirrors of the two
repositories (GitHub is not reachable from the test machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from bitnet_xtask.cpp.pins import GithubPin, SdistPin, load_pins

MIRRORS = Path(os.environ.get("XTASK_TEST_GIT_MIRRORS", "/work/.mirror"))


def packaged_sdist_pin() -> SdistPin:
    pin = load_pins()["llama.cpp"]
    assert isinstance(pin, SdistPin)
    return pin


SDIST_PIN = packaged_sdist_pin()
SDIST = SDIST_PIN.url.rsplit("/", 1)[1]


def serve_sdist(served_root: Path, base_url: str, scratch: Path) -> SdistPin:
    """The real pin, with its URL moved to the local server after pip fetched the file
    (or `XTASK_TEST_LLAMA_SDIST` named a copy)."""
    served = served_root / "sdists" / SDIST
    served.parent.mkdir(exist_ok=True)
    cached = os.environ.get("XTASK_TEST_LLAMA_SDIST")
    if cached and Path(cached).is_file():
        shutil.copyfile(cached, served)
    else:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
             SDIST_PIN.package, "-q", "-d", str(scratch),
             f"{SDIST_PIN.package}=={SDIST_PIN.version}"],
            check=True, timeout=900,
        )  # fmt: skip
        shutil.copyfile(scratch / SDIST, served)
    return replace(SDIST_PIN, url=f"{base_url}/sdists/{SDIST}")


@contextmanager
def cache_home(path: Path) -> Iterator[Path]:
    """XDG_CACHE_HOME pointed at `path` for a session-scoped build."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = previous


def export_git_tree(git_dir: Path, rev: str, destination: Path) -> None:
    """Write `rev`'s tree like `git archive` would; blobs a partial mirror lacks (the
    fork's multi-MiB vocab files, which no build step reads) are left out."""
    git = ["git", f"--git-dir={git_dir}"]
    listing = subprocess.run(
        [*git, "ls-tree", "-r", "-z", "--full-tree", rev], capture_output=True, check=True
    ).stdout
    for entry in filter(None, listing.split(b"\0")):
        meta, name = entry.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        target = destination / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "commit":  # a submodule: an empty directory, as in GitHub's tarball
            target.mkdir(exist_ok=True)
            continue
        blob = subprocess.run([*git, "cat-file", "blob", sha], capture_output=True, check=False)
        if blob.returncode != 0:
            continue
        if mode == "120000":
            target.symlink_to(blob.stdout.decode())
        else:
            target.write_bytes(blob.stdout)
            target.chmod(0o755 if mode == "100755" else 0o644)


def bitnet_source_tree(scratch: Path) -> Path | str:
    """A BitNet checkout at the pinned revisions, or the reason there is none."""
    if given := os.environ.get("XTASK_TEST_BITNET_SOURCE"):
        return Path(given)
    pin = load_pins()["bitnet.cpp"]
    assert isinstance(pin, GithubPin)
    fork = pin.submodules["3rdparty/llama.cpp"]
    bitnet_git = MIRRORS / "microsoft+BitNet" / "repo"
    fork_git = MIRRORS / "Eddie-Wang1120+llama.cpp" / "repo"
    for git_dir, rev in ((bitnet_git, pin.rev), (fork_git, fork.rev)):
        found = subprocess.run(
            ["git", f"--git-dir={git_dir}", "cat-file", "-e", f"{rev}^{{commit}}"],
            capture_output=True, check=False,
        )  # fmt: skip
        if found.returncode != 0:
            return (
                "bitnet.cpp sources are not available locally (GitHub is unreachable): set "
                "XTASK_TEST_BITNET_SOURCE to a recursive checkout of microsoft/BitNet at "
                f"{pin.rev}, or provide git mirrors under {MIRRORS}"
            )
    tree = scratch / "BitNet"
    export_git_tree(bitnet_git, pin.rev, tree)
    export_git_tree(fork_git, fork.rev, tree / "3rdparty" / "llama.cpp")
    return tree


def run_cli_and_harness(bin_dir: Path, cli: str, model: Path, out: Path) -> None:
    """The installed CLI generates from a real GGUF, and the harness dumps its logits."""
    extra = ["-no-cnv"] if cli == "llama-cli" else []  # upstream's CLI would start a chat
    generated = subprocess.run(
        [str(bin_dir / cli), "-m", str(model), "-p", "Hello world", "-n", "4", "--temp", "0",
         "-t", "2", *extra],
        capture_output=True, encoding="utf-8", errors="replace",  # random weights: any bytes
        timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.startswith(" Hello world") or "Hello world" in generated.stdout
    dumped = subprocess.run(
        [str(bin_dir / "xtask-logits"), "--model", str(model), "--prompt", "Hello world",
         "--out", str(out), "--n-predict", "3"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr
    tokens = json.loads((out / "tokens.json").read_text())
    assert tokens["n_tokens"] == len(tokens["tokens"]) == 3  # <s> ▁Hello ▁world
    logits = (out / "logits.f32").stat().st_size
    assert logits == 4 * tokens["n_tokens"] * tokens["n_vocab"]
    assert len(json.loads((out / "continuation.json").read_text())["tokens"]) == 3
