"""`.part` on disk: its layout in chunks, offset writes, the running hash, checkpoints.

The SHA-256 is computed as the bytes arrive: data written at the hash's current position
is hashed straight from the network buffer; only the bytes that parallel streams wrote
ahead of it are read back, while the download runs. The resume state beside `.part`
only ever claims bytes that were fdatasynced first.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from typing import NoReturn

from bitnet_xtask.errors import NetworkError, UsageError, XtaskError
from bitnet_xtask.fs import open_regular

from .state import Chunk, ResumeState, write_state
from .store import Target, raise_if_no_space

READ_SIZE = 1 << 20
HASH_READ_SIZE = 4 << 20
#: A checkpoint (fdatasync, then the state) is due when the bytes not yet durable reach
#: what this run already made durable (at least `FIRST_SYNC_BYTES`, at most
#: `SYNC_EVERY_BYTES`), or after `SYNC_EVERY_SECONDS`: so a SIGKILL or power cut loses at
#: most 1 MiB in a run's first MiBs, never more than the run had saved, at most 64 MiB (plus
#: one read per stream in flight). The ramp (1, 2, 4, ... 64 MiB) adds 6 checkpoints per
#: run; with a flat 64 MiB / 5 s a kill in the first seconds lost everything received.
FIRST_SYNC_BYTES = 1 << 20
SYNC_EVERY_BYTES = 64 << 20
SYNC_EVERY_SECONDS = 5.0
UNKNOWN_END = 1 << 62


MIN_CHUNK = 8 << 20
MAX_PIECE = 64 << 20
PIECES_PER_CONNECTION = 4
#: However large the file, the chunk map (memory, and the resume sidecar) stays this small:
#: pieces grow past MAX_PIECE only for files over 256 GiB.
MAX_PIECES = 4096


def plan_chunks(size: int | None, connections: int) -> list[Chunk]:
    """Split [0, size) into the ranges streams take, in file order.

    One connection gets one range. Several get pieces of 8-64 MiB (about four per
    connection), handed out front to back: the file's contiguous prefix then grows
    while the download runs, so the SHA-256 follows it instead of reading most of the
    file back after the last byte.
    """
    if size is None:
        return [Chunk(0, UNKNOWN_END, 0)]
    if connections <= 1 or size < 2 * MIN_CHUNK:
        return [Chunk(0, size, 0)]
    piece = -(-size // (connections * PIECES_PER_CONNECTION))
    piece = max(min(MAX_PIECE, max(MIN_CHUNK, piece)), -(-size // MAX_PIECES))
    piece = -(-piece // READ_SIZE) * READ_SIZE
    return [Chunk(s, min(s + piece, size), s) for s in range(0, size, piece)]


class PrefixHasher:
    """SHA-256 of the file's contiguous prefix, fed inline when bytes arrive in order."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self.position = 0

    def feed(self, offset: int, data: memoryview | bytes) -> None:
        """Hash `data` if it continues the prefix; otherwise `catch_up` will read it back."""
        with self._lock:
            if offset == self.position:
                self._hash.update(data)
                self.position += len(data)

    def catch_up(self, upto: int) -> None:
        """Hash bytes [position, upto) from the file (written by streams ahead of us)."""
        with self._lock:
            while self.position < upto:
                block = os.pread(self._fd, min(HASH_READ_SIZE, upto - self.position), self.position)
                if not block:
                    raise NetworkError(f"the partial file is shorter than {upto} bytes")
                self._hash.update(block)
                self.position += len(block)

    def hexdigest(self) -> str:
        """The digest of everything hashed so far."""
        return self._hash.hexdigest()


