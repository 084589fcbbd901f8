"""Where bitnet-xtask keeps things between runs, and how they are cleaned up.

`clean-cache` removes a folder only when one rule, `refusal()`, finds no reason not to;
`--dry-run`, the interactive prompt and `--yes` all ask it, so a dry run shows exactly
what `--yes` would do. The rule, in order:

- only a directory (or a symbolic link, which is removed as a link, never followed) is
  ever removed: a regular file, FIFO, device or socket given as `--models` is refused;
- never the file system root, never the home directory (`$HOME`, and every user's home
  in the password database), the working directory or the cache home, nor any folder
  that holds one of them: `--models ..` or the directory of all homes is refused;
- never a system directory (`/etc`, `/usr`, `/tmp`, `/var`, `/home`, ...) and nothing
  inside the trees the OS owns outright (`/usr`, `/etc`, `/bin`, `/proc`, ...);
- and only a location xtask documents as its cache (`./models`, `./crossval/fixtures`,
  `$XDG_CACHE_HOME/bitnet_cpp/`, or anything inside them), or one xtask created and
  tagged as its own with a `CACHEDIR.TAG` (the Cache Directory Tagging Specification,
  https://bford.info/cachedir/: the signature line, then our comment), or anything
  inside such a folder.

Paths are judged where they really are (symbolic links in their parents resolved), and
the folder is checked again just before removal: one that changed since it was listed
(another inode) is not removed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bitnet_xtask.errors import UsageError, XtaskError

#: The Cache Directory Tagging Specification's file name and first line.
CACHEDIR_TAG = "CACHEDIR.TAG"
TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
_TAG_OWNER = "bitnet-xtask"
_TAG_TEXT = (
    f"{TAG_SIGNATURE}\n"
    f"# This file is a cache directory tag created by {_TAG_OWNER}: `xtask clean-cache`\n"
    "# may remove this directory. For information about cache directory tags, see\n"
    "#\thttps://bford.info/cachedir/\n"
)
_TAG_LIMIT = 4096

#: Trees the operating system owns: nothing at or inside them is ever a cache of ours.
SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
        "/sbin", "/sys", "/usr", "/nix/store", "/System", "/Library", "/Applications",
        "/private/etc",
    )
)  # fmt: skip
#: Directories the system or its users share: refused themselves (and, as every folder
#: that holds one, their parents), while a cache inside them (`/tmp/x`, `/srv/models`)
#: may be removed.
SYSTEM_DIRS = tuple(
    Path(p)
    for p in (
        "/home", "/root", "/tmp", "/var", "/var/tmp", "/var/cache", "/var/lib", "/run",
        "/opt", "/srv", "/mnt", "/media", "/snap", "/nix", "/Users", "/Volumes",
        "/private", "/private/tmp", "/private/var",
    )
)  # fmt: skip


def cache_home() -> Path:
    """`$XDG_CACHE_HOME`, default `~/.cache`."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


def cpp_cache_root() -> Path:
    """The C++ reference builds of `fetch-cpp`: `<cache>/bitnet_cpp/<ref>-<rev>-<backend>/`."""
    return cache_home() / "bitnet_cpp"


def built_bin_dirs() -> list[Path]:
    """The `bin/` folder of every fetch-cpp build (what preflight checks by default)."""

    def is_dir(path: Path) -> bool:
        try:
            return stat.S_ISDIR(path.stat().st_mode)
        except OSError:
            return False

    return sorted(p for p in cpp_cache_root().glob("*/bin") if is_dir(p))


def tag_cache_dir(directory: Path) -> None:
    """Mark `directory`, which xtask just created, as a cache of ours (`CACHEDIR.TAG`), so
    that `clean-cache` may remove it later; backup tools that honour the tag skip it. An
    existing tag (ours or not) is left alone, and the tag is never written through a link.
    It is best effort: a tag that cannot be written (a full disk) costs only that
    clean-cache will refuse the folder, so the job that made it is not failed for it."""
    tag = directory / CACHEDIR_TAG
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tag, flags, 0o644)
    except OSError:  # there already (ours or not), or cannot be created
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_TAG_TEXT)
    except OSError:
        with contextlib.suppress(OSError):
            tag.unlink()


