"""`build_reference()`: fetch, verify and build a pinned C++ reference, idempotently.

Layout, per reference, revision and backend, under `$XDG_CACHE_HOME/bitnet_cpp/` (the
name is `cpp.layout.directory_name`'s, the one rule crossval and nix/ read too):

```
<ref>-<rev>-<backend>[-native]/
  src/            the verified source tree (or a link to --source)
  build/          CMake + Ninja build directory
  bin/            the installed binaries and shared libraries
  build.log       every command and its output
  receipt.json    only after a successful build: pin, hash, flags, versions, binaries
                  (and for CUDA: toolkit, cuBLAS, VMM, the runtime major it needs)
  .lock           one builder at a time
```

The receipt records the inputs that define the build; a second run with the same
inputs finds it and does nothing. A failed build leaves no receipt, so the next run
builds again, and the error points at build.log. This module checks the request and
runs the steps; `cpp.toolchain` finds the tools, `cpp.compile` runs CMake and Ninja.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitnet_xtask import __version__
from bitnet_xtask.cpp import bitnet_kernels
from bitnet_xtask.cpp.compile import (
    BuildLog,
    CompileSteps,
    compile_reference,
    harness_hash,
    install,
)
from bitnet_xtask.cpp.cuda_toolkit import CudaToolkit, find_cuda_toolkit
from bitnet_xtask.cpp.layout import (
    COMMIT,
    LOCAL,
    LOCK,
    RECEIPT,
    REVISION,
    build_directory,
    pin_revision,
)
from bitnet_xtask.cpp.nar import NarError, nar_hash
from bitnet_xtask.cpp.pins import GITHUB, GithubPin, Pin, SdistPin, is_sri, load_pins
from bitnet_xtask.cpp.source import fetch_source
from bitnet_xtask.cpp.toolchain import check_environment, tool_version
from bitnet_xtask.errors import LockedError, NoSpaceError, UsageError
from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.filelock import FileLock
from bitnet_xtask.fs import atomic_write_text
from bitnet_xtask.inputs import MiB, read_json, read_text

if TYPE_CHECKING:
    from bitnet_xtask.gpu.elf import BinaryFacts

#: CMake's CUDA_ARCHITECTURES entries (CMake >= 3.18): a compute capability times ten,
#: optionally with nvcc's arch-specific `a` or family `f` suffix, optionally `-real` or
#: `-virtual`; or one of the keywords `all`, `all-major` (3.23) or `native` (3.24), alone.
_CUDA_ARCH = re.compile(r"^(?P<sm>[0-9]{2,3})[af]?(-real|-virtual)?$")
CUDA_ARCH_KEYWORDS = ("all", "all-major", "native")
CUDA_SM_RANGE = (50, 199)  # compute capability 5.0 (Maxwell, ggml's oldest) to 19.9
#: How long fetch-cpp waits for another fetch-cpp building the same directory.
BUILD_LOCK_TIMEOUT = 3600.0
RECEIPT_VERSION = 1


@dataclass(frozen=True)
class BuildRequest:
    """What to build and how; every field that changes the output is in the receipt."""

    ref: str = "llama.cpp"
    backend: str = "cpu"  # or "cuda", or "auto": cuda when preflight sees a CUDA GPU
    rev: str | None = None  # a tag or commit of the reference's GitHub repository
    hash: str | None = None  # the NAR hash that --rev's tree must have
    kernel: str = "i2_s"  # bitnet.cpp only
    cuda_archs: tuple[str, ...] = ()
    native: bool = False
    jobs: int | None = None
    force: bool = False
    clean: bool = False
    source: Path | None = None


@dataclass(frozen=True)
class BuildResult:
    """Where the build is, and whether this run did anything."""

    directory: Path
    receipt: dict[str, Any]
    built: bool

    @property
    def bin_dir(self) -> Path:
        """The installed binaries."""
        return self.directory / "bin"


def requested_revision(rev: str | None, tag: str | None) -> str | None:
    """`--rev COMMIT` or `--tag TAG`, checked before anything is fetched: a commit is
    7-40 hex digits (`--rev zzzz` would only fail later, as a download), a tag a plain
    ref name."""
    if rev is not None and tag is not None:
        raise UsageError("give --rev or --tag, not both")
    if rev is not None and not COMMIT.match(rev):
        raise UsageError(
            f"--rev {rev!r} is not a commit id (7 to 40 hex digits)",
            "give a commit like 0c1e57098 (or its full 40 digits); use --tag for a tag name",
        )
    if tag is not None and not REVISION.match(tag):
        raise UsageError(
            f"--tag {tag!r} is not a tag name",
            "letters, digits, '.', '_' and '-', starting with a letter or digit (like b6000)",
        )
    return rev if rev is not None else tag


def check_cuda_archs(archs: Sequence[str]) -> tuple[str, ...]:
    """The `--cuda-arch` values, each one CMake's CUDA_ARCHITECTURES accepts, checked
    before a 50 MB fetch and minutes of configuring find out."""
    for arch in archs:
        if arch in CUDA_ARCH_KEYWORDS:
            if len(archs) > 1:
                raise UsageError(f"--cuda-arch {arch} stands alone: give it without others")
            continue
        match = _CUDA_ARCH.match(arch)
        low, high = CUDA_SM_RANGE
        if match is None or not low <= int(match["sm"]) <= high:
            raise UsageError(
                f"--cuda-arch {arch!r} is not a CUDA architecture",
                f"give the compute capability times ten, {low} to {high} (90 for 9.0, 86, "
                "120), optionally with -real or -virtual, or one of "
                + ", ".join(CUDA_ARCH_KEYWORDS)
                + "; repeat --cuda-arch for several",
            )
    return tuple(archs)


def check_request(request: BuildRequest) -> BuildRequest:
    """Everything about the request that can be wrong, found before any download; the
    request with `backend="auto"` made `cuda` or `cpu`, as preflight finds. The user's
    own typo comes first, before the GPUs are asked."""
    check_cuda_archs(request.cuda_archs)
    if request.jobs is not None and request.jobs < 1:
        raise UsageError(f"--jobs {request.jobs} is not a positive number of jobs")
    if request.backend == "auto":
        request = _auto_backend(request)
    if request.cuda_archs and request.backend != "cuda":
        raise UsageError("--cuda-arch needs --backend cuda (or auto on a CUDA machine)")
    return request


def _auto_backend(request: BuildRequest) -> BuildRequest:
    """`cuda` when preflight sees a CUDA GPU, for the SM architectures of those it sees
    unless `--cuda-arch` named some (none when it cannot tell: then llama.cpp's default
    list applies); else `cpu`."""
    from bitnet_xtask.gpu.detect import detect_runtime

    cuda = detect_runtime().cuda
    if not cuda.available:
        return replace(request, backend="cpu")
    if request.cuda_archs:
        return replace(request, backend="cuda")
    found = {d.compute_capability.replace(".", "") for d in cuda.devices if d.compute_capability}
    return replace(request, backend="cuda", cuda_archs=check_cuda_archs(sorted(found)))


def resolve_pin(request: BuildRequest, pins: dict[str, Pin]) -> Pin:
    """The packaged pin, or the reference's GitHub repository at `--rev`/`--tag`, which
    must come with the NAR hash its tree is checked against."""
    if request.ref not in pins:
        raise UsageError(f"unknown reference {request.ref!r}", f"use one of {', '.join(pins)}")
    pin = pins[request.ref]
    if request.rev is None:
        if request.hash is not None:
            raise UsageError("--hash goes with --rev/--tag")
        return pin
    if not REVISION.match(request.rev):
        raise UsageError(f"--rev/--tag {request.rev!r} is not a commit or tag name")
    if isinstance(pin, GithubPin) and pin.submodules:
        raise UsageError(
            f"{request.ref} has submodules, whose commits a GitHub tarball does not record",
            "build another revision from a recursive checkout with --source DIR",
        )
    placeholder = "sha256-" + "A" * 43 + "="
    if request.hash is None:
        raise UsageError(
            "--rev/--tag needs --hash, the NAR hash of the tree",
            f"run once with any hash such as {placeholder}; the mismatch error shows the "
            "real one, to check against `nix-prefetch-url --unpack`",
        )
    if not is_sri(request.hash):
        raise UsageError(
            f"--hash {request.hash!r} is not a NAR hash in SRI form: expected sha256- "
            "followed by 43 base64 characters and '=' (sha256-...=)",
            f"copy it from `nix hash path` or a mismatch error, or run once with {placeholder}",
        )
    if isinstance(pin, GithubPin):
        owner, repo = pin.owner, pin.repo
    elif "owner" in pin.upstream and "repo" in pin.upstream:
        owner, repo = pin.upstream["owner"], pin.upstream["repo"]
    else:
        raise UsageError(f"the {request.ref} pin names no upstream GitHub repository")
    return GithubPin(request.ref, owner, repo, request.rev, str(request.hash))


def cmake_flags(request: BuildRequest, cuda: Sequence[str] = ()) -> list[str]:
    """Release, reproducible (no -march=native unless asked), only what we need; for
    CUDA, `cuda`: where cuBLAS and the driver library are (`CudaToolkit.cmake_flags`)."""
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DGGML_NATIVE={'ON' if request.native else 'OFF'}",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DBUILD_SHARED_LIBS=ON",
        # Binaries find their libraries next to themselves, so bin/ works on its own.
        "-DCMAKE_BUILD_RPATH=$ORIGIN",
    ]
    if request.ref == "bitnet.cpp":
        flags += bitnet_kernels.cmake_flags(request.kernel)
    if request.backend == "cuda":
        flags.append("-DGGML_CUDA=ON")
        if request.cuda_archs:
            flags.append(f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(request.cuda_archs)}")
        flags += cuda
    return flags


def _inputs(
    pin: Pin, request: BuildRequest, source_hash: str, toolkit: CudaToolkit | None,
    directory: Path,
) -> dict[str, Any]:  # fmt: skip
    kernel = {"kernel": request.kernel} if request.ref == "bitnet.cpp" else {}
    # The same paths may hold another toolkit release tomorrow: the release is an input.
    cuda = {"cuda_toolkit": toolkit.release} if toolkit is not None else {}
    return {
        **kernel,
        **cuda,
        "harness": harness_hash(),
        "ref": request.ref,
        # Where the bytes were downloaded from is not an input; what they are is.
        "pin": {k: v for k, v in pin.__dict__.items() if k not in ("submodules", "url")},
        "source": source_hash,
        "backend": request.backend,
        "cmake_flags": cmake_flags(request, toolkit.cmake_flags(directory) if toolkit else ()),
    }


def build_reference(
    request: BuildRequest,
    *,
    pins: dict[str, Pin] | None = None,
    reporter: Reporter | None = None,
    github: str | None = None,
) -> BuildResult:
    """Fetch, verify and build `request.ref`; a no-op when the receipt matches."""
    reporter = reporter or NullReporter()
    request = check_request(request)
    pin = resolve_pin(request, pins if pins is not None else load_pins())
    revision = LOCAL if request.source else pin_revision(pin)
    directory = build_directory(request.ref, revision, request.backend, native=request.native)
    writable_cache(directory)
    lock = FileLock(
        directory / LOCK, BUILD_LOCK_TIMEOUT, busy=_build_busy(directory), on_wait=reporter.info
    )
    with lock.held():
        if request.clean:  # under the lock: never under a concurrent build's feet
            _empty(directory)
        source_hash = "sha256:" + pin.sha256 if not isinstance(pin, GithubPin) else str(pin.hash)
        if request.source:
            # Generated files first, so that the hash of the tree we build is stable.
            _generate(request, request.source)
            source_hash = _source_hash(request.source)
        # Found here, under the lock: its paths and release are inputs of the build.
        toolkit = find_cuda_toolkit() if request.backend == "cuda" else None
        inputs = _inputs(pin, request, source_hash, toolkit, directory)
        receipt_path = directory / RECEIPT
        if receipt_path.is_file() and not request.force:
            receipt = _read_receipt(receipt_path)
            if receipt.get("inputs") == inputs:
                reporter.info(f"{request.ref} is up to date in {directory} (nothing to do)")
                point_latest(directory, cli_name(request.ref))
                return BuildResult(directory, receipt, built=False)
        receipt_path.unlink(missing_ok=True)
        return _build(request, pin, directory, inputs, toolkit, reporter, github)


def _empty(directory: Path) -> None:
    """`--clean`: everything in the build directory but its lock, which we hold."""
    for entry in directory.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _build_busy(directory: Path) -> Callable[[str], LockedError]:
    """What to say when another fetch-cpp still builds `directory` after our wait."""
    return lambda owner: LockedError(
        f"{directory} is being built by {owner} (waited {BUILD_LOCK_TIMEOUT:.0f} s)",
        "let that build finish (its result is reused), or stop it, then run again",
    )


def writable_cache(directory: Path) -> None:
    """Create the build directory and prove it writable, so that a read-only or full
    cache is one clear error before anything runs, not a traceback from a lock file."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A few KiB really written: on a full disk creating an empty file still works,
        # and the lock file's first write is what would fail (with a traceback).
        with tempfile.TemporaryFile(dir=directory, prefix=".write-test.") as probe:
            probe.write(bytes(4096))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(
                f"no space left for the fetch-cpp cache {directory}",
                "free some space, or set XDG_CACHE_HOME to a larger disk",
            ) from None
        raise UsageError(
            f"cannot write the fetch-cpp cache {directory}: {exc.strerror}",
            "builds go to $XDG_CACHE_HOME/bitnet_cpp: make it writable, or set "
            "XDG_CACHE_HOME to a writable directory",
        ) from None


