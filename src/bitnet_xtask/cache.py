"""Where bitnet-xtask keeps things between runs, and how they are cleaned up.

`clean-cache` only ever deletes an entry it listed itself, from a fixed set of roots,
and never follows a symbolic link: a root that is a link is removed as a link, and
links inside a root are removed, not their targets.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bitnet_xtask.errors import UsageError


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


@dataclass(frozen=True)
class CacheEntry:
    """One thing clean-cache can remove."""

    name: str
    path: Path
    size: int
    is_link: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"name": self.name, "path": str(self.path), "bytes": self.size, "link": self.is_link}


def tree_size(path: Path) -> int:
    """Bytes allocated under `path`, never following symbolic links."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_blocks * 512
    total = info.st_blocks * 512
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                entry_info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += entry_info.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return total


def cache_entries(models: Path, fixtures: Path) -> list[CacheEntry]:
    """What exists now: models, each fetch-cpp build, crossval fixtures."""
    candidates: list[tuple[str, Path]] = [("models", models)]
    cpp = cpp_cache_root()
    if cpp.is_dir() and not cpp.is_symlink():
        candidates += [
            (f"fetch-cpp {'link' if p.is_symlink() else 'build'} {p.name}", p)
            for p in sorted(cpp.iterdir())
        ]
    else:
        candidates.append(("fetch-cpp builds", cpp))
    candidates.append(("crossval fixtures", fixtures))
    return [
        CacheEntry(name, path, tree_size(path), path.is_symlink())
        for name, path in candidates
        if path.is_symlink() or path.exists()
    ]


def _refuse(path: Path) -> None:
    """Never remove the file system root, a home directory, or a cache home itself."""
    resolved = path.resolve() if not path.is_symlink() else path.parent.resolve() / path.name
    protected = {Path("/"), Path.home().resolve(), cache_home().resolve(), Path.cwd().resolve()}
    if resolved in protected or len(resolved.parts) < 2:
        raise UsageError(f"refusing to delete {resolved}", "point --models/--fixtures elsewhere")


def remove_entries(selected: Iterable[CacheEntry], known: list[CacheEntry]) -> list[CacheEntry]:
    """Delete exactly the selected entries, each of which must be one we listed."""
    known_paths = {entry.path for entry in known}
    removed = []
    for entry in selected:
        if entry.path not in known_paths:
            raise UsageError(f"{entry.path} is not one of the listed caches")
        _refuse(entry.path)
        if entry.path.is_symlink() or not entry.path.is_dir():
            entry.path.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry.path)
        removed.append(entry)
    return removed