def tag_created(created: Sequence[Path], root: Path) -> None:
    """Tag the highest of the folders a command just `created` that is `root` or inside
    it: `--out /data/models` made from nothing is tagged at `/data/models`, and only the
    `org-model/` inside an existing `--out` is. Folders that already existed never are."""
    ours = [p for p in created if p == root or root in p.parents]
    if ours:
        tag_cache_dir(min(ours, key=lambda p: len(p.parts)))


def make_cache_dir(directory: Path, *, root: Path | None = None) -> None:
    """`mkdir -p directory`, tagging the highest folder it creates at or below `root`
    (default: `directory` itself) as ours (`tag_created`)."""
    missing = [p for p in (directory, *directory.parents) if not os.path.lexists(p)]
    directory.mkdir(parents=True, exist_ok=True)
    tag_created(missing, directory if root is None else root)


def is_tagged(directory: Path) -> bool:
    """Whether `directory` holds a regular `CACHEDIR.TAG` that xtask wrote."""
    tag = directory / CACHEDIR_TAG
    try:
        fd = os.open(tag, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        text = os.read(fd, _TAG_LIMIT).decode("utf-8", "replace")
    except OSError:
        return False
    finally:
        os.close(fd)
    lines = text.splitlines()
    return bool(lines) and lines[0] == TAG_SIGNATURE and _TAG_OWNER in text


@dataclass(frozen=True)
class CacheEntry:
    """One thing clean-cache can remove, and why it may not (`refused`, else None)."""

    name: str
    path: Path
    size: int
    is_link: bool = False
    refused: str | None = None
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) when listed

    @property
    def removable(self) -> bool:
        """What `--yes` would do with it."""
        return self.refused is None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "path": str(self.path),
            "bytes": self.size,
            "link": self.is_link,
            "removable": self.removable,
            "refused": self.refused,
        }


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


def _working_directory() -> Path:
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise UsageError(
            "the working directory no longer exists", "cd to an existing directory first"
        ) from None


def _both(path: Path) -> list[Path]:
    """A path as written (made absolute) and as it really is (links resolved)."""
    return sorted({Path(os.path.normpath(path.absolute())), path.resolve()})


def _location(path: Path, is_link: bool) -> Path:
    """Where the thing removed really is: a link's own place, else the resolved folder."""
    return path.parent.resolve() / path.name if is_link else path.resolve()


def _holds(folder: Path, path: Path) -> bool:
    """`folder` is `path` or one of its parents."""
    return folder == path or folder in path.parents


def _homes() -> list[Path]:
    """This user's home first (as written and resolved), then every user's, in order, so
    that the same path is always refused for the same reason."""
    mine = set(_both(Path.home()))
    if home := os.environ.get("HOME"):
        mine |= set(_both(Path(home)))
    others: set[Path] = set()
    with contextlib.suppress(OSError):  # no password database
        others = {Path(user.pw_dir) for user in pwd.getpwall() if user.pw_dir.startswith("/")}
    return sorted(mine) + sorted(others - mine)


def _protection(location: Path) -> str | None:
    """Why `location` may never be removed, whoever created it; None if it may."""
    if location == Path(location.anchor):
        return "it is the root of the file system"
    for home in _homes():
        if _holds(location, home):
            return f"it is or holds the home directory {home}"
    cwd = _working_directory()
    for path in _both(cwd):
        if _holds(location, path):
            return f"it is or holds the working directory {path}"
    for path in _both(cache_home()):
        if _holds(location, path):
            return f"it is or holds the cache home {path}"
    for tree in SYSTEM_TREES:
        if _holds(tree, location) or _holds(location, tree):
            return f"{tree} belongs to the operating system"
    for directory in (*SYSTEM_DIRS, Path(tempfile.gettempdir())):
        if _holds(location, directory):
            return f"it is or holds the system directory {directory}"
    return None


def documented_caches() -> tuple[Path, ...]:
    """The locations the README names as xtask's caches, where they really are: the
    defaults `./models` and `./crossval/fixtures`, and `$XDG_CACHE_HOME/bitnet_cpp`."""
    cwd = _working_directory().resolve()
    return (cwd / "models", cwd / "crossval" / "fixtures", cache_home().resolve() / "bitnet_cpp")


def _provenance(location: Path, is_link: bool) -> bool:
    """Whether `location` is, or is inside, a documented cache or a folder xtask tagged."""
    if any(_holds(cache, location) for cache in documented_caches()):
        return True
    start = location.parent if is_link else location
    return any(is_tagged(folder) for folder in (start, *start.parents))