def _source_hash(tree: Path) -> str:
    """The NAR hash of a `--source` tree; a tree Nix could not archive either (a FIFO,
    a socket, an unreadable file) is a usage error naming the entry."""
    try:
        return nar_hash(tree)
    except NarError as exc:
        raise UsageError(f"--source {tree}: {exc}", "remove that entry from the tree") from None
    except OSError as exc:
        where = exc.filename or tree
        raise UsageError(f"--source {tree}: cannot read {where}: {exc.strerror}") from None


def _read_receipt(path: Path) -> dict[str, Any]:
    """The build's receipt; one that cannot be read as a JSON object (a crash of another
    tool, a hand edit) only means the build is not known to be current."""
    try:
        receipt = read_json(path, what="build receipt", limit=64 * MiB)
    except UsageError:
        return {}
    return receipt if isinstance(receipt, dict) else {}


def _read_marker(path: Path) -> str | None:
    """`src.verified`, or None when it cannot be read as text: then verify again."""
    try:
        return read_text(path, what="source marker", limit=4096)
    except UsageError:
        return None


def cli_name(ref: str) -> str:
    """The CLI's installed name: bitnet.cpp's as the reference guide expects it."""
    return "bitnet-llama-cli" if ref == "bitnet.cpp" else "llama-cli"


