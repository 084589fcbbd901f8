"""Where bitnet-xtask keeps things between runs, by the platform's conventions."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """`$XDG_CACHE_HOME`, default `~/.cache`."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


def cpp_cache_root() -> Path:
    """The C++ reference builds of `fetch-cpp`: `<cache>/bitnet_cpp/<ref>-<rev>-<backend>/`."""
    return cache_home() / "bitnet_cpp"


def built_binaries() -> list[Path]:
    """Every file in the `bin/` of every fetch-cpp build (preflight's default)."""
    return sorted(p for p in cpp_cache_root().glob("*/bin/*") if p.is_file())
