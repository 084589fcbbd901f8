"""The package's file-system layer: atomic writes, durable renames, locks, free space,
hashing, and opening only what is a regular file (the lock is `bitnet_xtask.filelock`).

download/, cpp/, crossval/, fixtures/ and clean-cache all write through here, so each
rule is kept once: a rename only ever replaces an absent path or a regular file; a
file written in place is opened with `O_NOFOLLOW` and must have one hard link; a full
disk is exit 10; a FIFO or a device is refused before it can block or feed a read
forever. The words are neutral (no command's flags appear here): where a caller knows
what the user should do next, it passes that in (`space_hint`, a lock's `busy`, an
`UnwritableError`'s hint), so fetch-cpp's lock never tells anyone to raise a
download's `--lock-timeout` again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from bitnet_xtask.errors import NoSpaceError, UsageError, XtaskError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: What to do about a full disk, in words that fit every command.
NO_SPACE_HINT = "free some space and run the same command again"
Note = Callable[[str], None]


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a file is, in words, for a message."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def fs_error(exc: OSError, path: Path, space_hint: str = NO_SPACE_HINT) -> XtaskError:
    """An OSError on one of our files, as the documented error a user can act on."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"disk full while writing {path}: {reason}", space_hint)
    if exc.errno == errno.ELOOP:
        return UsageError(
            f"refusing to use {path}: it is a symbolic link", "remove it and run again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(f"cannot write {path}: {reason}", "use a writable directory")
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENXIO, errno.ENAMETOOLONG):
        return UsageError(f"cannot use {path}: {reason}")
    return XtaskError(f"cannot open {path}: {reason}")


def os_reason(error: XtaskError) -> str:
    """The system's own words for the OSError behind an `fs_error` ("Permission denied"),
    for a caller that words the rest itself; else the error's message."""
    cause = error.__cause__
    return (cause.strerror or str(cause)) if isinstance(cause, OSError) else error.message