def point_latest(directory: Path, cli: str) -> None:
    """`<cache>/bitnet_cpp/<cli>` -> the CLI of the build this run made or found: the
    path users of the reference guide look for (`~/.cache/bitnet_cpp/bitnet-llama-cli`).
    A relative link, replaced atomically."""
    link = directory.parent / cli
    staging = directory.parent / f".{cli}.{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(Path(directory.name) / "bin" / cli)
    staging.replace(link)


def _generate(request: BuildRequest, tree: Path) -> None:
    """bitnet.cpp's kernel code generation (what its setup_env.py does before CMake)."""
    if request.ref == "bitnet.cpp":
        try:
            bitnet_kernels.generate_kernels(tree, request.kernel, replace=not request.source)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        except (OSError, UsageError) as exc:  # a read-only --source checkout, say
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            raise UsageError(
                f"cannot write bitnet.cpp's generated kernel code into {tree} ({reason})",
                "give --source a writable checkout",
            ) from None


def _verified_source(
    pin: Pin, directory: Path, source_id: str, reporter: Reporter, github: str | None
) -> Path:
    """The unpacked, verified tree; kept between builds so a flag change recompiles only
    what changed (re-extracting would touch every file and rebuild all)."""
    marker = directory / "src.verified"
    subdir = pin.subdir if isinstance(pin, SdistPin) else ""
    tree = directory / "src" / subdir if subdir else directory / "src"
    if marker.is_file() and _read_marker(marker) == source_id and tree.is_dir():
        reporter.info(f"reusing the verified source in {directory / 'src'}")
        return tree
    marker.unlink(missing_ok=True)
    reporter.info(f"fetching {pin.name} ({source_id})")
    fetched = fetch_source(
        pin,
        directory / "src",
        downloads=directory / "downloads",
        reporter=reporter,
        github=github or GITHUB,
    )
    atomic_write_text(marker, fetched.verified)  # what was checked: source_id, proven
    return fetched.root


