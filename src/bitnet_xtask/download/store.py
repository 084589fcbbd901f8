"""The files of one download on disk, and the rules that keep them trustworthy.

```
<dir>/<file>            final artifact, only ever created by an atomic rename
<dir>/<file>.part       bytes received so far (sparse while streams run in parallel)
<dir>/<file>.part.json  resume state: URL, validators, size, commit, chunk map
<dir>/<file>.lock       one writer per file (flock; the owner's pid inside for messages)
<dir>/<file>.etag       cache metadata, atomic write
<dir>/<file>.lastmod    cache metadata, atomic write
```

The resume state only ever claims bytes that were fsynced before it was written, so a
crash or power cut can make us fetch a few MiB again, never trust bytes we lack.

Every one of these names is ours alone: a symbolic link, a directory, a FIFO or a device
planted at one of them is refused before anything is written (`check_destination`), and
every file we write is opened with `O_NOFOLLOW` (`open_regular`), so a link swapped in
later is refused too, never followed (a `.part` link would have overwritten its target,
and the rename would have published the link). Files we write in place (`.part`,
`.lock`, the state's in-place fallback) must also have a single hard link.

Every sidecar is tiny by construction, so one that is not is not ours: a planted
multi-GB (or sparse, `truncate -s 8G`) file is never read, only its size is looked at
(`read_text`), and it counts as corrupt: the state as none (the download starts again
from byte 0), the lock as one to take over (or to wait for, when its flock is held), the
cache metadata as absent; `--verbose` says which and why.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bitnet_xtask.download.hub import as_sha256, is_strong
from bitnet_xtask.download.untrusted import printable
from bitnet_xtask.errors import LockedError, NoSpaceError, UsageError, XtaskError

HEADROOM_BYTES = 50 * 1024 * 1024
STATE_VERSION = 1
#: Bytes per path component on every file system we expect (ext4, xfs, btrfs, tmpfs,
#: APFS): Linux's NAME_MAX, <linux/limits.h>.
NAME_MAX = 255
#: What the longest name derived from a local file name adds: the temp file of an atomic
#: write of its resume state, `.{name}.part.json.{pid}.tmp` (a pid has at most 7 digits:
#: the kernel's PID_MAX_LIMIT is 2^22, <linux/threads.h>).
DERIVED_NAME_EXTRA = len(".") + len(".part.json") + len(".4194304.tmp")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: The largest resume state we write: at most 4096 ranges (`transfer.MAX_PIECES`) of
#: about 100 bytes each, plus a few validators and the URL, is well under 1 MiB.
STATE_LIMIT = 1 << 20
#: `.lock` (one JSON line: pid, host, time), `.etag` and `.lastmod` (one header value).
SMALL_SIDECAR_LIMIT = 4 << 10
Note = Callable[[str], None]


def leaf_name(path_in_repo: str) -> str:
    """The local file name: the last path component, after refusing tricks.

    `sub/dir/model.gguf` is a fine path inside a repository and lands as `model.gguf`;
    `..`, absolute paths, backslashes and NULs are refused outright rather than cleaned,
    since a caller who sends them is confused or hostile.
    """
    parts = path_in_repo.split("/")
    if (
        not path_in_repo
        or path_in_repo.startswith("/")
        or "\\" in path_in_repo
        or "\0" in path_in_repo
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
    ):
        raise UsageError(
            f"refusing unsafe --file {path_in_repo!r}",
            "give a path inside the repository, like ggml-model-i2_s.gguf or sub/model.gguf",
        )
    name = parts[-1]
    fits = NAME_MAX - DERIVED_NAME_EXTRA
    if len(name.encode("utf-8", "surrogateescape")) > fits:
        raise UsageError(
            f"refusing --file {path_in_repo!r}: its local name is "
            f"{len(name.encode('utf-8', 'surrogateescape'))} bytes, at most {fits} fit",
            f"a file system allows {NAME_MAX} bytes per name and the download's sidecars "
            f"add up to {DERIVED_NAME_EXTRA} (`.part.json` and its temp file)",
        )
    return name


@dataclass(frozen=True)
class Target:
    """Where one file and its sidecars live."""

    directory: Path
    name: str

    def _sibling(self, suffix: str) -> Path:
        return self.directory / f"{self.name}{suffix}"

    @property
    def final(self) -> Path:
        """The finished file."""
        return self.directory / self.name

    @property
    def part(self) -> Path:
        """Bytes received so far."""
        return self._sibling(".part")

    @property
    def state(self) -> Path:
        """The resume sidecar of `.part`."""
        return self._sibling(".part.json")

    @property
    def lock(self) -> Path:
        """The single-writer lock."""
        return self._sibling(".lock")

    @property
    def etag(self) -> Path:
        """The version tag of the finished file."""
        return self._sibling(".etag")

    @property
    def lastmod(self) -> Path:
        """The Last-Modified date of the finished file."""
        return self._sibling(".lastmod")


def model_dir(out: Path, repo_id: str) -> Path:
    """`models/<id-with-dashes>/`, the reference guide's layout; refused (exit 2) when that
    name is longer than a file system allows, before anything is created."""
    name = repo_id.replace("/", "-")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise UsageError(
            f"--id {repo_id!r} is too long: its directory name would be "
            f"{len(name.encode('utf-8', 'surrogateescape'))} bytes, at most {NAME_MAX} fit",
            "check --id (Hugging Face repository names are at most 96 characters)",
        )
    return out / name


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for a message."""
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


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file, fsync, rename, fsync the directory: readers see old or new, never half.
    Only an absent path or a regular file is ever replaced (`refuse_unless_replaceable`);
    the temp file is created afresh (`O_EXCL | O_NOFOLLOW`), so a link planted at its
    name is never written through. Every OSError is an `XtaskError` in words that fit
    any caller (`fs_error`): a full disk is `NoSpaceError` (exit 10), a read-only or
    unwritable directory or a too-long name `UsageError` (exit 2); a caller with a more
    specific hint catches and rewraps it (`write_state`, `crossval.receipt`)."""
    refuse_unless_replaceable(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a crashed run's temp file (unlink never follows a link)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise fs_error(exc, path) from exc  # the cause: for a caller's own words
    fsync_dir(path.parent)


def read_text(path: Path, limit: int = SMALL_SIDECAR_LIMIT, note: Note | None = None) -> str | None:
    """A sidecar's content, or None if absent or larger than `limit` bytes (`note` says
    so); never through a link, never from a FIFO (that would block). An oversized file
    is not read at all, not even its first `limit` bytes: what it starts with is not a
    sidecar of ours, however well formed it looks."""
    try:
        fd = open_regular(path, write=False)
    except FileNotFoundError:
        return None
    try:
        data = _read_bounded(fd, limit)
    finally:
        os.close(fd)
    if data is None:
        _oversized(path, limit, note)
        return None
    return data.decode("utf-8", "replace").strip() or None


def _read_bounded(fd: int, limit: int) -> bytes | None:
    """At most `limit` bytes from the start of `fd`; None when the file holds more (by its
    size, or by what a read finds: it may grow while we look)."""
    if os.fstat(fd).st_size > limit:
        return None
    data = os.pread(fd, limit + 1, 0)
    return None if len(data) > limit else data


def _oversized(path: Path, limit: int, note: Note | None) -> None:
    if note is None:
        return
    try:
        size = f"{path.lstat().st_size:,} bytes"
    except OSError:
        size = "too large"
    note(f"ignoring {path}: {size}, more than the {limit:,} a file of ours ever holds")


def metadata_ok(value: str) -> bool:
    """Cache metadata (`.etag`, `.lastmod`) we may store and send back as a header: one
    line of at most `SMALL_SIDECAR_LIMIT` bytes that http.client can encode (Latin-1)
    and requests accepts (no control characters). A corrupt `.lastmod` with a newline
    inside was an `InvalidHeader` (exit 14), one with a character outside Latin-1 a
    UnicodeEncodeError (a traceback), a 1 MiB one a `431` from the server (exit 14)."""
    try:
        encoded = value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return (
        0 < len(value.encode("utf-8")) < SMALL_SIDECAR_LIMIT  # the file holds UTF-8 and "\n"
        and value == value.strip()
        and not any(c < 0x20 or c == 0x7F for c in encoded)
    )


def read_metadata(path: Path, note: Note | None = None) -> str | None:
    """`.etag` / `.lastmod`, or None when absent, oversized or not a header value we could
    send (`metadata_ok`): such a file counts as absent, and `note` says why."""
    value = read_text(path, SMALL_SIDECAR_LIMIT, note)
    if value is not None and not metadata_ok(value):
        if note is not None:
            note(f"ignoring {path}: '{printable(value, 60)}' is not a header value we wrote")
        return None
    return value


#: What to do about a full disk, in words that fit every command.
NO_SPACE_HINT = "free some space and run the same command again"
#: The same for a download, whose partial file is kept (`raise_if_no_space`, `write_state`).
DOWNLOAD_NO_SPACE_HINT = (
    "free some space (or use --out on a larger disk) and run the same command "
    "again: the partial download was kept and will resume"
)


def fs_error(exc: OSError, path: Path, space_hint: str = NO_SPACE_HINT) -> XtaskError:
    """An OSError on one of our files, as the documented error a user can act on."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"disk full while writing {path}", space_hint)
    if exc.errno == errno.ELOOP:
        return UsageError(
            f"refusing to use {path}: it is a symbolic link", "remove it and run again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(f"cannot write {path}: {reason}", "use a writable directory")
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENXIO, errno.ENAMETOOLONG):
        return UsageError(f"cannot use {path}: {reason}")
    return XtaskError(f"cannot open {path}: {reason}")


