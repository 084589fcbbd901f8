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
from bitnet_xtask.errors import LockedError, NoSpaceError, UsageError

HEADROOM_BYTES = 50 * 1024 * 1024
STATE_VERSION = 1


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
    return parts[-1]


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
    """`models/<id-with-dashes>/`, the reference guide's layout."""
    return out / repo_id.replace("/", "-")


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
    Only an absent path or a regular file is ever replaced (`refuse_unless_replaceable`)."""
    refuse_unless_replaceable(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise_if_no_space(exc, path.parent)
        raise
    fsync_dir(path.parent)


def read_text(path: Path) -> str | None:
    """A small sidecar's content, or None if absent."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def remove(*paths: Path) -> None:
    """Remove files that may not exist, durably."""
    for path in paths:
        path.unlink(missing_ok=True)
    for directory in {p.parent for p in paths}:
        if directory.is_dir():
            fsync_dir(directory)


def raise_if_no_space(exc: OSError, where: Path) -> None:
    """Turn ENOSPC/EDQUOT into the documented exit 10."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpaceError(
            f"disk full while writing in {where}",
            "free some space (or use --out on a larger disk) and run the same command "
            "again: the partial download was kept and will resume",
        ) from None


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
    def load(cls, path: Path) -> ResumeState | None:
        """The sidecar, or None when absent, unreadable or from another version."""
        text = read_text(path)
        if text is None:
            return None
        try:
            data: dict[str, Any] = json.loads(text)
            check = data.pop("check", None)
            if data.get("version") != STATE_VERSION or check != _checksum(data):
                return None
            data["chunks"] = [Chunk(**c) for c in data.get("chunks", [])]
            return cls(**data)
        except (ValueError, TypeError):
            return None


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
    except NoSpaceError:
        if not path.exists():
            raise
        with path.open("r+", encoding="utf-8") as handle:
            handle.write(text)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())


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
    host and start time are written inside, for the messages of whoever waits.
    """

    def __init__(
        self,
        path: Path,
        timeout: float,
        on_wait: Callable[[str], None] | None = None,
        poll: float = 0.2,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._on_wait = on_wait
        self._poll = poll
        self._fd: int | None = None
        self.took_over: str | None = None

    def _owner(self) -> str:
        text = read_text(self.path)
        try:
            info = json.loads(text or "{}")
            return f"pid {info['pid']} on {info['host']} (since {info['since']})"
        except (ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> None:
        """Take the lock, waiting up to `timeout` seconds for a live holder."""
        deadline = time.monotonic() + self.timeout
        announced = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
                same = os.fstat(fd).st_ino == self.path.stat().st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = os.read(fd, 4096).decode("utf-8", "replace")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                pid = int(json.loads(previous)["pid"])
                self.took_over = f"pid {pid}" + ("" if _pid_alive(pid) else " (no longer running)")
            os.ftruncate(fd, 0)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return

    def release(self) -> None:
        """Unlink while still holding the flock, then drop it."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

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