def refusal(path: Path) -> str | None:
    """The one rule of clean-cache (see the module docstring): why `path` must not be
    removed, or None when it may be."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "it does not exist"
    except OSError as exc:
        return f"it cannot be inspected ({exc.strerror})"
    is_link = stat.S_ISLNK(info.st_mode)
    if not is_link and not stat.S_ISDIR(info.st_mode):
        from bitnet_xtask.download.store import file_kind

        return f"it is {file_kind(info.st_mode)}, not a directory (only cache folders are removed)"
    try:
        location = _location(path, is_link)
    except (OSError, RuntimeError) as exc:  # a link loop in its parents
        return f"its location cannot be resolved ({exc})"
    if reason := _protection(location):
        return reason
    if not _provenance(location, is_link):
        return (
            f"{location} is not a location xtask documents as a cache (./models, "
            "./crossval/fixtures, $XDG_CACHE_HOME/bitnet_cpp) nor one it created and tagged"
        )
    return None


def _identity(path: Path) -> tuple[int, int]:
    try:
        info = path.lstat()
    except OSError:
        return (0, 0)
    return (info.st_dev, info.st_ino)


def _entry(name: str, path: Path) -> CacheEntry:
    return CacheEntry(
        name,
        path,
        tree_size(path),
        path.is_symlink(),
        refused=refusal(path),
        identity=_identity(path),
    )


def cache_entries(models: Path, fixtures: Path) -> list[CacheEntry]:
    """What exists now: models, each fetch-cpp build, crossval fixtures; each judged."""
    candidates: list[tuple[str, Path]] = [("models", models)]
    cpp = cpp_cache_root()
    if cpp.is_dir() and not cpp.is_symlink():
        # fetch-cpp makes build folders and links there; anything else is not its cache.
        candidates += [
            (f"fetch-cpp {'link' if p.is_symlink() else 'build'} {p.name}", p)
            for p in sorted(cpp.iterdir())
            if p.is_symlink() or p.is_dir()
        ]
    else:
        candidates.append(("fetch-cpp builds", cpp))
    candidates.append(("crossval fixtures", fixtures))
    return [_entry(name, path) for name, path in candidates if path.is_symlink() or path.exists()]


class RemoveError(XtaskError):
    """A listed cache could not be (fully) removed (exit 1)."""


def check_selection(selected: Iterable[CacheEntry], known: list[CacheEntry]) -> list[CacheEntry]:
    """The selected entries, if every one was listed and may be removed; else a usage
    error (exit 2) naming the first refusal, before anything is removed."""
    known_paths = {entry.path for entry in known}
    chosen = list(selected)
    for entry in chosen:
        if entry.path not in known_paths:
            raise UsageError(f"{entry.path} is not one of the listed caches")
        if entry.refused is not None:
            raise UsageError(
                f"refusing to delete {entry.path}: {entry.refused}",
                "nothing was removed; point --models/--fixtures at a cache folder xtask made",
            )
    return chosen


def _remove(entry: CacheEntry) -> None:
    reason = refusal(entry.path)
    if reason is None and _identity(entry.path) != entry.identity:
        reason = "it changed since it was listed"
    if reason is not None:
        raise UsageError(f"refusing to delete {entry.path}: {reason}")
    failures: list[str] = []

    def note(path: str, error: BaseException) -> None:
        failures.append(f"{path}: {getattr(error, 'strerror', None) or error}")

    if entry.is_link:
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            failures.append(f"{entry.path}: {exc.strerror}")
    # rmtree never follows links (fd-based, safe against a swap under our feet, on Linux).
    elif sys.version_info >= (3, 12):
        shutil.rmtree(entry.path, onexc=lambda _f, path, exc: note(path, exc))
    else:
        shutil.rmtree(entry.path, onerror=lambda _f, path, info: note(path, info[1]))
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise RemoveError(
            f"could not remove all of {entry.path}: {failures[0]}{more}",
            "check the permissions (or a read-only mount) and run clean-cache again",
        )


def remove_entries(selected: Iterable[CacheEntry], known: list[CacheEntry]) -> list[CacheEntry]:
    """Delete exactly the selected entries, each of which must be one we listed and one
    `refusal()` allows, judged again just before it goes."""
    removed = []
    for entry in check_selection(selected, known):
        _remove(entry)
        removed.append(entry)
    return removed
