"""The fetch of one file over the network: `.part` to a verified, published file.

Adopt a `.part` whose version still matches (else start a new one, once the disk is known
to hold the file), stream into it, and on a `RestartFromZero` probe again and start over
(at most `MAX_RESTARTS` times: two versions are never spliced). A version whose advertised
sha256 or size is not the pinned one is refused before its first byte. The finished bytes
are fsynced, their SHA-256 (and size) checked, and only then renamed over the final name.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bitnet_xtask.errors import HashMismatchError, Interrupted, NetworkError, XtaskError
from bitnet_xtask.fs import publish, remove

from .hub import RemoteFile
from .job import Job
from .options import Mismatch
from .partfile import PartFile
from .results import DownloadResult
from .resume import default_connections, fresh_state, resumable
from .revalidate import confirm_existing
from .state import ResumeState
from .store import ensure_download_space, read_metadata
from .transfer import NotModified, RestartFromZero, StreamContext, run_streams
from .urls import redact

MAX_RESTARTS = 3


@dataclass
class _Attempt:
    """One try at the whole file: the version it fetches and where it starts."""

    remote: RemoteFile
    state: ResumeState
    fresh: bool  # `.part` is started anew (truncated), not resumed
    connections: int
    conditional: dict[str, str]
    resumed_from: int


@dataclass(frozen=True)
class _Finished:
    """The bytes of one attempt, all in `.part` and durable."""

    digest: str
    size: int


def fetch(job: Job, remote: RemoteFile, conditional: dict[str, str]) -> DownloadResult:
    """Download the file `remote` describes; `conditional` (If-None-Match, ...) lets the
    server answer 304 for the version already here."""
    job.check_advertised(remote)
    attempt = _first_attempt(job, remote, conditional)
    restarts = 0
    while True:
        try:
            finished = _stream(job, attempt)
        except NotModified as exc:
            return _not_modified(job, attempt.remote, exc)
        except RestartFromZero as exc:
            restarts += 1
            attempt = _restart(job, attempt, exc, restarts)
            continue
        return _publish(job, attempt, finished)


def _first_attempt(job: Job, remote: RemoteFile, conditional: dict[str, str]) -> _Attempt:
    """Resume a `.part` of this version (no conditional GET then: the bytes decide), or
    start a new one."""
    connections = default_connections(job.options, remote)
    state = None if job.options.force else resumable(job, remote)
    if state is not None:
        return _Attempt(remote, state, False, connections, {}, state.received)
    return _Attempt(
        remote, fresh_state(job, remote, connections), True, connections, conditional, 0
    )


def _restart(job: Job, attempt: _Attempt, exc: RestartFromZero, restarts: int) -> _Attempt:
    """The partial bytes can't be trusted: probe again and start from byte 0."""
    if restarts > MAX_RESTARTS:
        raise NetworkError(
            f"gave up after {MAX_RESTARTS} restarts from byte 0: {exc}",
            "the server keeps changing the file, or mangles ranged answers even for "
            "one stream's resumes; try later, or from another --base-url",
        ) from None
    why, connections = str(exc), attempt.connections
    if exc.ranges_unsupported and connections > 1:
        # One stream asks for no range at all, unless its connection drops.
        why += "; falling back to one stream"
        connections = 1
    name = job.target.name
    job.reporter.info(f"restarting {name} from byte 0: {why}")
    job.reporter.emit(
        {
            "phase": "restart",
            "command": "download-model",
            "file": name,
            "msg": why,
            "connections": connections,
        }
    )
    remote = job.probe()
    job.check_advertised(remote)
    return _Attempt(remote, fresh_state(job, remote, connections), True, connections, {}, 0)


def _stream(job: Job, attempt: _Attempt) -> _Finished:
    """Fill `.part` from the attempt's state; on the way out (failure, Ctrl-C) its state
    is checkpointed, so the same command resumes."""
    target, state = job.target, attempt.state
    ensure_download_space(
        target.directory, None if state.size is None else state.size - state.received
    )
    part = PartFile(target, state, fresh=attempt.fresh)
    job.reporter.emit(
        {
            "phase": "start",
            "command": "download-model",
            "file": target.name,
            "url": redact(job.url),
            "path": str(target.final),
            "resume": state.received > 0,
            "start": state.received,
            "total": state.size,
            "connections": min(attempt.connections, len(state.chunks)),
        }
    )
    ctx = StreamContext(
        client=job.client,
        part=part,
        backoff=job.backoff,
        reporter=job.reporter,
        stop=threading.Event(),
        cancel=job.cancel,
        file_label=target.name,
        conditional=attempt.conditional or None,
        url=job.url,
    )
    try:
        run_streams(ctx, attempt.connections, _progress_reporter(job, state.size))
        part.finish()
        return _Finished(part.hasher.hexdigest(), part.received())
    except KeyboardInterrupt:
        _save_quietly(part)
        raise Interrupted(
            f"interrupted: {part.received():,} bytes of {target.name} kept in {target.part}",
            "run the same command again to resume",
        ) from None
    except XtaskError:
        _save_quietly(part)
        raise
    finally:
        part.close()


def _progress_reporter(job: Job, size: int | None) -> Callable[[int], None]:
    """A `progress` event whenever the byte count moved since the last one."""
    last_reported = -1

    def on_progress(received: int) -> None:
        nonlocal last_reported
        if received != last_reported:
            last_reported = received
            job.reporter.emit(
                {
                    "phase": "progress",
                    "command": "download-model",
                    "file": job.target.name,
                    "path": str(job.target.final),
                    "downloaded": received,
                    "total": size,
                }
            )

    return on_progress


def _save_quietly(part: PartFile) -> None:
    """Checkpoint on the way out; a full disk may refuse, and the old state stays valid."""
    with contextlib.suppress(OSError, XtaskError):
        part.checkpoint()


def _not_modified(job: Job, remote: RemoteFile, exc: NotModified) -> DownloadResult:
    """A 304 to the conditional GET: the file here is current; its metadata is whole again."""
    target = job.target
    remove(target.part, target.state)
    job.record_version(
        remote.linked_etag or exc.etag or read_metadata(target.etag),
        exc.last_modified or read_metadata(target.lastmod),
    )
    return confirm_existing(job, remote.commit, None)


def _publish(job: Job, attempt: _Attempt, finished: _Finished) -> DownloadResult:
    """Rename the verified `.part` over the final name; keep its validators."""
    target, state = job.target, attempt.state
    if (mismatch := job.mismatch(attempt.remote, finished.digest, finished.size)) is not None:
        raise _reject(job, mismatch)
    publish(target.part, target.final)
    job.record_version(state.linked_etag or state.etag, state.last_modified)
    remove(target.state)
    return job.result("network", finished.size, finished.digest, state.commit, attempt.resumed_from)


def _reject(job: Job, mismatch: Mismatch) -> HashMismatchError:
    """The bytes just downloaded are wrong: they go (`.part` and its state). A file already
    at the final name is the version on disk before this run and stays, with its metadata:
    a good file is only ever replaced by the rename of a verified download (issue 10 #4)."""
    target = job.target
    remove(target.part, target.state)
    kept = ""
    if target.final.exists():
        kept = f"; {target.final}, the version already on disk, was kept"
    else:
        remove(target.etag, target.lastmod)
    pin = job.spec.pinned_by if mismatch.what == "SHA-256" else "the pinned size"
    return HashMismatchError(
        f"{mismatch.what} mismatch for {target.name}: expected {mismatch.expected}, "
        f"got {mismatch.actual}",
        f"the downloaded bytes were discarded{kept}; check {pin}, or run again to "
        "download it afresh",
    )
