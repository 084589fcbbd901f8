"""The CMake + Ninja side of a fetch-cpp build: configure, build only what is needed (the
`llama` library, one CLI, the xtask-logits harness against them), install into `bin/`,
every command and its output appended to `build.log`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bitnet_xtask.errors import XtaskError
from bitnet_xtask.events import Reporter

#: The CLI targets, in order of preference: their names move between llama.cpp versions.
CLI_TARGETS = ("llama-cli", "llama-completion", "llama-simple")
HARNESS_DIR = Path(__file__).parent / "harness"
HARNESS = "xtask-logits"


class BuildError(XtaskError):
    """CMake or Ninja failed (exit 1); the message points at build.log."""


class BuildLog:
    """build.log: every command line and its combined output, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, argv: Sequence[str]) -> str:
        with self.path.open("a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            process = subprocess.run(
                list(argv),
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


def resolve_cli_target(ninja: str, build: Path, log: BuildLog) -> str:
    """Tool names move between llama.cpp versions: ask the configured build."""
    listing = log.run([ninja, "-C", str(build), "-t", "targets", "all"])
    targets = {line.split(":", 1)[0].strip() for line in listing.splitlines()}
    for name in CLI_TARGETS:
        if name in targets:
            return name
    raise BuildError(f"no CLI target among {', '.join(CLI_TARGETS)}", f"see {log.path}")


def install(directory: Path, cli: str, installed_cli: str) -> list[Path]:
    """Copy the CLI (as `installed_cli`), the harness and the shared libraries (their
    version symlinks kept as links) to `bin/`; returns the real files."""
    build, harness = directory / "build", directory / "harness-build"
    bin_dir = directory / "bin"
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
    executables = {build / "bin" / cli: installed_cli, harness / "bin" / HARNESS: HARNESS}
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


@dataclass(frozen=True)
class CompileSteps:
    """What the CMake and Ninja runs of one build need."""

    tools: dict[str, str]  # cmake, ninja, cc, cxx (toolchain.check_environment)
    source_root: Path
    directory: Path  # the build directory: build/ and harness-build/ go there
    cmake_flags: list[str]
    jobs: int | None


def compile_reference(steps: CompileSteps, ref: str, log: BuildLog, reporter: Reporter) -> str:
    """Configure and build the `llama` library and one CLI into `build/`, then the harness
    against them into `harness-build/`; returns the CLI's target name."""
    tools = steps.tools
    build, harness = steps.directory / "build", steps.directory / "harness-build"
    toolchain = [
        "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}",
        f"-DCMAKE_C_COMPILER={tools['cc']}", f"-DCMAKE_CXX_COMPILER={tools['cxx']}",
    ]  # fmt: skip
    reporter.info(f"configuring {ref} with CMake + Ninja (log: {log.path})")
    log.run([tools["cmake"], "-S", str(steps.source_root), "-B", str(build), *toolchain,
             *steps.cmake_flags])  # fmt: skip
    cli = resolve_cli_target(tools["ninja"], build, log)
    jobs = ["-j", str(steps.jobs)] if steps.jobs else []
    reporter.info(f"building llama and {cli}")
    log.run([tools["ninja"], "-C", str(build), *jobs, "llama", cli])
    reporter.info(f"building the harness ({HARNESS}) against it")
    log.run(
        [
            tools["cmake"], "-S", str(HARNESS_DIR), "-B", str(harness), *toolchain,
            "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_BUILD_RPATH=$ORIGIN",
            # For bitnet.cpp this is the BitNet checkout, whose fork needs its headers.
            f"-DLLAMA_CPP_DIR={steps.source_root}", f"-DLLAMA_BUILD_DIR={build}",
        ]
    )  # fmt: skip
    log.run([tools["ninja"], "-C", str(harness), *jobs])
    return cli