class PartFile:
    """`.part` plus its resume state: offset writes, progress, durable checkpoints."""

    def __init__(self, target: Target, state: ResumeState, *, fresh: bool) -> None:
        self.target = target
        self.state = state
        # Never through a link planted at `.part`, never a FIFO, device or shared inode.
        self.fd = open_regular(target.part, write=True, create=True, truncate=fresh)
        self.hasher = PrefixHasher(self.fd)
        self._lock = threading.Lock()
        self._checkpointing = threading.Lock()
        self._unsynced = 0
        self._saved = 0  # bytes this run has made durable
        self._sync_every = FIRST_SYNC_BYTES
        self._last_sync = time.monotonic()
        try:
            self.checkpoint()
        except BaseException:
            self.close()
            raise

    def write(self, chunk: Chunk, data: bytes) -> None:
        """Append `data` to `chunk` at its current offset."""
        offset = chunk.done
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(self.fd, view[written:], offset + written)
        except OSError as exc:
            self.fail(exc, "write")
        self.hasher.feed(offset, view)
        with self._lock:
            chunk.done += len(view)
            self._unsynced += len(view)
            due = (
                self._unsynced >= self._sync_every
                or time.monotonic() - self._last_sync >= SYNC_EVERY_SECONDS
            )
        if due:
            self.checkpoint(wait=False)

    def checkpoint(self, *, wait: bool = True) -> None:
        """fdatasync, then record the offsets that are now durable.

        One checkpoint at a time: two streams writing the state at once would race on its
        temp file. A stream that finds one under way (`wait=False`) goes on downloading;
        the bytes it wrote since that snapshot count towards the next one.
        """
        if not self._checkpointing.acquire(blocking=wait):
            return
        try:
            with self._lock:
                snapshot = self.state.to_json()
                self._saved += self._unsynced
                self._unsynced = 0
                self._sync_every = min(SYNC_EVERY_BYTES, max(FIRST_SYNC_BYTES, self._saved))
                self._last_sync = time.monotonic()
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                self.fail(exc, "write")
            write_state(self.target.state, snapshot)
        finally:
            self._checkpointing.release()

    def received(self) -> int:
        """Bytes written so far (durable or not)."""
        with self._lock:
            return self.state.received

    def contiguous(self) -> int:
        """Length of the completely written prefix."""
        with self._lock:
            return self.state.contiguous()

    def split_largest(self) -> Chunk | None:
        """Give an idle stream the second half of the largest unfinished range.

        The split point stays at least `MIN_CHUNK` ahead of the range's current offset,
        so a read already in flight (at most `READ_SIZE`) never crosses it; the chunk map
        stays a partition of the file, and the new range is resumable like any other.
        """
        with self._lock:
            if not self.state.resumable:
                return None
            victim = max(self.state.chunks, key=lambda c: c.end - c.done)
            remaining = victim.end - victim.done
            if remaining < 2 * MIN_CHUNK:
                return None
            middle = victim.done + (remaining // 2) // READ_SIZE * READ_SIZE
            stolen = Chunk(middle, victim.end, middle)
            victim.end = middle
            self.state.chunks.append(stolen)
            self.state.chunks.sort(key=lambda c: c.start)
            return stolen

    def catch_up(self) -> None:
        """Hash the bytes that streams wrote ahead of the hash (read back from `.part`)."""
        try:
            self.hasher.catch_up(self.contiguous())
        except OSError as exc:
            self.fail(exc, "read")

    def finish(self) -> None:
        """Every byte is written: hash the rest, and make the whole file durable before it
        may be published."""
        self.catch_up()
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self.fail(exc, "write")

    def fail(self, exc: OSError, doing: str) -> NoReturn:
        """Raise any OSError on `.part` as the documented error, which names the file and
        says it is kept: its state claims only bytes synced before, so the same command
        resumes. A full disk is exit 10 (`raise_if_no_space`), a read-only or forbidden
        one exit 2, anything else (EIO from a failing disk, EFBIG past the file-size
        limit) exit 1. A raw OSError used to end in a traceback."""
        raise_if_no_space(exc, self.target.directory)
        path, reason = self.target.part, exc.strerror or str(exc)
        kept = f"{path.name} was kept: run the same command again once it is fixed, to resume"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UsageError(
                f"cannot {doing} {path}: {reason}",
                f"make {self.target.directory} writable again (remounted read-only?); {kept}",
            ) from None
        raise XtaskError(
            f"cannot {doing} {path}: {reason}",
            f"check the disk and the limit on file sizes (dmesg, ulimit -f); {kept}",
        ) from None

    def close(self) -> None:
        """Release the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
