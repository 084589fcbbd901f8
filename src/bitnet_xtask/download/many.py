"""`download_many`: files of several repositories at once, under one bound on connections.

Each file takes the path a single download takes (`api._download_one`: lock, revalidate,
HF-cache adopt, fetch), so every guarantee of download-model holds per file. What this
adds is the schedule (`allot`: how many files at once, how many streams each), the
failure policy (one file's failure never stops the others, since whatever finishes is
less for the rerun to do; then the most important error is raised) and the stop: signals
reach only the main thread, so on Ctrl-C or SIGTERM it sets the run's `cancel` event,
which every running file's streams watch (`transfer.run_streams`): they stop, checkpoint
`.part` as a single download does, and the whole run resumes with the same command.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bitnet_xtask.errors import (
    AuthError,
    HashMismatchError,
    Interrupted,
    NetworkError,
    NoSpaceError,
    RateLimitedError,
    UsageError,
    XtaskError,
)
from bitnet_xtask.events import NullReporter, Reporter

from .api import _download_one, made_directory
from .hub import HubClient
from .job import Job, hub_job, new_client
from .options import DownloadOptions, FileSpec
from .results import DownloadResult
from .store import check_destination

__all__ = ["Allotment", "FileRequest", "allot", "download_many", "most_important"]

#: After Ctrl-C, how long the main thread waits for the files to stop and checkpoint. A
#: streaming file stops within a fraction of a second; one waiting for another process's
#: lock (a plain sleep) or for a server that does not answer can't be woken, and is left
#: behind after this (its threads are daemons, so it never holds up the exit).
STOP_WAIT = 30.0
#: How often the main thread wakes while it waits for the files (a signal interrupts the
#: wait at once on POSIX; this only bounds a platform where it would not).
_WATCH = 0.2

#: The order in which one error matters more than another, when several files failed: an
#: interruption (the user asked to stop), then what the user must fix on this machine
#: (disk space), then what says the files are not what they should be (a hash or size
#: mismatch, a refusal to authenticate), then what may pass by itself (rate limits, the
#: network). Anything else comes after these, in request order.
_PRECEDENCE: tuple[type[XtaskError], ...] = (
    Interrupted,
    NoSpaceError,
    HashMismatchError,
    AuthError,
    RateLimitedError,
    NetworkError,
)

_Outcome = DownloadResult | BaseException


@dataclass(frozen=True)
class FileRequest:
    """One file of a `download_many` run: what it is (`spec`: path, sha256, size) and
    where from and to (`options`: repository, revision, `out`, `base_url`, token, ...).
    `options.connections` is ignored: the run allots each file its share (`allot`)."""

    spec: FileSpec
    options: DownloadOptions

    @property
    def label(self) -> str:
        """`repo/path`: how messages name the file (two repositories may both have one
        of the same name)."""
        return f"{self.options.repo_id}/{self.spec.path}"


@dataclass(frozen=True)
class Allotment:
    """How a run spends its connections: `parallel` files at once, `per_file` streams each."""

    parallel: int
    per_file: int


def allot(connections: int, files: int) -> Allotment:
    """The one rule for sharing `connections` among `files`: as many files at once as
    there are connections (or files), and each the same whole share of the connections,
    so `parallel * per_file <= connections` always holds: the bound on open body streams.
    Many small files then go one stream each, side by side; one big file gets them all.
    A share is fixed for the run: a file never grows its streams as others finish."""
    if connections < 1:
        raise UsageError(f"the number of connections must be at least 1, got {connections}")
    parallel = max(1, min(connections, files))
    return Allotment(parallel=parallel, per_file=connections // parallel)


def download_many(
    requests: Sequence[FileRequest],
    *,
    connections: int = 4,
    reporter: Reporter | None = None,
) -> list[DownloadResult]:
    """Download every requested file, up to `connections` body streams at once in all;
    the results in request order.

    Every destination is checked before the first byte of any (two requests that land on
    the same final path are a usage error). A file that fails does not stop the others;
    once all are done, the most important error (`most_important`) is raised, naming how
    many files failed and which, and what the others downloaded stays in place.
    """
    reporter = reporter or NullReporter()
    share = allot(connections, len(requests))
    cancel = threading.Event()
    jobs = _jobs(requests, share.per_file, reporter, cancel)
    try:
        _check_destinations(requests, jobs)
        directories = {job.target.directory: job.options.out for job in jobs}
        with contextlib.ExitStack() as held:
            for directory, out in directories.items():
                held.enter_context(made_directory(directory, out))
            outcomes = _run(requests, jobs, share.parallel, cancel)
    finally:
        for job in jobs:  # those that never ran (a refusal, a Ctrl-C); closing is idempotent
            job.session.close()
    return _results(requests, outcomes, reporter)


def _jobs(
    requests: Sequence[FileRequest], per_file: int, reporter: Reporter, cancel: threading.Event
) -> list[Job]:
    """One job per request, with its share of the connections and the run's `cancel`;
    one client per distinct server, token and timeouts (what a client is made of)."""
    clients: dict[tuple[str | None, str | None, float, float], HubClient] = {}
    jobs = []
    for request in requests:
        options = replace(request.options, connections=per_file)
        key = (options.base_url, options.token, options.timeout, options.stall_timeout)
        if key not in clients:
            clients[key] = new_client(options, reporter)
        jobs.append(hub_job(request.spec, options, clients[key], reporter, cancel))
    return jobs


def _check_destinations(requests: Sequence[FileRequest], jobs: Sequence[Job]) -> None:
    """Refuse up front what `download_files` refuses: two files on one path, and every
    destination a download would fail on (`check_destination`)."""
    seen: dict[Path, FileRequest] = {}
    for request, job in zip(requests, jobs, strict=True):
        final = job.target.final
        if final in seen:
            raise UsageError(
                f"{seen[final].label} and {request.label} both land on {final}",
                "download them separately, or into different --out directories",
            )
        seen[final] = request
    for job in jobs:
        check_destination(job.target)


def _run(
    requests: Sequence[FileRequest], jobs: Sequence[Job], parallel: int, cancel: threading.Event
) -> dict[int, _Outcome]:
    """Run the jobs on `parallel` daemon threads, each taking the next job when its last
    one is done; on Ctrl-C (here, in the main thread) stop them all (`_stop`)."""
    outcomes: dict[int, _Outcome] = {}
    pending = iter(range(len(jobs)))
    pending_lock = threading.Lock()

    # Each worker says it has ended through its own event, not `Thread.join`/`is_alive`:
    # a KeyboardInterrupt that lands inside `join` can leave CPython (before 3.13) saying
    # a running thread has stopped (python/cpython#90882: `_wait_for_tstate_lock` releases
    # the running thread's lock when interrupted), and the run would exit under a file
    # that still holds its lock.
    ended = [threading.Event() for _ in range(parallel)]

    def worker(number: int) -> None:
        try:
            while not cancel.is_set():
                with pending_lock:
                    index = next(pending, None)
                if index is None:
                    return
                outcomes[index] = _outcome(jobs[index])
        finally:
            ended[number].set()

    threads = [
        threading.Thread(target=worker, args=(n,), name=f"download-{n}", daemon=True)
        for n in range(parallel)
    ]
    started: list[threading.Event] = []
    try:
        for thread, event in zip(threads, ended, strict=True):
            thread.start()
            started.append(event)
        for event in ended:
            while not event.wait(_WATCH):
                pass
    except KeyboardInterrupt:
        cancel.set()
        left = _stop(started)
        raise _interrupted(requests, jobs, outcomes, left) from None
    return outcomes


def _outcome(job: Job) -> _Outcome:
    """One file's result, or what it raised (the main thread raises it, or the most
    important of them, once every file is done)."""
    try:
        return _download_one(job)
    except BaseException as exc:  # a worker thread: nothing above it would see it
        return exc
    finally:  # its keep-alive sockets go with it: open connections stay within the bound
        job.session.close()


def _stop(ended: Sequence[threading.Event]) -> int:
    """Wait (at most `STOP_WAIT` in all) for the started workers to end; how many did not."""
    deadline = time.monotonic() + STOP_WAIT
    for event in ended:
        event.wait(max(0.0, deadline - time.monotonic()))
    return sum(not event.is_set() for event in ended)


def _interrupted(
    requests: Sequence[FileRequest],
    jobs: Sequence[Job],
    outcomes: dict[int, _Outcome],
    left: int,
) -> Interrupted:
    """What a stopped run kept: the files with a `.part` to resume, those finished."""
    kept = [r.label for r, job in zip(requests, jobs, strict=True) if job.target.part.is_file()]
    finished = sum(isinstance(outcome, DownloadResult) for outcome in outcomes.values())
    message = "interrupted: "
    if kept:
        message += f"{_files(len(kept))} kept their partial downloads ({', '.join(kept)})"
    else:
        message += "no partial download to keep"
    if finished:
        message += f"; {_files(finished)} of {len(jobs)} finished"
    if left:
        message += f"; {left} still waiting (for a lock or the server) after {STOP_WAIT:.0f}s"
    return Interrupted(message, "run the same command again to resume")


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def _results(
    requests: Sequence[FileRequest], outcomes: dict[int, _Outcome], reporter: Reporter
) -> list[DownloadResult]:
    """The results in request order, or the error that says what failed. A bug (not an
    `XtaskError`) is raised as it is, with its traceback, before any expected failure."""
    results: list[DownloadResult] = []
    failed: list[tuple[FileRequest, XtaskError]] = []
    for index, request in enumerate(requests):
        outcome = outcomes[index]
        if isinstance(outcome, DownloadResult):
            results.append(outcome)
        elif isinstance(outcome, XtaskError):
            failed.append((request, outcome))
        else:
            raise outcome
    if not failed:
        return results
    if len(requests) == 1:
        raise failed[0][1]  # one file: exactly what a single download raises
    for request, error in failed:
        reporter.info(f"failed: {request.label}: {error.message}")
    raise _combined(failed, len(requests)) from most_important([e for _, e in failed])


def most_important(errors: Sequence[XtaskError]) -> XtaskError:
    """The error to raise when several files failed (`_PRECEDENCE`; the first of a kind)."""
    for kind in _PRECEDENCE:
        for error in errors:
            if isinstance(error, kind):
                return error
    return errors[0]


def _combined(failed: Sequence[tuple[FileRequest, XtaskError]], total: int) -> XtaskError:
    """The most important error, reworded to say how many files failed and which; its
    class (and so its exit code) is the chosen error's, or the nearest base class that
    takes a message and a hint (`NotRegularFileError` is rebuilt as a `UsageError`)."""
    chosen = most_important([error for _, error in failed])
    kind = next(
        k
        for k in type(chosen).__mro__
        if issubclass(k, XtaskError) and k.__init__ is XtaskError.__init__
    )
    names = ", ".join(request.label for request, _ in failed)
    hint = "the other files are in place; the same command again resumes the rest"
    return kind(
        f"{len(failed)} of {total} files failed ({names}): {chosen.message}",
        f"{chosen.hint}; {hint}" if chosen.hint else hint,
    )
