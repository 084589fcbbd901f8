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

Nothing is removed under a writer's feet: a folder holding a lock file (`*.lock`, the
`filelock.FileLock` of download-model's `<file>.lock` and fetch-cpp's `.lock`) whose flock a
live process holds is refused as "in use", naming the holder. The listing and `--dry-run`
only ask (a shared flock tried and dropped: nothing is written or created); the removal
takes every such lock itself, now or never, and holds it until the folder is gone (and a
fetch-cpp build's `.lock` even when there was none), so a download or build that starts
meanwhile waits instead of writing into a folder being removed. The lock files go last,
so they guard the folder until the end. All or nothing: every selected folder is judged
again and its locks taken before the first one is removed, so a refusal (exit 2) leaves
every one of them as it was.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_xtask.errors import LockedError, UsageError, XtaskError

if TYPE_CHECKING:
    from bitnet_xtask.filelock import FileLock

#: The documented cache folders, relative to the working directory: models
#: (download-model --out, crossval's search, full-crossval --out, clean-cache --models)
#: and fixtures (gen-fixtures --output, full-crossval --fixtures-dir, clean-cache
#: --fixtures). The CLI's defaults come from here (`commands.options`).
MODELS_DIR = Path("models")
FIXTURES_DIR = Path("crossval") / "fixtures"

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

#: How a refusal for a lock that a live process holds begins (its hint: wait, not move).
IN_USE = "it is in use"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

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
    """Where `fetch-cpp` builds the C++ references, one directory each (`cpp.layout`)."""
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
    """Whether `directory` holds a regular `CACHEDIR.TAG` that xtask wrote (never read
    through a link, never from a FIFO: `fs.open_regular`)."""
    from bitnet_xtask.fs import open_regular, read_bounded

    try:
        fd = open_regular(directory / CACHEDIR_TAG)
    except (OSError, XtaskError):
        return False
    try:
        data = read_bounded(fd, _TAG_LIMIT)
    except OSError:
        return False
    finally:
        os.close(fd)
    text = (data or b"").decode("utf-8", "replace")
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


def walk(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Every entry below `folder`, depth first, symbolic links never followed and entries
    that vanish or cannot be read passed over: the one walk for sizes and for locks."""
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
            yield entry


def tree_size(path: Path) -> int:
    """Bytes allocated under `path`, never following symbolic links."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    total = info.st_blocks * 512
    if stat.S_ISDIR(info.st_mode):
        for entry in walk(path):
            with contextlib.suppress(OSError):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
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


def _protected() -> Iterator[tuple[Path, str, bool]]:
    """Every folder no removal may touch, in the order they are asked (so the same path is
    always refused for the same reason): the folder, the refusal, and whether what is
    inside it is protected too (the trees the OS owns) or only the folder and its parents."""
    for home in _homes():
        yield home, f"it is or holds the home directory {home}", False
    for path in _both(_working_directory()):
        yield path, f"it is or holds the working directory {path}", False
    for path in _both(cache_home()):
        yield path, f"it is or holds the cache home {path}", False
    for tree in SYSTEM_TREES:
        yield tree, f"{tree} belongs to the operating system", True
    for directory in (*SYSTEM_DIRS, Path(tempfile.gettempdir())):
        yield directory, f"it is or holds the system directory {directory}", False


def _protection(location: Path) -> str | None:
    """Why `location` may never be removed, whoever created it; None if it may."""
    if location == Path(location.anchor):
        return "it is the root of the file system"
    for folder, reason, inside_too in _protected():
        if _holds(location, folder) or (inside_too and _holds(folder, location)):
            return reason
    return None


def documented_caches() -> tuple[Path, ...]:
    """The locations the README names as xtask's caches, where they really are: the
    defaults `./models` and `./crossval/fixtures`, and `$XDG_CACHE_HOME/bitnet_cpp`."""
    cwd = _working_directory().resolve()
    return (cwd / MODELS_DIR, cwd / FIXTURES_DIR, cache_home().resolve() / "bitnet_cpp")


def _provenance(location: Path, is_link: bool) -> bool:
    """Whether `location` is, or is inside, a documented cache or a folder xtask tagged."""
    if any(_holds(cache, location) for cache in documented_caches()):
        return True
    start = location.parent if is_link else location
    return any(is_tagged(folder) for folder in (start, *start.parents))


def refusal(path: Path) -> str | None:
    """The one rule of clean-cache (see the module docstring): why `path` must not be
    removed, or None when it may be."""
    reason = _place_refusal(path)
    if reason is None and not path.is_symlink():
        reason = in_use(path)
    return reason


def refusal_hint(reason: str) -> str:
    """What to do about a refusal."""
    if reason.startswith(IN_USE):
        return "nothing was removed; wait for that process to finish (or stop it), then run again"
    return "nothing was removed; point --models/--fixtures at a cache folder xtask made"


def _place_refusal(path: Path) -> str | None:
    """`refusal()` for what `path` is and where it is (everything but its locks)."""
    found = _locate(path)
    if isinstance(found, str):
        return found
    location, is_link = found
    if reason := _protection(location):
        return reason
    if not _provenance(location, is_link):
        return (
            f"{location} is not a location xtask documents as a cache (./models, "
            "./crossval/fixtures, $XDG_CACHE_HOME/bitnet_cpp) nor one it created and tagged"
        )
    return None


def _locate(path: Path) -> tuple[Path, bool] | str:
    """Where the folder (or link) `path` really is and whether it is a link, or why it
    cannot be a cache folder at all: missing, not a directory, or nowhere resolvable."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "it does not exist"
    except OSError as exc:
        return f"it cannot be inspected ({exc.strerror})"
    is_link = stat.S_ISLNK(info.st_mode)
    if not is_link and not stat.S_ISDIR(info.st_mode):
        from bitnet_xtask.fs import file_kind

        return f"it is {file_kind(info.st_mode)}, not a directory (only cache folders are removed)"
    try:
        return _location(path, is_link), is_link
    except (OSError, RuntimeError) as exc:  # a link loop in its parents
        return f"its location cannot be resolved ({exc})"


def lock_files(folder: Path) -> list[Path]:
    """Every regular file named `*.lock` under `folder`, links never followed: the
    `<file>.lock` of download-model and the `.lock` of fetch-cpp (both `filelock.FileLock`)."""
    found: list[Path] = []
    for entry in walk(folder):
        with contextlib.suppress(OSError):
            if entry.name.endswith(".lock") and entry.is_file(follow_symlinks=False):
                found.append(Path(entry.path))
    return sorted(found)


def in_use(folder: Path) -> str | None:
    """Why `folder` is busy: the first lock file in it whose flock a live process holds
    (the kernel drops a flock when its holder dies, so a lock file left by a killed
    process does not count), or None. Only asks: takes nothing, writes nothing."""
    from bitnet_xtask.filelock import FileLock

    for path in lock_files(folder):
        try:
            holder = FileLock(path, timeout=0).holder()
        except XtaskError as exc:
            return f"its lock file {path} cannot be checked ({exc.message})"
        if holder is not None:
            return f"{IN_USE}: {path} is held by {holder}"
    return None


def _is_build(folder: Path) -> bool:
    """A fetch-cpp build folder: any directory in `<cache>/bitnet_cpp/` (`cpp.layout`)."""
    return folder.resolve().parent == cpp_cache_root().resolve()


def _take_locks(folder: Path, mine: set[Path]) -> list[tuple[FileLock, bool]]:
    """Take every lock in `folder`, now or never, plus a fetch-cpp build's `.lock` (created
    if absent): the locks and whether we created each. Those in `mine` (resolved paths,
    taken already for another selected entry) are skipped, and those taken are added to
    it. A live holder is a refusal (exit 2, nothing removed, the locks taken so far let go
    untouched)."""
    from bitnet_xtask.cpp.layout import LOCK
    from bitnet_xtask.filelock import FileLock

    taken: list[tuple[FileLock, bool]] = []
    found = lock_files(folder)
    wanted = [(path, False) for path in found]
    top = folder / LOCK
    if _is_build(folder) and top not in found:
        wanted.insert(0, (top, True))
    try:
        for path, create in wanted:
            if path.resolve() in mine:
                continue
            lock = FileLock(path, timeout=0)
            if lock.try_take(create=create):
                taken.append((lock, create))
                mine.add(path.resolve())
    except XtaskError as exc:
        _let_go(taken)
        reason = (
            f"{IN_USE}: {exc.message}"
            if isinstance(exc, LockedError)
            else f"a lock file in it cannot be taken ({exc.message})"
        )
        raise UsageError(f"refusing to delete {folder}: {reason}", refusal_hint(reason)) from None
    except BaseException:  # Ctrl-C: no lock file of ours left behind
        _let_go(taken)
        raise
    return taken


def _let_go(taken: list[tuple[FileLock, bool]]) -> None:
    """Release the locks; unlink only those we created (and only if still ours)."""
    for lock, created in reversed(taken):
        lock.release(unlink=created)


def _clear_except(folder: Path, keep: set[tuple[int, int]]) -> None:
    """Remove what is under `folder` except the files in `keep` (by device and inode) and
    the folders that hold them, so that the locks go last. Best effort: what is left, and
    why, is for the rmtree that follows; every step goes through a descriptor and never
    follows a link, as rmtree's do."""
    try:
        fd = os.open(folder, _DIRECTORY)
    except OSError:
        return
    try:
        _clear_fd(fd, keep)
    except RecursionError:  # a very deep tree: rmtree does the rest
        pass
    finally:
        os.close(fd)


def _clear_fd(fd: int, keep: set[tuple[int, int]]) -> None:
    try:
        with os.scandir(fd) as scan:
            entries = list(scan)
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if (info.st_dev, info.st_ino) in keep:
                continue
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(entry.name, dir_fd=fd)
                continue
            child = os.open(entry.name, _DIRECTORY, dir_fd=fd)
            try:
                found = os.fstat(child)
                if (found.st_dev, found.st_ino) == (info.st_dev, info.st_ino):
                    _clear_fd(child, keep)
            finally:
                os.close(child)
            os.rmdir(entry.name, dir_fd=fd)  # fails while it holds a kept lock: later


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
                f"refusing to delete {entry.path}: {entry.refused}", refusal_hint(entry.refused)
            )
    return chosen


