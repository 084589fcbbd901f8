"""`build_reference()`: fetch, verify and build a pinned C++ reference, idempotently.

Layout, per reference, revision and backend, under `$XDG_CACHE_HOME/bitnet_cpp/`:

```
<ref>-<rev>-<backend>/
  src/            the verified source tree (or a link to --source)
  build/          CMake + Ninja build directory
  bin/            the installed binaries and shared libraries
  build.log       every command and its output
  receipt.json    only after a successful build: pin, hash, flags, versions, binaries
  .lock           one builder at a time
```

The receipt records the inputs that define the build; a second run with the same
inputs finds it and does nothing. A failed build leaves no receipt, so the next run
builds again, and the error points at build.log.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet_xtask import __version__
from bitnet_xtask.cache import cpp_cache_root
from bitnet_xtask.cpp import bitnet_kernels
from bitnet_xtask.cpp.nar import NarError, nar_hash
from bitnet_xtask.cpp.pins import GithubPin, Pin, SdistPin, is_sri, load_pins
from bitnet_xtask.cpp.source import GITHUB, fetch_source
from bitnet_xtask.download.store import FileLock, atomic_write_text, ensure_space
from bitnet_xtask.errors import NoSpaceError, UsageError, XtaskError
from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.inputs import MiB, read_json, read_text

_REV_OR_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: A git commit id, abbreviated (git's minimum is 4, its default 7) or full (40 hex).
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")
#: CMake's CUDA_ARCHITECTURES entries (CMake >= 3.18): a compute capability times ten,
#: optionally with nvcc's arch-specific `a` or family `f` suffix, optionally `-real` or
#: `-virtual`; or one of the keywords `all`, `all-major` (3.23) or `native` (3.24), alone.
_CUDA_ARCH = re.compile(r"^(?P<sm>[0-9]{2,3})[af]?(-real|-virtual)?$")
CUDA_ARCH_KEYWORDS = ("all", "all-major", "native")
CUDA_SM_RANGE = (50, 199)  # compute capability 5.0 (Maxwell, ggml's oldest) to 19.9
CLI_TARGETS = ("llama-cli", "llama-completion", "llama-simple")
HARNESS_DIR = Path(__file__).parent / "harness"
BUILD_SPACE_BYTES = 2 << 30
RECEIPT_VERSION = 1


class BuildError(XtaskError):
    """CMake or Ninja failed (exit 1); the message points at build.log."""


@dataclass(frozen=True)
class BuildRequest:
    """What to build and how; every field that changes the output is in the receipt."""

    ref: str = "llama.cpp"
    backend: str = "cpu"
    rev: str | None = None  # a tag or commit of the reference's GitHub repository
    hash: str | None = None  # the NAR hash that --rev's tree must have
    kernel: str = "i2_s"  # bitnet.cpp only
    cuda_archs: tuple[str, ...] = ()
    native: bool = False
    jobs: int | None = None
    force: bool = False
    clean: bool = False
    source: Path | None = None
    extra_cmake: tuple[str, ...] = field(default=())


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
    if rev is not None and not _COMMIT.match(rev):
        raise UsageError(
            f"--rev {rev!r} is not a commit id (7 to 40 hex digits)",
            "give a commit like 0c1e57098 (or its full 40 digits); use --tag for a tag name",
        )
    if tag is not None and not _REV_OR_TAG.match(tag):
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


def check_request(request: BuildRequest) -> None:
    """Everything about the request that can be wrong, found before any download."""
    if request.cuda_archs and request.backend != "cuda":
        raise UsageError("--cuda-arch needs --backend cuda (or auto on a CUDA machine)")
    check_cuda_archs(request.cuda_archs)
    if request.jobs is not None and request.jobs < 1:
        raise UsageError(f"--jobs {request.jobs} is not a positive number of jobs")


def revision(pin: Pin) -> str:
    """The short revision that names the build directory."""
    return pin.rev[:12] if isinstance(pin, GithubPin) else pin.upstream.get("rev", pin.version)


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
    if not _REV_OR_TAG.match(request.rev):
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


def build_tools() -> dict[str, str]:
    """The pinned CMake and Ninja from PyPI, found next to this interpreter's packages."""
    found: dict[str, str] = {}
    try:
        import cmake

        found["cmake"] = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        pass
    try:
        import ninja

        found["ninja"] = str(Path(ninja.BIN_DIR) / "ninja")
    except ImportError:
        pass
    for tool in ("cmake", "ninja"):
        if tool not in found and (path := shutil.which(tool)):
            found[tool] = path
    return found


def _compiler(variable: str, names: Sequence[str]) -> str | None:
    if chosen := os.environ.get(variable):
        # `CC="ccache gcc"` is common: the compiler is the command's first word.
        return shutil.which(shlex.split(chosen)[0]) if chosen.strip() else None
    return next((path for name in names if (path := shutil.which(name))), None)


