"""The CUDA toolkit a `--backend cuda` build compiles with, and what it lacks.

ggml's CUDA backend needs nvcc, cuBLAS and, for its VMM memory pool, the driver library
`libcuda.so` (the pinned llama.cpp's ggml/src/ggml-cuda/CMakeLists.txt, lines 148-184:
`CUDA::cudart CUDA::cublas`, and `CUDA::cuda_driver` unless `GGML_CUDA_NO_VMM`). A
toolkit installed without cuBLAS (nvcc from a runfile or a pip wheel) is common, and
PyPI's cuBLAS wheels are not laid out as CMake's FindCUDAToolkit looks: `nvidia-cublas`
(CUDA 13) puts `include/cublas_v2.h` and `lib/libcublas.so.13` under `nvidia/cu13/`,
with no unversioned `libcublas.so`, so find_library() never sees it. This module looks
where FindCUDAToolkit looks (nvcc's own folders, `CUDAToolkit_ROOT`, `CUDA_PATH`,
`CMAKE_PREFIX_PATH`, the system's; a Nix build reaches nixpkgs' `libcublas` only through
`CUDAToolkit_ROOT`), then in PyPI's wheels, and hands CMake what it found by name
(`CUDA_cublas_LIBRARY`, `CUDA_cublasLt_LIBRARY`, `CUDA_cuda_driver_LIBRARY`, the
variables FindCUDAToolkit caches), so CMake builds with exactly that; a machine with no
driver library builds without VMM, and the receipt says so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_xtask.errors import UsageError
from bitnet_xtask.gpu.cuda_compat import pypi_distribution, pypi_requirement

_RELEASE = re.compile(r"release [0-9.]+, V([0-9]+(?:\.[0-9]+)+)")
_DRYRUN_VARIABLE = re.compile(r"^#\$ (\w+)=(.*)$")
#: Where FindCUDAToolkit also looks: roots from the environment, as CMake reads them
#: (`CUDAToolkit_ROOT` may be a CMake list; the others are search paths).
_ROOT_VARIABLES = ("CUDAToolkit_ROOT", "CUDA_PATH", "CMAKE_PREFIX_PATH")
_SYSTEM_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                        "/usr/lib64", "/usr/lib", "/usr/local/lib")  # fmt: skip
PROBE_TIMEOUT = 60.0
#: Where a build keeps links to a wheel's cuBLAS headers (and only those: the wheel's
#: include folder is shared with other NVIDIA wheels whose headers must not shadow nvcc's).
CUBLAS_HEADERS = "cublas-include"


@dataclass(frozen=True)
class Cublas:
    """cuBLAS and cuBLASLt for one CUDA major, and where they came from."""

    library: Path
    lt_library: Path
    source: str  # "the CUDA toolkit (<folder>)", "PyPI's nvidia-cublas 13.10.0.20"
    wheel_include: Path | None = None  # a wheel's headers, which CMake does not know of


@dataclass(frozen=True)
class CudaToolkit:
    """nvcc, its release, and the cuBLAS and driver library found for it."""

    nvcc: tuple[str, ...]  # the command, as $CUDACXX gives it (arguments kept)
    release: str  # "13.0.88", from `nvcc --version`
    cublas: Cublas
    driver_library: Path | None  # libcuda.so (a stub will do for linking); None: no VMM

    def cmake_flags(self, directory: Path) -> list[str]:
        """What CMake is told for a build in `directory`, so that it builds with what was
        found here (nvcc itself CMake finds as it always does: $CUDACXX, then PATH)."""
        flags = [
            f"-DCUDA_cublas_LIBRARY={self.cublas.library}",
            f"-DCUDA_cublasLt_LIBRARY={self.cublas.lt_library}",
        ]
        if self.cublas.wheel_include is not None:
            # _INIT: joined with $CUDAFLAGS rather than replacing it.
            headers = shlex.quote(str(directory / CUBLAS_HEADERS))
            flags.append(f"-DCMAKE_CUDA_FLAGS_INIT=-I{headers}")
        if self.driver_library is None:
            flags.append("-DGGML_CUDA_NO_VMM=ON")
        else:
            flags.append(f"-DCUDA_cuda_driver_LIBRARY={self.driver_library}")
        return flags

    def link_headers(self, directory: Path) -> None:
        """Links to the wheel's cuBLAS headers in `directory`'s CUBLAS_HEADERS folder."""
        if self.cublas.wheel_include is None:
            return
        folder = directory / CUBLAS_HEADERS
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for header in sorted(self.cublas.wheel_include.glob("cublas*.h")):
            (folder / header.name).symlink_to(header)

    def summary(self) -> str:
        """One line for the build's progress: what it compiles with, and without."""
        vmm = (
            f"driver library {self.driver_library}"
            if self.driver_library is not None
            else "no driver library here, so without VMM (GGML_CUDA_NO_VMM=ON)"
        )
        nvcc = shlex.join(self.nvcc)
        return f"CUDA {self.release} ({nvcc}), cuBLAS from {self.cublas.source}, {vmm}"

    def to_receipt(self) -> dict[str, Any]:
        """The receipt's `cuda` facts: toolkit, cuBLAS and its origin, VMM and why."""
        return {
            "nvcc": shlex.join(self.nvcc),
            "toolkit": self.release,
            "cublas": {"library": str(self.cublas.library), "source": self.cublas.source},
            "driver_library": None if self.driver_library is None else str(self.driver_library),
            "vmm": self.driver_library is not None,
        }