CHANGED = "it changed since it was listed"


def _refuse(entry: CacheEntry, reason: str) -> UsageError:
    return UsageError(f"refusing to delete {entry.path}: {reason}", refusal_hint(reason))


def _claim(entry: CacheEntry, mine: set[Path]) -> list[tuple[FileLock, bool]]:
    """Judge `entry` again and take its locks (none for a link), or refuse (exit 2) with
    nothing taken: no writer can start in it from here until the locks are let go."""
    reason = _place_refusal(entry.path)
    if reason is None and _identity(entry.path) != entry.identity:
        reason = CHANGED
    if reason is not None:
        raise _refuse(entry, reason)
    if entry.is_link:
        return []
    taken = _take_locks(entry.path, mine)
    if _identity(entry.path) != entry.identity:  # again, now that no writer can start
        _let_go(taken)
        raise _refuse(entry, CHANGED)
    return taken


def _remove(entry: CacheEntry, taken: list[tuple[FileLock, bool]]) -> None:
    """Delete a claimed entry (its locks held by the caller, who lets them go)."""
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
    elif entry.path.is_symlink() or entry.path.exists():  # gone with an enclosing entry
        if taken:
            _clear_except(entry.path, {_identity(lock.path) for lock, _ in taken})
        _rmtree(entry.path, note)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise RemoveError(
            f"could not remove all of {entry.path}: {failures[0]}{more}",
            "check the permissions (or a read-only mount) and run clean-cache again",
        )


def _rmtree(path: Path, note: Callable[[str, BaseException], None]) -> None:
    # rmtree never follows links (fd-based, safe against a swap under our feet, on Linux).
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _f, where, exc: note(where, exc))
    else:
        shutil.rmtree(path, onerror=lambda _f, where, info: note(where, info[1]))


def remove_entries(selected: Iterable[CacheEntry], known: list[CacheEntry]) -> list[CacheEntry]:
    """Delete exactly the selected entries, each of which must be one we listed and one
    `refusal()` allows. All or nothing: every entry is judged again and every lock in
    every one taken before the first is removed, so a refusal (exit 2) removes nothing;
    the locks are held until the removals are done."""
    chosen = check_selection(selected, known)
    claimed: list[list[tuple[FileLock, bool]]] = []
    mine: set[Path] = set()
    try:
        for entry in chosen:
            claimed.append(_claim(entry, mine))
        removed = []
        for entry, taken in zip(chosen, claimed, strict=True):
            _remove(entry, taken)
            removed.append(entry)
        return removed
    finally:
        for taken in reversed(claimed):
            _let_go(taken)