def _clang(variable: str, name: str) -> str | None:
    """$CC/$CXX when it names a Clang (a Nix or distro shell often sets gcc), else clang."""
    chosen = os.environ.get(variable, "")
    if "clang" in Path(chosen).name:
        return shutil.which(chosen)
    return shutil.which(name)


def check_environment(request: BuildRequest, directory: Path) -> dict[str, str]:
    """Name the missing piece before any time is spent (makefile-discipline)."""
    tools = build_tools()
    missing = [tool for tool in ("cmake", "ninja") if tool not in tools]
    if request.ref == "bitnet.cpp":  # its CMakeLists refuses anything but Clang
        cc, cxx = _clang("CC", "clang"), _clang("CXX", "clang++")
        c_names, cxx_names = "clang (bitnet.cpp needs Clang)", "clang++"
    else:
        cc, cxx = (
            _compiler("CC", ("cc", "gcc", "clang")),
            _compiler("CXX", ("c++", "g++", "clang++")),
        )
        c_names, cxx_names = "a C compiler (cc/gcc/clang)", "a C++ compiler (c++/g++/clang++)"
    if cc is None:
        missing.append(f"{c_names} or $CC")
    else:
        tools["cc"] = cc
    if cxx is None:
        missing.append(f"{cxx_names} or $CXX")
    else:
        tools["cxx"] = cxx
    if request.backend == "cuda":
        if nvcc := shutil.which("nvcc"):
            tools["nvcc"] = nvcc
        else:
            missing.append("nvcc (the CUDA toolkit) for --backend cuda")
    if missing:
        raise UsageError(
            "cannot build: missing " + ", ".join(missing),
            "install it (cmake and ninja come with `pip install bitnet-xtask`)",
        )
    ensure_space(directory.parent if not directory.exists() else directory, BUILD_SPACE_BYTES)
    return tools


def _version(tool: str) -> str:
    try:
        out = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def cmake_flags(request: BuildRequest) -> list[str]:
    """Release, reproducible (no -march=native unless asked), only what we need."""
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
    return [*flags, *request.extra_cmake]