def find_cuda_toolkit(
    env: Mapping[str, str] | None = None, wheel_roots: Sequence[Path] | None = None
) -> CudaToolkit:
    """nvcc ($CUDACXX, as CMake reads it, or the PATH's), its folders as nvcc itself
    reports them (`--dryrun`: a wrapper script or a Nix-wrapped nvcc included), then
    cuBLAS (where FindCUDAToolkit looks, else a PyPI wheel's among `wheel_roots`: by
    default this Python's `nvidia` namespace package) and the driver library; a
    UsageError naming what is missing, where it was looked for, and how to get it."""
    env = os.environ if env is None else env
    if wheel_roots is None:
        spec = importlib.util.find_spec("nvidia")
        wheel_roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    nvcc = _nvcc(env)
    release = _release(nvcc)
    major = int(release.split(".")[0])
    libraries = _library_dirs(toolkit_folders(nvcc)[1], env)
    cublas = _installed_cublas(libraries) or _wheel_cublas(major, wheel_roots)
    if cublas is None:
        raise UsageError(
            f"cannot build --backend cuda: no cuBLAS for nvcc {release} ({shlex.join(nvcc)}):"
            f" no libcublas.so with libcublasLt.so in {', '.join(map(str, libraries))}, and "
            f"no {pypi_distribution('cublas', major)} wheel (CUDA {major}) in this Python",
            f"python -m pip install {shlex.quote(pypi_requirement('cublas', major))}, or "
            f"install the toolkit's cuBLAS (libcublas-dev-{major}-<minor> from NVIDIA's "
            "apt repository), or point CUDAToolkit_ROOT at a cuBLAS install",
        )
    return CudaToolkit(
        nvcc=nvcc,
        release=release,
        cublas=cublas,
        driver_library=_driver_library(libraries),
    )


def _nvcc(env: Mapping[str, str]) -> tuple[str, ...]:
    chosen = env.get("CUDACXX", "").strip()
    try:
        words = shlex.split(chosen)
    except ValueError as exc:
        raise UsageError(f"$CUDACXX={chosen!r} cannot be read as a command: {exc}") from None
    found = shutil.which(words[0]) if words else shutil.which("nvcc")
    if found is None:
        where = f" ($CUDACXX={chosen!r} is not a program)" if words else ""
        raise UsageError(
            f"cannot build: missing nvcc (the CUDA toolkit) for --backend cuda{where}",
            "install the CUDA toolkit (nvcc), or point $CUDACXX at its nvcc",
        )
    return (found, *words[1:])


