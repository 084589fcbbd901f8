"""Moving bytes into `.part`: one or several ranged streams, retries, and the hash.

Every stream owns one `Chunk` of the file and writes at its own offsets. A stream that
fails with a transient error is retried from its current offset; anything that could
splice two versions of the file (a 200 to a ranged request, a misaligned or missing
Content-Range, a 416, a changed ETag) raises `RestartFromZero` instead, and the caller
throws the partial bytes away. The SHA-256 is computed as the bytes arrive: data written
at the hash's current position is hashed straight from the network buffer; only the
bytes that parallel streams wrote ahead of it are read back, while the download runs.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import requests
import urllib3.exceptions

from bitnet_xtask.errors import NetworkError, XtaskError
from bitnet_xtask.events import Reporter

from .hub import HubClient, is_strong, parse_content_range, parse_size, redact, strip_quotes
from .retry import Backoff, StopRequested, TransientError, retrying
from .store import Chunk, ResumeState, Target, open_regular, raise_if_no_space, write_state
from .untrusted import printable

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


class RestartFromZero(Exception):
    """The partial bytes can't be trusted to belong to the file now being served.

    `ranges_unsupported`: the server answers ranged requests wrongly (the whole file, a
    missing or misaligned Content-Range) while the version is unchanged, so the restart
    uses one stream, which asks for no range unless its connection drops.
    """

    def __init__(self, reason: str, *, ranges_unsupported: bool = False) -> None:
        super().__init__(reason)
        self.ranges_unsupported = ranges_unsupported


class NotModified(Exception):
    """A conditional GET answered 304: the local file is current."""

    def __init__(self, etag: str | None, last_modified: str | None) -> None:
        super().__init__("304 Not Modified")
        self.etag = etag
        self.last_modified = last_modified


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
        self.checkpoint()

    def write(self, chunk: Chunk, data: bytes) -> None:
        """Append `data` to `chunk` at its current offset."""
        offset = chunk.done
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(self.fd, view[written:], offset + written)
        except OSError as exc:
            raise_if_no_space(exc, self.target.directory)
            raise
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
            os.fdatasync(self.fd)
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

    def close(self) -> None:
        """Release the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class StreamContext:
    """What every stream of one file shares."""

    client: HubClient
    part: PartFile
    backoff: Backoff
    reporter: Reporter
    stop: threading.Event
    file_label: str
    conditional: dict[str, str] | None = None
    #: The URL to request; the resume state keeps it without credentials (userinfo).
    url: str | None = None


def _check_partial(response: requests.Response, chunk: Chunk, state: ResumeState) -> None:
    """Accept a 206 only if it is exactly the bytes we asked for, of the version we have.

    Ranges are only ever sent for a resumable state, so the size is known here.
    """
    status = response.status_code
    if status == 200:
        raise RestartFromZero(
            "the server answered a ranged request with the whole file "
            "(no range support, or the file changed since the partial download began)",
            ranges_unsupported=not state.etag
            or strip_quotes(response.headers.get("etag")) == strip_quotes(state.etag),
        )
    if status == 416:
        raise RestartFromZero("the server says the resume offset is past the end of the file")
    if status != 206:
        raise NetworkError(f"unexpected {status} answer to a ranged request")
    header = response.headers.get("content-range")
    span = parse_content_range(header)
    if span is None:
        raise RestartFromZero("206 without a valid Content-Range", ranges_unsupported=True)
    if span.first != chunk.done or span.last != chunk.end - 1:
        raise RestartFromZero(
            f"misaligned Content-Range '{printable(header or '', 80)}'", ranges_unsupported=True
        )
    if span.total is not None and span.total != state.size:
        raise RestartFromZero(f"the file's size changed to {span.total} bytes")
    served = response.headers.get("etag")
    if state.etag and served and strip_quotes(served) != strip_quotes(state.etag):
        raise RestartFromZero("the file's ETag changed since the partial download began")


def _check_length(response: requests.Response, state: ResumeState) -> None:
    """A whole-file answer must be as long as the probe said (`X-Linked-Size`, or the
    HEAD's length). A new ETag means a new version: restart. The same one means the hub
    and the CDN disagree about one file, and no retry settles which is wrong."""
    length = response.headers.get("content-length")
    if length is None or state.size is None:
        return
    where = redact(response.url)
    served = parse_size(length, "Content-Length", where)
    if served == state.size:
        return
    etag = response.headers.get("etag")
    if state.etag and etag and strip_quotes(etag) != strip_quotes(state.etag):
        raise RestartFromZero("the file changed since it was probed")
    raise NetworkError(
        f"protocol error: the server said the file is {state.size:,} bytes, "
        f"then sent {served:,} ({where})",
        "the hub and its CDN disagree about the file; try again later, or another --base-url",
    )