def _build(
    request: BuildRequest,
    pin: Pin,
    directory: Path,
    inputs: dict[str, Any],
    toolkit: CudaToolkit | None,
    reporter: Reporter,
    github: str | None,
) -> BuildResult:
    started = time.monotonic()
    tools = check_environment(request.ref, directory)
    if toolkit is not None:
        reporter.info(f"compiling with {toolkit.summary()}")
        toolkit.link_headers(directory)
    log = BuildLog(directory / "build.log")
    log.path.write_text(f"# bitnet-xtask {__version__} fetch-cpp {request.ref}\n")
    if request.source:
        source_root = request.source.resolve()
    else:
        source_root = _verified_source(pin, directory, str(inputs["source"]), reporter, github)
        _generate(request, source_root)
    steps = CompileSteps(tools, source_root, directory, inputs["cmake_flags"], request.jobs)
    cli = compile_reference(steps, request.ref, log, reporter)
    installed_cli = cli_name(request.ref)
    installed = install(directory, cli, installed_cli)
    if request.source:
        # Some builds write into their source tree (the 2024 llama.cpp generates
        # common/build-info.cpp there): record the tree as the next run will find it.
        inputs = {**inputs, "source": _source_hash(request.source)}
    receipt = _receipt(inputs, tools, cli, installed, toolkit, time.monotonic() - started)
    atomic_write_text(directory / RECEIPT, json.dumps(receipt, indent=2))
    reporter.info(f"built {request.ref} in {receipt['wall_seconds']} s: {directory / 'bin'}")
    point_latest(directory, installed_cli)
    return BuildResult(directory, receipt, built=True)


