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
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
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


SESSION_MAGIC = 0x6767736E  # "ggsn": LLAMA_SESSION_MAGIC, include/llama.h


def read_session_tokens(path: Path) -> list[int]:
    """The token ids at the head of a llama.cpp session file: u32 magic, u32 version, u32
    count, then the int32 ids (`llama_context::state_save_file`, src/llama-context.cpp:3306
    in the pinned llama.cpp; the same layout in the BitNet fork)."""
    data = path.read_bytes()
    magic, _version, count = struct.unpack_from("<III", data)
    assert magic == SESSION_MAGIC, f"{path} is not a llama.cpp session file"
    return list(struct.unpack_from(f"<{count}i", data, 12))


@dataclass(frozen=True)
class CliGeneration:
    """What one CLI run shows: its stdout (racy, see `generate_with_cli`) and the ids it
    saved (deterministic)."""

    stdout: str
    tokens: list[int]


def generate_with_cli(
    bin_dir: Path, cli: str, model: Path, scratch: Path, threads: int
) -> CliGeneration:
    """Greedy generation of 4 tokens after "Hello world" with the installed CLI.

    The CLI's stdout cannot be trusted to hold the text: it prints through common/log.cpp's
    asynchronous worker thread, whose singleton is leaked on purpose and never flushed at
    exit (common/log.cpp:453-466, "this design may cause logs to be lost if not flushed
    before the program exits", llama.cpp #22142), and `main` in
    tools/completion/completion.cpp:949-954 returns without `common_log_flush`. With
    `-t 2` on 2 cores the compute threads spin and the process exits before the worker
    has run: measured here, stdout was empty in 5 of 8 runs and stderr lost everything
    after "load the model" as well. So the generated ids are read from the session file
    that `--prompt-cache-all` makes the main thread write synchronously before it
    returns (completion.cpp:941-945): prompt ids followed by the generated ids.
    """
    session = scratch / f"session-t{threads}.bin"
    session.unlink(missing_ok=True)
    extra = ["-no-cnv"] if cli == "llama-cli" else []  # upstream's CLI would start a chat
    run = subprocess.run(
        [str(bin_dir / cli), "-m", str(model), "-p", "Hello world", "-n", "4", "--temp", "0",
         "-t", str(threads), "--prompt-cache", str(session), "--prompt-cache-all", *extra],
        capture_output=True, encoding="utf-8", errors="replace",  # random weights: any bytes
        timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return CliGeneration(run.stdout, read_session_tokens(session))


def run_cli_and_harness(bin_dir: Path, cli: str, model: Path, out: Path) -> None:
    """The installed CLI loads a real GGUF and generates greedily what the harness does.

    The harness cannot lose output the way the CLI does: it links only libllama (no
    common/log), logs through its own synchronous callback, and writes each file with
    checked fwrite/fflush/fclose and a rename before `main` returns
    (harness/xtask_logits.cpp, `AtomicFile` and `run`)."""
    dumped = subprocess.run(
        [str(bin_dir / "xtask-logits"), "--model", str(model), "--prompt", "Hello world",
         "--out", str(out), "--n-predict", "4", "--threads", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr
    tokens = json.loads((out / "tokens.json").read_text())
    assert tokens["n_tokens"] == len(tokens["tokens"]) == 3  # <s> ▁Hello ▁world
    logits = (out / "logits.f32").stat().st_size
    assert logits == 4 * tokens["n_tokens"] * tokens["n_vocab"]
    continuation = json.loads((out / "continuation.json").read_text())["tokens"]
    assert len(continuation) == 4
    generated = generate_with_cli(bin_dir, cli, model, out, threads=2)
    prompt, rest = generated.tokens[: tokens["n_tokens"]], generated.tokens[tokens["n_tokens"] :]
    assert prompt == tokens["tokens"]
    # Upstream saves the last sampled id too (completion.cpp:943); the BitNet fork saves
    # only the evaluated ones (examples/main/main.cpp:922-925 at 406a5036): 4 or 3 ids.
    assert len(rest) >= 3 and rest == continuation[: len(rest)], (rest, continuation)
