"""Moving bytes into `.part`: one or several ranged streams, retries, and the hash.

Every stream owns one `Chunk` of the file and writes at its own offsets. A stream that
fails with a transient error is retried from its current offset; anything that could
splice two versions of the file (a 200 to a ranged request, a misaligned or missing
Content-Range, a 416, a changed ETag) raises `RestartFromZero` instead, and the caller
throws the partial bytes away. The bytes go into `partfile.PartFile`, which hashes them
as they arrive and checkpoints what is durable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import requests
import urllib3.exceptions

from bitnet_xtask.errors import NetworkError, XtaskError
from bitnet_xtask.events import Reporter
from bitnet_xtask.untrusted import printable

from .headers import is_strong, parse_content_range, parse_size, strip_quotes
from .hub import HubClient, Response
from .partfile import MAX_PIECE, MAX_PIECES, MIN_CHUNK, READ_SIZE, PartFile, plan_chunks
from .retry import Backoff, StopRequested, TransientError, retrying
from .state import Chunk, ResumeState
from .urls import redact

__all__ = [  # and, for the tests that import them from here, the layout of `.part`:
    "MAX_PIECE",
    "MAX_PIECES",
    "MIN_CHUNK",
    "READ_SIZE",
    "NotModified",
    "PartFile",
    "RestartFromZero",
    "StreamContext",
    "plan_chunks",
    "run_streams",
]


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


@dataclass
class StreamContext:
    """What every stream of one file shares. `stop` ends this file's streams; `cancel` is
    the run's (`Job.cancel`), set from another thread to stop every file of it."""

    client: HubClient
    part: PartFile
    backoff: Backoff
    reporter: Reporter
    stop: threading.Event
    cancel: threading.Event
    file_label: str
    #: The URL to request; the resume state keeps it without credentials (userinfo).
    url: str
    conditional: dict[str, str] | None = None


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
    headers = _range_headers(chunk, state) if ranged else dict(ctx.conditional or {})
    response = ctx.client.request(session, "GET", ctx.url, headers, stream=True)
    raw = response.raw
    try:
        _check_answer(ctx, response, chunk, ranged=ranged)
        ctx.conditional = None
        _copy_body(ctx, raw, chunk)
    finally:
        raw.close()
    if ctx.stop.is_set():
        return
    if state.size is None:
        chunk.end = chunk.done
    elif chunk.done < chunk.end:
        raise TransientError(f"connection closed early at byte {chunk.done} of {chunk.end}")


def _range_headers(chunk: Chunk, state: ResumeState) -> dict[str, str]:
    """The rest of `chunk`, guarded by the ETag when it is strong (RFC 9110 If-Range)."""
    headers = {"Range": f"bytes={chunk.done}-{chunk.end - 1}"}
    if state.etag and is_strong(state.etag):
        headers["If-Range"] = state.etag
    return headers


def _check_answer(ctx: StreamContext, response: Response, chunk: Chunk, *, ranged: bool) -> None:
    """Is this answer bytes of the version being downloaded, where we asked for them?"""
    state, raw = ctx.part.state, response.raw
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


def _copy_body(ctx: StreamContext, raw: requests.Response, chunk: Chunk) -> None:
    """Write the body into `chunk` until it is complete, the body ends, or a stop."""
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
                "command": "download-model",
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
    more connections than the first run). The calling thread only watches: it reports
    progress, advances the hash over bytes that streams wrote ahead of it, and on
    Ctrl-C or the first failure stops the others and re-raises. A `cancel` (the run is
    stopped from another thread, which alone gets the signal) stops the streams, waits
    for them, and raises KeyboardInterrupt here, so the caller checkpoints `.part`
    exactly as on a Ctrl-C of its own.
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
            while _watch(ctx, futures, on_progress, progress_interval):
                pass
        except BaseException:
            ctx.stop.set()
            raise


def _watch(
    ctx: StreamContext,
    futures: list[Future[None]],
    on_progress: Callable[[int], None],
    interval: float,
) -> bool:
    """One look at the streams (at most `interval` apart): report progress; False once
    they are all done; raise the first failure, or KeyboardInterrupt on a cancel, once
    the others have stopped."""
    done, not_done = wait(futures, timeout=interval, return_when=FIRST_EXCEPTION)
    ctx.part.catch_up()
    on_progress(ctx.part.received())
    failed = [f for f in done if f.exception() is not None]
    if failed:
        ctx.stop.set()
        wait(not_done)
        raise _most_important([f.exception() for f in failed])
    if not not_done:
        return False
    if ctx.cancel.is_set():
        ctx.stop.set()
        wait(not_done)
        raise KeyboardInterrupt
    return True


def _most_important(errors: list[BaseException | None]) -> BaseException:
    """Several streams failed at once: a restart or a user-facing error wins over noise."""
    real = [e for e in errors if e is not None]
    for kind in (RestartFromZero, NotModified, XtaskError):
        for error in real:
            if isinstance(error, kind):
                return error
    return real[0]