class NotRegularFileError(UsageError):
    """`open_regular` found something else at the path; `kind` says what, in words, for a
    caller that words its own refusal ("... is a directory, not a binary")."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path, self.kind = path, file_kind(mode)
        super().__init__(
            f"refusing to use {path}: it is {self.kind}, not a regular file",
            "remove it (or use another path) and run again",
        )


def open_regular(
    path: Path,
    *,
    write: bool = False,
    create: bool = False,
    truncate: bool = False,
    follow_links: bool = False,
) -> int:
    """A descriptor on the regular file at `path`; the caller closes it.

    Opened with `O_NONBLOCK`, so a FIFO cannot block the open, and checked with fstat on
    the open descriptor (what is checked is what is used). Without `follow_links`,
    `O_NOFOLLOW` refuses a link at the last component: files we write, and sidecars we
    read, are ours, never a link (a user's input may be one: `follow_links=True`). A
    file opened to be written must have one hard link: a link to someone else's file
    would change with it. `truncate` empties the file only after these checks.

    A missing file (without `create`) raises FileNotFoundError, for the caller's words;
    something else at the path `NotRegularFileError`; every other problem the
    `fs_error` it is.
    """
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NONBLOCK | _CLOEXEC
    flags |= (0 if follow_links else os.O_NOFOLLOW) | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise fs_error(exc, path) from exc  # the cause: for a caller's own words
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(path, info.st_mode)
        if write and info.st_nlink > 1:
            raise UsageError(
                f"refusing to write {path}: it has {info.st_nlink} hard links, so another "
                "file would change with it",
                "remove it and run again",
            )
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except OSError as exc:
        os.close(fd)
        raise fs_error(exc, path) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(fd: int, limit: int) -> bytes | None:
    """At most `limit` bytes from the start of `fd`; None when the file holds more (by its
    size, or by what a read finds: it may grow while we look)."""
    if os.fstat(fd).st_size > limit:
        return None
    data = os.pread(fd, limit + 1, 0)
    return None if len(data) > limit else data


def read_small_text(path: Path, limit: int, note: Note | None = None) -> str | None:
    """A small file of ours (a sidecar, a lock), or None if absent or larger than `limit`
    bytes (`note` says so); never through a link, never from a FIFO. An oversized file is
    not read at all, not even its first `limit` bytes: what it starts with is not a file
    of ours, however well formed it looks."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    try:
        data = read_bounded(fd, limit)
    finally:
        os.close(fd)
    if data is None:
        note_oversized(path, limit, note)
        return None
    return data.decode("utf-8", "replace").strip() or None


def note_oversized(path: Path, limit: int, note: Note | None) -> None:
    """Say (with --verbose) why a file of ours that is too large to be one was ignored."""
    if note is None:
        return
    try:
        size = f"{path.lstat().st_size:,} bytes"
    except OSError:
        size = "too large"
    note(f"ignoring {path}: {size}, more than the {limit:,} a file of ours ever holds")


def refuse_unless_replaceable(path: Path) -> None:
    """A rename over `path` is safe only if it is absent or a regular file: renaming over
    a device (`--receipt /dev/null` as root), a FIFO or a symbolic link would replace that
    node, and over a directory it fails late. Refused with exit 2."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"refusing to replace {path}: it is {file_kind(mode)}, not a regular file",
            "give the path of a regular file (or of one that does not exist yet)",
        )


def temp_sibling(path: Path) -> Path:
    """The temp file an atomic write of `path` goes through: hidden, per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_writer(
    path: Path, *, checked: bool = False, space_hint: str = NO_SPACE_HINT
) -> Iterator[int]:
    """`with atomic_writer(path) as fd:` write to `fd`; on success it is fsynced and
    renamed over `path`, and the rename made durable: readers see old or new, never half.

    Only an absent path or a regular file is ever replaced (`refuse_unless_replaceable`;
    `checked=True` when the caller has just checked it itself); the temp file is created
    afresh (`O_EXCL | O_NOFOLLOW`), so a link planted at its name is never written
    through. On any failure the temp file is removed and `path` is untouched. Every
    OSError is an `XtaskError` in words that fit any caller (`fs_error`): a full disk is
    `NoSpaceError` (exit 10), a read-only or unwritable directory or a too-long name
    `UsageError` (exit 2); `space_hint` says what to do about a full disk."""
    if not checked:
        refuse_unless_replaceable(path)
    tmp = temp_sibling(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a crashed run's temp file (unlink never follows a link)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o644)
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise fs_error(exc, path, space_hint) from exc  # the cause: for a caller's own words
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(
    path: Path, text: str, *, checked: bool = False, space_hint: str = NO_SPACE_HINT
) -> None:
    """`text` (UTF-8) written to `path` through `atomic_writer`."""
    with atomic_writer(path, checked=checked, space_hint=space_hint) as fd:
        write_all(fd, text.encode("utf-8"))


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is written (one call may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def nearest_existing(directory: Path) -> tuple[Path, os.stat_result]:
    """`directory`, or its closest ancestor that exists, with its (followed) stat: where a
    `mkdir -p` of it would start. A dangling link on the way is a `UsageError`."""
    probe = directory
    while True:
        try:
            return probe, probe.stat()
        except (FileNotFoundError, NotADirectoryError):
            if probe.is_symlink():
                raise UsageError(
                    f"cannot use {directory}: {probe} is a symbolic link to nothing"
                ) from None
            if probe == probe.parent:
                raise
            probe = probe.parent
        except OSError as exc:
            raise UsageError(f"cannot use {directory}: {probe}: {exc.strerror}") from None


def check_can_create(directory: Path, *, what: str, hint: str) -> Path:
    """Prove, before any work, that `directory` exists or can be created: its nearest
    existing ancestor is a directory we may write in (not a file, not a read-only file
    system). Returns that ancestor; creates nothing. `what` names the directory for the
    user ("--out", "the receipt's folder"), `hint` says what to do instead."""
    existing, info = nearest_existing(directory)
    if not stat.S_ISDIR(info.st_mode):
        where = "it is" if existing == directory else f"{existing} is"
        raise UsageError(
            f"cannot use {directory} as {what}: {where} {file_kind(info.st_mode)}", hint
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "a read-only file system" if read_only else "permission denied"
        raise UsageError(f"cannot write in {existing}: {why}", hint)
    return existing


def free_bytes(directory: Path) -> int:
    """Free space where `directory` is, or would be created."""
    return shutil.disk_usage(nearest_existing(directory)[0]).free


def ensure_space(directory: Path, needed: int, *, headroom: int, hint: str) -> None:
    """Refuse to start (exit 10) when `needed` bytes plus `headroom` do not fit."""
    free = free_bytes(directory)
    if free < needed + headroom:
        spare = f" + {headroom // (1024 * 1024)} MiB headroom" if headroom else ""
        raise NoSpaceError(
            f"not enough disk space in {directory}: need {needed:,} bytes{spare}, {free:,} free",
            hint,
        )


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link `source` (a link in it is followed) to the absent `dest`, else copy it
    there; the copy is written through `open_regular`, so never through a link."""
    try:
        os.link(source, dest)
        return
    except OSError:
        pass
    fd = open_regular(dest, write=True, create=True, truncate=True)
    with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst, 4 << 20)


def publish(part: Path, final: Path) -> None:
    """Rename a finished temp file over the final name, durably; only ever over an absent
    path or a regular file (a link there is replaced, never followed)."""
    refuse_unless_replaceable(final)
    part.replace(final)
    fsync_dir(final.parent)


def remove(*paths: Path) -> None:
    """Remove files that may not exist, durably."""
    for path in paths:
        path.unlink(missing_ok=True)
    for directory in {p.parent for p in paths}:
        if directory.is_dir():
            fsync_dir(directory)


def hash_file(path: Path, *, fsync: bool = False) -> str:
    """SHA-256 of a whole file, read in 4 MiB blocks; `fsync` first makes it durable (a
    file just written, whose digest is about to be published)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if fsync:
            os.fsync(handle.fileno())
        while block := handle.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()