def _receipt(
    inputs: dict[str, Any],
    tools: dict[str, str],
    cli: str,
    installed: list[Path],
    toolkit: CudaToolkit | None,
    seconds: float,
) -> dict[str, Any]:
    """What `receipt.json` records: the inputs that define the build (compared by the
    next run), and what it was built with and produced (for crossval's receipts)."""
    from bitnet_xtask.gpu.elf import read_binary

    binaries = [read_binary(path) for path in installed]
    cuda = {} if toolkit is None else {"cuda": {**toolkit.to_receipt(), **_needs(binaries)}}
    return {
        "version": RECEIPT_VERSION,
        "inputs": inputs,
        "tool": f"bitnet-xtask {__version__}",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": round(seconds, 1),
        "host": f"{platform.system()} {platform.machine()}",
        "compilers": {"cc": tool_version(tools["cc"]), "cxx": tool_version(tools["cxx"])},
        "cmake": tool_version(tools["cmake"]),
        "ninja": tool_version(tools["ninja"]),
        "cli_target": cli,
        "binaries": [binary.to_dict() for binary in binaries],
        **cuda,
    }


def _needs(binaries: list[BinaryFacts]) -> dict[str, Any]:
    """The CUDA runtime the built binaries load, as preflight will judge it."""
    from bitnet_xtask.gpu.fit import runtime_need

    needs = {b.path.name: need for b in binaries if (need := runtime_need(b)) is not None}
    return {
        "runtime_major": max((need.release.major for need in needs.values()), default=None),
        "runtime_evidence": {name: need.evidence for name, need in sorted(needs.items())},
    }