def _run(nvcc: tuple[str, ...], *args: str) -> str:
    try:
        done = subprocess.run(
            [*nvcc, *args], capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run {nvcc[0]}: {exc}", "check the CUDA toolkit install") from None
    return done.stdout + done.stderr


def _release(nvcc: tuple[str, ...]) -> str:
    match = _RELEASE.search(_run(nvcc, "--version"))
    if match is None:
        raise UsageError(
            f"{nvcc[0]} --version names no CUDA release", "check that it is NVIDIA's nvcc"
        )
    return match[1]


def toolkit_folders(nvcc: tuple[str, ...]) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The include and library folders nvcc compiles and links with, from its own
    `--dryrun` (INCLUDES and LIBRARIES of nvcc.profile, already expanded)."""
    variables = {}
    for line in _run(nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull).splitlines():
        if match := _DRYRUN_VARIABLE.match(line):
            variables[match[1]] = match[2]

    def folders(variable: str, flag: str) -> tuple[Path, ...]:
        words = shlex.split(variables.get(variable, "").lstrip("=+ "))
        return tuple(Path(os.path.normpath(w[len(flag) :])) for w in words if w.startswith(flag))

    return folders("INCLUDES", "-I"), folders("LIBRARIES", "-L")


def _library_dirs(toolkit: Iterable[Path], env: Mapping[str, str]) -> tuple[Path, ...]:
    """Every folder searched for libraries, in order: nvcc's, those of the roots in the
    environment (lib64, lib, targets/*/lib), the system's; each once."""
    roots = [
        Path(root)
        for variable in _ROOT_VARIABLES
        for root in re.split(r"[;:]", env.get(variable, ""))
        if root
    ]
    below = [
        folder
        for root in roots
        for folder in (root / "lib64", root / "lib", *sorted(root.glob("targets/*/lib")))
    ]
    found = [*toolkit, *below, *map(Path, _SYSTEM_LIBRARY_DIRS)]
    return tuple(Path(f) for f in dict.fromkeys(os.path.normpath(f) for f in found))


def _installed_cublas(libraries: tuple[Path, ...]) -> Cublas | None:
    """cuBLAS where CMake would find it itself (never a `stubs/` folder's: nvcc.profile
    lists lib/stubs first, and those libraries link but do not run)."""
    for folder in libraries:
        if folder.name == "stubs":
            continue
        library, lt_library = folder / "libcublas.so", folder / "libcublasLt.so"
        if library.exists() and lt_library.exists():
            return Cublas(library, lt_library, f"the CUDA toolkit ({folder})")
    return None


def _wheel_cublas(major: int, wheel_roots: Sequence[Path]) -> Cublas | None:
    """PyPI's cuBLAS for `major`: `nvidia/cu13/` (nvidia-cublas, CUDA 13 and newer) or
    `nvidia/cublas/` (nvidia-cublas-cu12 and -cu11)."""
    for location in wheel_roots:
        for root in sorted(location.iterdir()) if location.is_dir() else []:
            library = root / "lib" / f"libcublas.so.{major}"
            lt_library = root / "lib" / f"libcublasLt.so.{major}"
            include = root / "include"
            if library.is_file() and lt_library.is_file() and (include / "cublas_v2.h").is_file():
                return Cublas(library, lt_library, f"PyPI's {_wheel_version(major)}", include)
    return None


def _wheel_version(major: int) -> str:
    """The installed distribution of `major`'s cuBLAS wheel, with its version when that
    is of `major` (nvidia-cublas 13.x and a later 14.x share one name)."""
    name = pypi_distribution("cublas", major)
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name} wheel"
    return f"{name} {version}" if version.split(".")[0] == str(major) else f"{name} wheel"


def _driver_library(libraries: tuple[Path, ...]) -> Path | None:
    """libcuda.so where FindCUDAToolkit would find it: the library folders and their
    stubs/ (a stub links; the driver's own libcuda.so.1 is loaded at run time); None when
    there is none (build without VMM)."""
    for folder in libraries:
        for candidate in (folder / "libcuda.so", folder / "stubs" / "libcuda.so"):
            if candidate.exists():
                return candidate
    return None