def open_regular(path: Path, *, write: bool, create: bool = False, truncate: bool = False) -> int:
    """A descriptor on the regular file at `path`, never through a symbolic link.

    `O_NOFOLLOW` refuses a link at the last component; the file is checked with fstat on
    the open descriptor (what is checked is what is used), opened with `O_NONBLOCK` so a
    FIFO cannot block the open. A file opened to be written must have one hard link: a
    link to someone else's file would be written too. A missing file without `create`
    raises FileNotFoundError; every other problem is an `XtaskError` (`fs_error`).
    `truncate` empties the file only after these checks.
    """
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
    try:
        fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise fs_error(exc, path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(
                f"refusing to use {path}: it is {file_kind(info.st_mode)}, not a regular file",
                "remove it and run again",
            )
        if write and info.st_nlink > 1:
            raise UsageError(
                f"refusing to write {path}: it has {info.st_nlink} hard links, so another "
                "file would change with it",
                "remove it and run again",
            )
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _nearest_existing(directory: Path) -> tuple[Path, os.stat_result]:
    """`directory`, or its closest ancestor that exists, with its (followed) stat."""
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


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check_destination(target: Target) -> None:
    """Refuse up front (exit 2) every file-system condition that would otherwise fail, or
    do harm, only once the download is under way or done.

    - the directory, or what would hold it, is not a directory (`--out` a file,
      `/dev/null`), or is not writable (read-only mount, permissions);
    - the final name, or a sidecar, exists and is not a regular file: a directory at the
      final name would fail the rename after the whole download; a symbolic link at
      `.part` or `.lock` would have its target overwritten or truncated;
    - `.part`, `.part.json` or `.lock` has more than one hard link (they are written in
      place). The final file may have several: a blob adopted from the HF cache has.

    Only ever reads; missing directories are created later, by the download.
    """
    directory = target.directory
    existing, info = _nearest_existing(directory)
    if not stat.S_ISDIR(info.st_mode):
        what = "it is" if existing == directory else f"{existing} is"
        raise UsageError(
            f"cannot use {directory} as a directory: {what} {file_kind(info.st_mode)}",
            "give --out a directory (one that does not exist yet is created)",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(existing) else "permission denied"
        raise UsageError(f"cannot write in {existing}: {why}", "give --out a writable directory")
    if existing != directory:
        return
    written_in_place = (target.part, target.state, target.lock)
    for path in (target.final, target.part, target.state, target.lock, target.etag, target.lastmod):
        try:
            node = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot use {path}: {exc.strerror}") from None
        if not stat.S_ISREG(node.st_mode):
            raise UsageError(
                f"refusing to use {path}: it is {file_kind(node.st_mode)}, not a regular file",
                "nothing was written; remove it (or choose another --out) and run again",
            )
        if path in written_in_place and node.st_nlink > 1:
            raise UsageError(
                f"refusing to use {path}: it has {node.st_nlink} hard links, so another "
                "file would change with it",
                "nothing was written; remove it (or choose another --out) and run again",
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
    """Rename the verified `.part` over the final name, durably; only ever over an absent
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


def raise_if_no_space(exc: OSError, where: Path) -> None:
    """Turn ENOSPC/EDQUOT during a download into the documented exit 10 (the hint says
    the partial download is kept: only download code calls this)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpaceError(f"disk full while writing in {where}", DOWNLOAD_NO_SPACE_HINT) from None


def free_bytes(directory: Path) -> int:
    """Free space where `directory` is, or would be created."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def ensure_space(directory: Path, remaining: int | None) -> None:
    """Refuse to start when the remaining bytes plus headroom do not fit."""
    if remaining is None:
        return
    free = free_bytes(directory)
    needed = remaining + HEADROOM_BYTES
    if free < needed:
        raise NoSpaceError(
            f"not enough disk space in {directory}: need {remaining:,} bytes "
            f"+ {HEADROOM_BYTES // (1024 * 1024)} MiB headroom, {free:,} free",
            "free some space or use --out on a larger disk",
        )


@dataclass
class Chunk:
    """One byte range [start, end) of the file and how far it is safely written."""

    start: int
    end: int
    done: int

    @property
    def complete(self) -> bool:
        """All bytes of this range are on disk."""
        return self.done >= self.end


@dataclass
class ResumeState:
    """What a later run needs to continue `.part` safely, and to refuse when it can't."""

    url: str
    size: int | None
    etag: str | None
    linked_etag: str | None
    commit: str | None
    last_modified: str | None
    chunks: list[Chunk] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def resumable(self) -> bool:
        """Ranges are safe only with a known size and a validator that names the bytes:
        a strong ETag, or the hub's sha256 (a weak ETag allows "equivalent" content)."""
        return self.size is not None and (
            is_strong(self.etag) or as_sha256(self.linked_etag) is not None
        )

    @property
    def received(self) -> int:
        """Bytes safely on disk."""
        return sum(chunk.done - chunk.start for chunk in self.chunks)

    def contiguous(self) -> int:
        """Length of the prefix [0, n) that is completely on disk."""
        end = 0
        for chunk in sorted(self.chunks, key=lambda c: c.start):
            if chunk.start != end:
                break
            end = chunk.done
            if not chunk.complete:
                break
        return end

    def to_json(self) -> str:
        """Serialise for the sidecar, with a checksum that exposes a torn write.

        Finished neighbouring ranges are saved as one, so the sidecar stays small
        however many pieces a large file was fetched in.
        """
        chunks: list[Chunk] = []
        for chunk in sorted(self.chunks, key=lambda c: c.start):
            last = chunks[-1] if chunks else None
            if last and last.complete and chunk.complete and last.end == chunk.start:
                chunks[-1] = Chunk(last.start, chunk.end, chunk.end)
            else:
                chunks.append(Chunk(chunk.start, chunk.end, chunk.done))
        body = asdict(self) | {"chunks": [asdict(c) for c in chunks]}
        return json.dumps({**body, "check": _checksum(body)}, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: Path, note: Note | None = None) -> ResumeState | None:
        """The sidecar, or None when absent, unreadable, larger than `STATE_LIMIT`, from
        another version, or claiming what no download of ours writes: the checksum
        exposes a torn write, not a forged one, so the shape is checked too (JSON nested
        past the recursion limit, a `done` that is not an integer, ranges that overlap or
        leave the file would otherwise be tracebacks, or a splice). `note` says why one
        that exists was ignored; the download then starts again from byte 0."""
        text = read_text(path, STATE_LIMIT, note)
        if text is None:
            return None
        state = cls._parse(text)
        if state is None and note is not None:
            note(f"ignoring {path}: not a resume state of this version (torn, edited or corrupt)")
        return state

    @classmethod
    def _parse(cls, text: str) -> ResumeState | None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                return None
            check = data.pop("check", None)
            if data.get("version") != STATE_VERSION or check != _checksum(data):
                return None
            data["chunks"] = [Chunk(**c) for c in data.get("chunks", [])]
            state = cls(**data)
        except (ValueError, TypeError, RecursionError):
            return None
        return state if state.well_formed() else None

    def well_formed(self) -> bool:
        """Field types, and chunks that are ordered, disjoint ranges inside the file."""
        if not all(isinstance(v, str | None) for v in (self.url, self.etag, self.linked_etag)):
            return False
        if not all(isinstance(v, str | None) for v in (self.commit, self.last_modified)):
            return False
        if not isinstance(self.url, str) or not _count(self.size, allow_none=True):
            return False
        end = 0
        for chunk in self.chunks:
            if not all(_count(v) for v in (chunk.start, chunk.end, chunk.done)):
                return False
            if not end <= chunk.start <= chunk.done <= chunk.end:
                return False
            end = chunk.end
        return self.size is None or end <= self.size


def _count(value: object, *, allow_none: bool = False) -> bool:
    """A non-negative int (not a bool), or None where allowed."""
    if value is None:
        return allow_none
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write_state(path: Path, text: str) -> None:
    """Save the resume state: atomically, or in place when the disk is full.

    A full disk is exactly when the state matters most (the download stops and must
    resume later), and it is when a new temp file can't be created. Overwriting the
    existing sidecar needs no new blocks; a torn write fails the checksum, and the next
    run then starts from 0, which is safe.
    """
    try:
        atomic_write_text(path, text)
    except NoSpaceError as full:
        try:
            fd = open_regular(path, write=True)
        except FileNotFoundError:
            raise NoSpaceError(full.message, DOWNLOAD_NO_SPACE_HINT) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())


#: The kernel's PID_MAX_LIMIT, 2^22 (<linux/threads.h>).
PID_MAX = 1 << 22


def _pid(value: object) -> int:
    """A process id read from a lock file, which anyone could have written: `1e300` made
    `os.kill` raise OverflowError and `Infinity` made `int` raise it (tracebacks); `0` and
    `-1` name process groups, not a holder. ValueError for anything but 1 to PID_MAX."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= PID_MAX:
        raise ValueError(f"not a process id: {value!r:.40}")
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """`<file>.lock`: one writer per file, safe against crashes.

    The exclusion is an flock on the lock file, which the kernel drops when its holder
    dies, so a lock left by a killed process is simply taken over. The holder's pid,
    host and start time are written inside, for the messages of whoever waits; what is
    inside is only ever shown through `printable` (whoever wrote it chose it), and a
    lock file larger than `SMALL_SIDECAR_LIMIT` is not read: its holder is "another
    process", and if its flock is free it is taken over like any other (`on_note` says so).
    """

    def __init__(
        self,
        path: Path,
        timeout: float,
        on_wait: Callable[[str], None] | None = None,
        poll: float = 0.2,
        on_note: Note | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._on_wait = on_wait
        self._on_note = on_note
        self._poll = poll
        self._fd: int | None = None
        self.took_over: str | None = None

    def _owner(self) -> str:
        text = read_text(self.path, SMALL_SIDECAR_LIMIT)
        try:
            info = json.loads(text or "{}")
            return printable(f"pid {info['pid']} on {info['host']} (since {info['since']})")
        except (ValueError, KeyError, TypeError, RecursionError):
            return "another process"

    def acquire(self) -> None:
        """Take the lock, waiting up to `timeout` seconds for a live holder."""
        deadline = time.monotonic() + self.timeout
        announced = False
        while True:
            try:
                fd = open_regular(self.path, write=True, create=True)
            except FileNotFoundError:  # the folder went (clean-cache) while we waited
                raise XtaskError(
                    f"cannot lock {self.path}: its folder {self.path.parent} no longer exists "
                    "(removed while this waited, by xtask clean-cache?)",
                    "run the command again",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = self._owner()
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"{self.path.with_suffix('')} is being downloaded by {owner}",
                        "wait for it to finish, or raise --lock-timeout to wait longer",
                    ) from None
                if not announced and self._on_wait is not None:
                    self._on_wait(f"waiting for {owner} to finish with {self.path}")
                    announced = True
                time.sleep(self._poll)
                continue
            # The holder may have unlinked the file between our open and flock.
            try:
                same = os.fstat(fd).st_ino == self.path.lstat().st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            content = _read_bounded(fd, SMALL_SIDECAR_LIMIT)
            if content is None:
                _oversized(self.path, SMALL_SIDECAR_LIMIT, self._on_note)
            previous = (content or b"").decode("utf-8", "replace")
            with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
                pid = _pid(json.loads(previous)["pid"])
                self.took_over = f"pid {pid}" + ("" if _pid_alive(pid) else " (no longer running)")
            os.ftruncate(fd, 0)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return

    def release(self, *, unlink: bool = True) -> None:
        """Unlink while still holding the flock, then drop it. Only this lock's own file is
        unlinked: after clean-cache removed it with its folder, the name may be another
        process's new lock. `unlink=False` leaves the file (a `try_take` of one we did not
        make)."""
        if self._fd is None:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                mine, now = os.fstat(self._fd), self.path.lstat()
                if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                    self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str | None:
        """Who holds this lock now, or None when no live process does (or there is no lock
        file). It takes nothing and writes nothing, so a dry run may ask: a shared flock,
        tried and dropped at once, conflicts only with a holder's exclusive one."""
        try:
            fd = open_regular(self.path, write=False)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._owner()
        finally:
            os.close(fd)  # drops the shared flock
        return None

    def try_take(self, *, create: bool = False) -> bool:
        """Take the lock now or not at all, and without writing the file: clean-cache holds
        every lock in a folder while it removes the folder, and must leave a lock file it
        ends up not removing as it was. True when taken (until `release`); False when there
        is no lock file (or, with `create`, no folder); LockedError naming a live holder."""
        while True:
            try:
                fd = open_regular(self.path, write=False, create=create)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockedError(
                    f"{self.path} is held by {self._owner()}",
                    "wait for that process to finish (or stop it), then run again",
                ) from None
            try:  # the holder may have unlinked the file between our open and flock
                mine, now = os.fstat(fd), self.path.lstat()
                same = (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)

    @contextlib.contextmanager
    def held(self) -> Iterator[FileLock]:
        """`with lock.held():` acquire and always release."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()


def hash_file(path: Path) -> str:
    """SHA-256 of a whole file (for files we did not download ourselves)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()
