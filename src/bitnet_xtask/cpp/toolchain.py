"""The tools a fetch-cpp build needs, found (and a missing one named) before any time
is spent: the pinned CMake and Ninja from PyPI, the compilers (Clang for bitnet.cpp,
whose CMakeLists refuses any other), and the disk space a build takes. (nvcc, cuBLAS and
the driver library for CUDA: `cpp.cuda_toolkit`.)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bitnet_xtask.errors import UsageError
from bitnet_xtask.fs import ensure_space

#: The free space a build must find before it starts (checked, not reserved).
BUILD_SPACE_BYTES = 2 << 30


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


def check_environment(ref: str, directory: Path) -> dict[str, str]:
    """Name the missing piece before any time is spent (makefile-discipline)."""
    tools = build_tools()
    missing = [tool for tool in ("cmake", "ninja") if tool not in tools]
    if ref == "bitnet.cpp":  # its CMakeLists refuses anything but Clang
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
    if missing:
        raise UsageError(
            "cannot build: missing " + ", ".join(missing),
            "install it (cmake and ninja come with `pip install bitnet-xtask`)",
        )
    ensure_space(
        directory,
        BUILD_SPACE_BYTES,
        headroom=0,
        hint="free some space, or set XDG_CACHE_HOME to a larger disk",
    )
    return tools


def tool_version(tool: str) -> str:
    """The first line of `tool --version`, for the receipt."""
    try:
        out = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"