class _Log:
    """build.log: every command line and its combined output, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, argv: Sequence[str], cwd: Path | None = None) -> str:
        with self.path.open("a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            process = subprocess.run(
                list(argv),
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                check=False,
            )
            log.write(process.stdout)
        if process.returncode != 0:
            tail = "\n".join(process.stdout.strip().splitlines()[-15:])
            raise BuildError(
                f"`{Path(argv[0]).name} {' '.join(argv[1:3])} ...` failed "
                f"(exit {process.returncode}):\n{tail}",
                f"the full log is {self.path}",
            )
        return process.stdout


def resolve_cli_target(ninja: str, build: Path, log: _Log) -> str:
    """Tool names move between llama.cpp versions: ask the configured build."""
    listing = log.run([ninja, "-C", str(build), "-t", "targets", "all"])
    targets = {line.split(":", 1)[0].strip() for line in listing.splitlines()}
    for name in CLI_TARGETS:
        if name in targets:
            return name
    raise BuildError(f"no CLI target among {', '.join(CLI_TARGETS)}", f"see {log.path}")


def _install(build: Path, bin_dir: Path, executables: dict[Path, str]) -> list[Path]:
    """Copy the executables (renamed where asked) and the shared libraries (their version
    symlinks kept as links) to bin/; returns the real files."""
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    bin_dir.mkdir(parents=True)
    installed = []
    # Upstream puts libraries in build/bin; BitNet's 2024 fork next to their sources.
    libraries = [p for p in build.rglob("lib*.so*") if "CMakeFiles" not in p.parts]
    for library in sorted(libraries, key=lambda p: p.name):
        copied = Path(shutil.copy2(library, bin_dir / library.name, follow_symlinks=False))
        if not copied.is_symlink():
            installed.append(copied)
    for source, name in executables.items():
        installed.append(Path(shutil.copy2(source, bin_dir / name)))
    return installed


def harness_hash() -> str:
    """The harness's sources are a build input: changing them rebuilds it."""
    digest = hashlib.sha256()
    for path in sorted(HARNESS_DIR.iterdir()):
        if path.suffix in (".cpp", ".txt"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _inputs(pin: Pin, request: BuildRequest, source_hash: str) -> dict[str, Any]:
    kernel = {"kernel": request.kernel} if request.ref == "bitnet.cpp" else {}
    return {
        **kernel,
        "harness": harness_hash(),
        "ref": request.ref,
        # Where the bytes were downloaded from is not an input; what they are is.
        "pin": {k: v for k, v in pin.__dict__.items() if k not in ("submodules", "url")},
        "source": source_hash,
        "backend": request.backend,
        "cmake_flags": cmake_flags(request),
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
    check_request(request)
    pin = resolve_pin(request, pins if pins is not None else load_pins())
    tag = "local" if request.source else revision(pin)
    variant = f"{request.backend}-native" if request.native else request.backend
    directory = cpp_cache_root() / f"{request.ref}-{tag}-{variant}"
    writable_cache(directory)
    with FileLock(directory / ".lock", timeout=3600, on_wait=reporter.info).held():
        if request.clean:  # under the lock: never under a concurrent build's feet
            for entry in directory.iterdir():
                if entry.name == ".lock":
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        receipt_path = directory / "receipt.json"
        source_hash = "sha256:" + pin.sha256 if not isinstance(pin, GithubPin) else str(pin.hash)
        if request.source:
            # Generated files first, so that the hash of the tree we build is stable.
            _generate(request, request.source)
            source_hash = _source_hash(request.source)
        inputs = _inputs(pin, request, source_hash)
        if receipt_path.is_file() and not request.force:
            receipt = _read_receipt(receipt_path)
            if receipt.get("inputs") == inputs:
                reporter.info(f"{request.ref} is up to date in {directory} (nothing to do)")
                point_latest(directory, cli_name(request.ref))
                return BuildResult(directory, receipt, built=False)
        receipt_path.unlink(missing_ok=True)
        return _build(request, pin, directory, inputs, reporter, github)


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
        if exc.errno == errno.ENOSPC:
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
    atomic_write_text(marker, source_id)
    return fetched.root


def _build(
    request: BuildRequest,
    pin: Pin,
    directory: Path,
    inputs: dict[str, Any],
    reporter: Reporter,
    github: str | None,
) -> BuildResult:
    started = time.monotonic()
    tools = check_environment(request, directory)
    log = _Log(directory / "build.log")
    log.path.write_text(f"# bitnet-xtask {__version__} fetch-cpp {request.ref}\n")
    if request.source:
        source_root = request.source.resolve()
    else:
        source_root = _verified_source(pin, directory, str(inputs["source"]), reporter, github)
        _generate(request, source_root)
    build = directory / "build"
    reporter.info(f"configuring {request.ref} with CMake + Ninja (log: {log.path})")
    log.run(
        [
            tools["cmake"], "-S", str(source_root), "-B", str(build), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}",
            f"-DCMAKE_C_COMPILER={tools['cc']}", f"-DCMAKE_CXX_COMPILER={tools['cxx']}",
            *cmake_flags(request),
        ]
    )  # fmt: skip
    cli = resolve_cli_target(tools["ninja"], build, log)
    jobs = ["-j", str(request.jobs)] if request.jobs else []
    reporter.info(f"building llama and {cli}")
    log.run([tools["ninja"], "-C", str(build), *jobs, "llama", cli])
    harness = directory / "harness-build"
    reporter.info("building the harness (xtask-logits) against it")
    log.run(
        [
            tools["cmake"], "-S", str(HARNESS_DIR), "-B", str(harness), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}",
            f"-DCMAKE_C_COMPILER={tools['cc']}", f"-DCMAKE_CXX_COMPILER={tools['cxx']}",
            "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_BUILD_RPATH=$ORIGIN",
            # For bitnet.cpp this is the BitNet checkout, whose fork needs its headers.
            f"-DLLAMA_CPP_DIR={source_root}", f"-DLLAMA_BUILD_DIR={build}",
        ]
    )  # fmt: skip
    log.run([tools["ninja"], "-C", str(harness), *jobs])
    installed_cli = cli_name(request.ref)
    installed = _install(
        build,
        directory / "bin",
        {build / "bin" / cli: installed_cli, harness / "bin" / "xtask-logits": "xtask-logits"},
    )
    from bitnet_xtask.gpu.elf import read_binary

    if request.source:
        # Some builds write into their source tree (the 2024 llama.cpp generates
        # common/build-info.cpp there): record the tree as the next run will find it.
        inputs = {**inputs, "source": _source_hash(request.source)}
    receipt = {
        "version": RECEIPT_VERSION,
        "inputs": inputs,
        "tool": f"bitnet-xtask {__version__}",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": round(time.monotonic() - started, 1),
        "host": f"{platform.system()} {platform.machine()}",
        "compilers": {"cc": _version(tools["cc"]), "cxx": _version(tools["cxx"])},
        "cmake": _version(tools["cmake"]),
        "ninja": _version(tools["ninja"]),
        "cli_target": cli,
        "binaries": [read_binary(path).to_dict() for path in installed],
    }
    atomic_write_text(directory / "receipt.json", json.dumps(receipt, indent=2))
    reporter.info(f"built {request.ref} in {receipt['wall_seconds']} s: {directory / 'bin'}")
    point_latest(directory, installed_cli)
    return BuildResult(directory, receipt, built=True)