def _stream_once(ctx: StreamContext, session: requests.Session, chunk: Chunk) -> None:
    """One attempt at the rest of `chunk`; raises TransientError to be retried."""
    state = ctx.part.state
    ranged = chunk.done > chunk.start or chunk.start > 0 or chunk.end < (state.size or 0)
    headers: dict[str, str] = {}
    if ranged:
        headers["Range"] = f"bytes={chunk.done}-{chunk.end - 1}"
        if is_strong(state.etag):
            headers["If-Range"] = state.etag or ""
    elif ctx.conditional:
        headers.update(ctx.conditional)
    response = ctx.client.request(session, "GET", ctx.url or state.url, headers, stream=True)
    raw = response.raw
    try:
        linked = response.hub_headers.get("x-linked-etag")
        if state.linked_etag and linked and strip_quotes(linked) != strip_quotes(state.linked_etag):
            raise RestartFromZero("a new version of the file was published on the hub")
        if raw.status_code == 304 and ctx.conditional and not ranged:
            raise NotModified(raw.headers.get("etag"), raw.headers.get("last-modified"))
        if ranged:
            _check_partial(raw, chunk, state)
        elif raw.status_code != 200:
            raise NetworkError(f"unexpected {raw.status_code} from {redact(raw.url)}")
        else:
            _check_length(raw, state)
            # A fresh stream from 0 defines the version we download.
            state.etag = raw.headers.get("etag", state.etag)
            state.last_modified = raw.headers.get("last-modified", state.last_modified)
        ctx.conditional = None
        try:
            while chunk.done < chunk.end and not ctx.stop.is_set():
                data = raw.raw.read(min(READ_SIZE, chunk.end - chunk.done), decode_content=False)
                if not data:
                    break
                ctx.part.write(chunk, data[: chunk.end - chunk.done])
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            ConnectionError,
            TimeoutError,
        ) as exc:
            raise TransientError(f"{_describe(exc)} at byte {chunk.done}") from None
    finally:
        raw.close()
    if ctx.stop.is_set():
        return
    if state.size is None:
        chunk.end = chunk.done
    elif chunk.done < chunk.end:
        raise TransientError(f"connection closed early at byte {chunk.done} of {chunk.end}")


def _describe(exc: BaseException) -> str:
    """A short, URL-free reason for a broken stream."""
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "stalled: no data within --stall-timeout"
    return "connection dropped"


def run_stream(ctx: StreamContext, chunk: Chunk) -> None:
    """Drive one chunk to completion, retrying transient failures from its offset."""
    session = ctx.client.new_session()

    def attempt() -> None:
        try:
            _stream_once(ctx, session, chunk)
        except TransientError as exc:
            if not ctx.part.state.resumable and chunk.done > chunk.start:
                raise RestartFromZero(
                    f"{exc}; no size or strong validator, so no safe resume"
                ) from None
            raise

    def on_retry(exc: TransientError, delay: float, failures: int) -> None:
        ctx.reporter.emit(
            {
                "phase": "retry",
                "file": ctx.file_label,
                "wait_secs": round(delay, 3),
                "msg": str(exc),
                "attempt": failures,
                "offset": chunk.done,
            }
        )

    try:
        retrying(attempt, ctx.backoff, on_retry, progress=lambda: chunk.done, wait=ctx.stop.wait)
    except StopRequested:
        return
    finally:
        session.close()


def run_streams(
    ctx: StreamContext,
    connections: int,
    on_progress: Callable[[int], None],
    progress_interval: float = 0.25,
) -> None:
    """Finish every chunk of `.part` with up to `connections` streams at once.

    Each stream takes an unfinished chunk; when none is left it splits the largest
    remaining one (so a slow connection never holds up the end, and a resume may use
    more connections than the first run). The main thread only watches: it reports
    progress, advances the hash over bytes that streams wrote ahead of it, and on
    Ctrl-C or the first failure stops the others and re-raises.
    """
    queue = [chunk for chunk in ctx.part.state.chunks if not chunk.complete]
    if not queue:
        return
    queue_lock = threading.Lock()

    def next_chunk() -> Chunk | None:
        with queue_lock:
            if queue:
                return queue.pop(0)
        return ctx.part.split_largest()

    def worker() -> None:
        while not ctx.stop.is_set() and (chunk := next_chunk()) is not None:
            run_stream(ctx, chunk)

    with ThreadPoolExecutor(max_workers=connections, thread_name_prefix="stream") as pool:
        futures: list[Future[None]] = [pool.submit(worker) for _ in range(connections)]
        try:
            while True:
                done, not_done = wait(
                    futures, timeout=progress_interval, return_when=FIRST_EXCEPTION
                )
                ctx.part.hasher.catch_up(ctx.part.contiguous())
                on_progress(ctx.part.received())
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    ctx.stop.set()
                    wait(not_done)
                    raise _most_important([f.exception() for f in failed])
                if not not_done:
                    return
        except BaseException:
            ctx.stop.set()
            raise


def _most_important(errors: list[BaseException | None]) -> BaseException:
    """Several streams failed at once: a restart or a user-facing error wins over noise."""
    real = [e for e in errors if e is not None]
    for kind in (RestartFromZero, NotModified, XtaskError):
        for error in real:
            if isinstance(error, kind):
                return error
    return real[0]
