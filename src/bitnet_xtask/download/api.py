"""`download_model()`: the whole life of one download, usable without the CLI.

For each file: take the lock; if the file is already here, ask the server whether it
changed (HEAD, or a conditional GET); else reuse a matching blob from the local Hugging
Face cache; else probe the server, adopt a `.part` whose version still matches, check
the disk, stream, verify the SHA-256, and publish the file with an atomic rename.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from bitnet_xtask.cache import tag_created
from bitnet_xtask.errors import (
    HashMismatchError,
    Interrupted,
    NetworkError,
    NotFoundError,
    UsageError,
    XtaskError,
)
from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.redact import without_userinfo

from . import hf_cache
from .defaults import DEFAULT_FILE, DEFAULT_REPO
from .hub import (
    HubClient,
    RemoteFile,
    default_base_url,
    redact,
    strip_quotes,
    url_problem,
    validate_repo_id,
    validate_revision,
)
from .retry import Backoff, TransientError, retrying
from .store import (
    Chunk,
    FileLock,
    ResumeState,
    Target,
    atomic_write_text,
    check_destination,
    ensure_space,
    free_bytes,
    fs_error,
    hash_file,
    leaf_name,
    link_or_copy,
    metadata_ok,
    model_dir,
    publish,
    raise_if_no_space,
    read_metadata,
    remove,
)
from .transfer import (
    NotModified,
    PartFile,
    RestartFromZero,
    StreamContext,
    plan_chunks,
    run_streams,
)

PARALLEL_THRESHOLD = 64 << 20
AUTO_CONNECTIONS = 4
MAX_RESTARTS = 3
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class FileSpec:
    """One file to fetch: its path inside the repository and, optionally, its sha256."""

    path: str
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise UsageError(
                f"--sha256 must be 64 hex digits, got {self.sha256!r}",
                "copy the SHA256 from the file's page on the hub",
            )


@dataclass(frozen=True)
class DownloadOptions:
    """Everything about how to download, shared by all files of one run."""

    repo_id: str = DEFAULT_REPO
    revision: str = "main"
    out: Path = Path("models")
    base_url: str | None = None
    token: str | None = None
    force: bool = False
    retries: int = 3
    timeout: float = 1800.0
    stall_timeout: float = 60.0
    connections: int | None = None
    lock_timeout: float = 1800.0
    use_hf_cache: bool = True
    backoff_base: float = 0.5


@dataclass(frozen=True)
class DownloadResult:
    """What happened to one file."""

    path: Path
    size: int
    sha256: str | None
    url: str
    commit: str | None
    source: str  # "network", "up-to-date" or "hf-cache"
    resumed_from: int = 0
    elapsed_ms: int = 0

    @property
    def cached(self) -> bool:
        """No byte of the file came over the network this time."""
        return self.source != "network"


@dataclass(frozen=True)
class DownloadPlan:
    """What `--dry-run` reports: what would happen, with nothing written."""

    url: str
    path: Path
    size: int | None
    resume_from: int
    free_bytes: int
    connections: int
    commit: str | None
    up_to_date: bool


@dataclass
class _Job:
    """One file's download in progress: the pieces every step needs."""

    spec: FileSpec
    options: DownloadOptions
    client: HubClient
    reporter: Reporter
    target: Target
    url: str
    session: requests.Session = field(init=False)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.session = self.client.new_session()

    @property
    def backoff(self) -> Backoff:
        return Backoff(retries=self.options.retries, base=self.options.backoff_base)

    def probe(self) -> RemoteFile:
        def on_retry(exc: TransientError, delay: float, failures: int) -> None:
            self.reporter.emit(
                {
                    "phase": "retry",
                    "file": self.target.name,
                    "wait_secs": round(delay, 3),
                    "msg": str(exc),
                    "attempt": failures,
                }
            )

        return retrying(lambda: self.client.probe(self.session, self.url), self.backoff, on_retry)

    def result(
        self, source: str, size: int, sha256: str | None, commit: str | None, resumed_from: int = 0
    ) -> DownloadResult:
        result = DownloadResult(
            path=self.target.final,
            size=size,
            sha256=sha256,
            url=self.url,
            commit=commit,
            source=source,
            resumed_from=resumed_from,
            elapsed_ms=int((time.monotonic() - self.started) * 1000),
        )
        self.reporter.emit(
            {
                "phase": "done",
                "file": self.target.name,
                "path": str(result.path),
                "bytes": size,
                "ms": result.elapsed_ms,
                "sha256": sha256,
                "commit": commit,
                "cached": result.cached,
                "source": source,
            }
        )
        return result


def _client(options: DownloadOptions, reporter: Reporter, source: str | None = None) -> HubClient:
    given = options.base_url is not None  # `--base-url ''` is refused, not huggingface.co
    return HubClient(
        options.base_url if options.base_url is not None else default_base_url(),
        options.token if options.token is not None else hf_cache.find_token(reporter.info),
        connect_timeout=options.timeout,
        stall_timeout=options.stall_timeout,
        debug=reporter.debug,
        source=source or ("--base-url" if given else "$HF_ENDPOINT"),
    )


def _job(spec: FileSpec, options: DownloadOptions, client: HubClient, reporter: Reporter) -> _Job:
    validate_repo_id(options.repo_id)
    validate_revision(options.revision)
    target = Target(model_dir(options.out, options.repo_id), leaf_name(spec.path))
    url = client.file_url(options.repo_id, options.revision, spec.path)
    return _Job(spec, options, client, reporter, target, url)


def _write_cache_metadata(target: Target, etag: str | None, last_modified: str | None) -> None:
    """Only what a later run will read back and may send as a header (`metadata_ok`): a
    server's 60 KiB or multi-line ETag is not kept (the next run then hashes the file)."""
    for path, value in ((target.etag, etag), (target.lastmod, last_modified)):
        if value and metadata_ok(value):
            atomic_write_text(path, value + "\n")
        else:
            remove(path)


def _reject(job: _Job, expected: str, actual: str) -> HashMismatchError:
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
    return HashMismatchError(
        f"SHA-256 mismatch for {target.name}: expected {expected}, got {actual}",
        f"the downloaded bytes were discarded{kept}; check --sha256, or run again to "
        "download it afresh",
    )


def _kept_mismatch(job: _Job, expected: str, actual: str, advertised: str | None) -> XtaskError:
    """`--sha256` disagrees with the file on disk, and downloading cannot settle it."""
    server = f" (the server advertises {advertised})" if advertised else ""
    return HashMismatchError(
        f"SHA-256 mismatch for {job.target.name}: expected {expected}, "
        f"the file on disk has {actual}{server}",
        f"nothing was removed; check --sha256, or if {job.target.final} is damaged run "
        "again with --force (it is replaced only once the new download verifies)",
    )


def _confirm_existing(job: _Job, commit: str | None, sha: str | None) -> DownloadResult:
    """The finished file is current; `--sha256` is still checked (even after a 304), and
    a mismatch keeps the file (exit 13)."""
    target, expected = job.target, job.spec.sha256
    if expected:
        actual = hash_file(target.final)
        if actual != expected.lower():
            raise _kept_mismatch(job, expected.lower(), actual, None)
        sha = actual
    return job.result("up-to-date", target.final.stat().st_size, sha, commit)


def _current_on_server(job: _Job, remote: RemoteFile) -> _Revalidation:
    """The server serves the version on disk. With `--sha256`, a file that does not match
    it is damaged (the server's sha256 is the expected one, or unknown): it is downloaded
    again and replaced only once that verifies; or `--sha256` is wrong (the server's
    sha256 is another): exit 13 at once, the file kept, nothing downloaded."""
    target, expected = job.target, (job.spec.sha256 or "").lower()
    if not expected:
        return _Revalidation(_confirm_existing(job, remote.commit, remote.sha256))
    actual = hash_file(target.final)
    if actual == expected:
        return _Revalidation(
            job.result("up-to-date", target.final.stat().st_size, actual, remote.commit)
        )
    advertised = (remote.sha256 or "").lower() or None
    if advertised not in (None, expected):
        raise _kept_mismatch(job, expected, actual, advertised)
    job.reporter.info(
        f"{target.name} on disk does not match --sha256 (it has {actual}); downloading it "
        "again: the file is replaced only once the new download verifies"
    )
    return _Revalidation(remote=remote)


@dataclass(frozen=True)
class _Revalidation:
    """What asking the server about an existing file settled."""

    result: DownloadResult | None = None
    remote: RemoteFile | None = None
    conditional: dict[str, str] = field(default_factory=dict)


def _revalidate(job: _Job) -> _Revalidation:
    """Is the finished file current? Else the probe to reuse and conditional headers."""
    target, expected = job.target, job.spec.sha256
    note = job.reporter.debug
    stored_etag, stored_lastmod = (
        read_metadata(target.etag, note),
        read_metadata(target.lastmod, note),
    )
    try:
        remote = job.probe()
    except NetworkError as exc:
        if isinstance(exc, NotFoundError) or (stored_etag is None and expected is None):
            raise
        job.reporter.info(f"warning: could not check for a newer version ({exc.message})")
        return _Revalidation(_confirm_existing(job, None, None))
    if remote.identity and stored_etag:
        if remote.identity == strip_quotes(stored_etag):
            return _current_on_server(job, remote)
        job.reporter.info(f"{target.name} changed on the server; downloading the new version")
        return _Revalidation(remote=remote)
    if stored_etag is None and (want := expected or remote.sha256):
        # No metadata (copied in by hand?): the advertised hash decides.
        if hash_file(target.final) == want.lower():
            _write_cache_metadata(target, remote.identity, remote.last_modified)
            return _Revalidation(_confirm_existing(job, remote.commit, want.lower()))
        return _Revalidation(remote=remote)
    conditional = {}
    if stored_etag:
        conditional["If-None-Match"] = f'"{strip_quotes(stored_etag)}"'
    if stored_lastmod:
        conditional["If-Modified-Since"] = stored_lastmod
    return _Revalidation(remote=remote, conditional=conditional)


def _adopt_hf_blob(job: _Job, sha256: str | None) -> DownloadResult | None:
    """Hard-link (or copy) a verified blob from the Hugging Face cache."""
    options = job.options
    found = hf_cache.find_blob(options.repo_id, options.revision, job.spec.path, sha256)
    if found is None:
        return None
    blob, expected = found
    actual = hash_file(blob)
    if actual != expected:
        job.reporter.info(f"ignoring a corrupt Hugging Face cache blob: {blob}")
        return None
    target = job.target
    remove(target.part)
    try:  # a `.part` linked to the blob must never outlive this: it is the blob's inode
        link_or_copy(blob, target.part)
        with target.part.open("rb") as handle:
            os.fsync(handle.fileno())
        publish(target.part, target.final)
    except OSError as exc:
        remove(target.part)
        raise_if_no_space(exc, target.directory)
        job.reporter.info(f"could not reuse {blob}: {exc.strerror}")
        return None
    except BaseException:
        remove(target.part)
        raise
    _write_cache_metadata(target, f'"{expected}"', None)
    remove(target.state)
    job.reporter.info(f"reused {blob} from the Hugging Face cache")
    return job.result("hf-cache", target.final.stat().st_size, actual, None)


def _state_of(remote: RemoteFile, url: str, chunks: list[Chunk]) -> ResumeState:
    """The resume state of `remote`; its URL is kept without credentials (it goes to disk)."""
    return ResumeState(
        url=without_userinfo(url),
        size=remote.size,
        etag=remote.etag,
        linked_etag=remote.linked_etag,
        commit=remote.commit,
        last_modified=remote.last_modified,
        chunks=chunks,
    )


def _default_connections(options: DownloadOptions, remote: RemoteFile) -> int:
    resumable = _state_of(remote, "", []).resumable
    if remote.size is None or not remote.accept_ranges or not resumable:
        return 1
    if options.connections is not None:
        return max(1, options.connections)
    return AUTO_CONNECTIONS if remote.size >= PARALLEL_THRESHOLD else 1


def _fresh_state(job: _Job, remote: RemoteFile, connections: int) -> ResumeState:
    """A new state for the whole file, once the disk is known to hold it: the size is the
    server's word, so nothing is built from it before that check (a 10^15-byte claim
    used to cost gigabytes of chunk map before the disk check said no)."""
    ensure_space(job.target.directory, remote.size)
    return _state_of(remote, job.url, plan_chunks(remote.size, connections))


def _resumable(job: _Job, remote: RemoteFile) -> ResumeState | None:
    """The saved state, if `.part` provably holds bytes of the version now served."""
    state = ResumeState.load(job.target.state, note=job.reporter.debug)
    if state is None or not job.target.part.is_file() or not state.resumable:
        return None
    same_version = (
        state.url == without_userinfo(job.url)
        and state.size == remote.size
        and (
            strip_quotes(state.linked_etag or state.etag)
            == strip_quotes(remote.linked_etag or remote.etag)
        )
    )
    if not same_version:
        job.reporter.info(f"discarding {job.target.part.name}: the file changed on the server")
        return None
    # The state claims bytes up to `claimed`; a `.part` cut shorter (or grown past the
    # file's size) no longer holds them: resuming would splice zeros in (issue 10 #18).
    on_disk = job.target.part.lstat().st_size
    claimed = max((c.done for c in state.chunks if c.done > c.start), default=0)
    if on_disk < claimed or (state.size is not None and on_disk > state.size):
        job.reporter.info(
            f"discarding {job.target.part.name}: it holds {on_disk:,} bytes, its state "
            f"says {claimed:,} of {state.size:,}; starting again from byte 0"
        )
        return None
    return state


def _expected_sha256(job: _Job, remote: RemoteFile) -> str | None:
    """`--sha256`, else the hub's advertised sha256 (its linked ETag), else nothing."""
    return (job.spec.sha256 or remote.sha256 or "").lower() or None


def _fetch(job: _Job, remote: RemoteFile, conditional: dict[str, str]) -> DownloadResult:
    target, options = job.target, job.options
    expected = _expected_sha256(job, remote)
    connections = _default_connections(options, remote)
    state = None if options.force else _resumable(job, remote)
    fresh = state is None
    if state is None:
        state = _fresh_state(job, remote, connections)
    else:
        conditional = {}
    resumed_from = state.received
    for restart in range(MAX_RESTARTS + 1):
        ensure_space(target.directory, None if state.size is None else state.size - state.received)
        part = PartFile(target, state, fresh=fresh)
        job.reporter.emit(
            {
                "phase": "start",
                "file": target.name,
                "url": redact(job.url),
                "path": str(target.final),
                "resume": state.received > 0,
                "start": state.received,
                "total": state.size,
                "connections": min(connections, len(state.chunks)),
            }
        )
        ctx = StreamContext(
            client=job.client,
            part=part,
            backoff=job.backoff,
            reporter=job.reporter,
            stop=threading.Event(),
            file_label=target.name,
            conditional=conditional or None,
            url=job.url,
        )
        last_reported = -1

        def on_progress(received: int, size: int | None = state.size) -> None:
            nonlocal last_reported
            if received != last_reported:
                last_reported = received
                job.reporter.emit(
                    {
                        "phase": "progress",
                        "file": target.name,
                        "downloaded": received,
                        "total": size,
                    }
                )

        try:
            run_streams(ctx, connections, on_progress)
            part.hasher.catch_up(part.contiguous())
            os.fsync(part.fd)
            digest = part.hasher.hexdigest()
            size = part.received()
            break
        except NotModified as exc:
            part.close()
            remove(target.part, target.state)
            _write_cache_metadata(
                target,
                remote.linked_etag or exc.etag or read_metadata(target.etag),
                exc.last_modified or read_metadata(target.lastmod),
            )
            return _confirm_existing(job, remote.commit, None)
        except RestartFromZero as exc:
            if restart == MAX_RESTARTS:
                raise NetworkError(
                    f"gave up after {MAX_RESTARTS} restarts from byte 0: {exc}",
                    "the server keeps changing the file, or mangles ranged answers even for "
                    "one stream's resumes; try later, or from another --base-url",
                ) from None
            why = str(exc)
            if exc.ranges_unsupported and connections > 1:
                # One stream asks for no range at all, unless its connection drops.
                why += "; falling back to one stream"
                connections = 1
            job.reporter.info(f"restarting {target.name} from byte 0: {why}")
            job.reporter.emit(
                {"phase": "restart", "file": target.name, "msg": why, "connections": connections}
            )
            remote = job.probe()
            expected = _expected_sha256(job, remote)
            state, fresh, conditional, resumed_from = (
                _fresh_state(job, remote, connections),
                True,
                {},
                0,
            )
            continue
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
    else:  # pragma: no cover - the loop always breaks, returns or raises
        raise AssertionError("unreachable")
    if expected and digest != expected:
        raise _reject(job, expected, digest)
    publish(target.part, target.final)
    _write_cache_metadata(target, state.linked_etag or state.etag, state.last_modified)
    remove(target.state)
    return job.result("network", size, digest, state.commit, resumed_from)


def _save_quietly(part: PartFile) -> None:
    """Checkpoint on the way out; a full disk may refuse, and the old state stays valid."""
    with contextlib.suppress(OSError, XtaskError):
        part.checkpoint()


def _download_one(job: _Job) -> DownloadResult:
    """Run one file's download; a directory it created is removed again if left empty,
    and one that stays is tagged as ours, whatever the outcome: a failed, interrupted or
    out-of-space download keeps its `.part` there, and clean-cache may remove it."""
    check_destination(job.target)
    created = [p for p in (job.target.directory, *job.target.directory.parents) if not p.exists()]
    try:
        job.target.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(exc, job.target.directory) from None
    try:
        return _download_locked(job)
    finally:
        for directory in created:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()  # only succeeds when empty
        tag_created([p for p in created if p.is_dir()], job.options.out)  # made by us


def _download_locked(job: _Job) -> DownloadResult:
    target, options = job.target, job.options
    lock = FileLock(
        target.lock, options.lock_timeout, on_wait=job.reporter.info, on_note=job.reporter.debug
    )
    with lock.held():
        if lock.took_over:
            job.reporter.debug(f"took over the lock left by {lock.took_over}")
        revalidation = _Revalidation()
        if target.final.is_file() and not options.force:
            revalidation = _revalidate(job)
            if revalidation.result is not None:
                return revalidation.result
        if options.use_hf_cache and job.spec.sha256:
            adopted = _adopt_hf_blob(job, job.spec.sha256.lower())
            if adopted:
                return adopted
        try:
            remote = revalidation.remote or job.probe()
        except NetworkError:
            adopted = None
            if options.use_hf_cache and not job.spec.sha256:
                adopted = _adopt_hf_blob(job, None)
            if adopted is None:
                raise
            return adopted
        if options.use_hf_cache and not job.spec.sha256 and remote.sha256:
            adopted = _adopt_hf_blob(job, remote.sha256)
            if adopted:
                return adopted
        return _fetch(job, remote, revalidation.conditional)


def download_files(
    files: Sequence[FileSpec],
    options: DownloadOptions | None = None,
    reporter: Reporter | None = None,
) -> list[DownloadResult]:
    """Download several files of one repository; stops at the first failure."""
    options = options or DownloadOptions()
    reporter = reporter or NullReporter()
    client = _client(options, reporter)
    jobs = [_job(spec, options, client, reporter) for spec in files]
    names = [job.target.name for job in jobs]
    if len(set(names)) != len(names):
        raise UsageError(
            "two --file values land on the same local name", "download them separately"
        )
    for job in jobs:  # every file's destination, before the first byte of any
        check_destination(job.target)
    results = []
    for job in jobs:
        try:
            results.append(_download_one(job))
        finally:
            job.session.close()
    return results


def download_model(
    repo_id: str = DEFAULT_REPO,
    filename: str = DEFAULT_FILE,
    *,
    sha256: str | None = None,
    reporter: Reporter | None = None,
    **options: object,
) -> DownloadResult:
    """Download one file; `options` are the fields of `DownloadOptions`."""
    opts = DownloadOptions(repo_id=repo_id, **options)  # type: ignore[arg-type]
    return download_files([FileSpec(filename, sha256)], opts, reporter)[0]


def download_url(
    url: str,
    directory: Path,
    *,
    filename: str | None = None,
    sha256: str | None = None,
    reporter: Reporter | None = None,
    **options: object,
) -> DownloadResult:
    """Any http(s) URL into `directory`, with every guarantee of `download_model`
    (resume, verification, lock, durability); no token is sent and no HF cache is used.

    fetch-cpp uses it for source tarballs; `options` are `DownloadOptions` fields.
    """
    if problem := url_problem(url):  # urlsplit below raises on `http://[::1`
        raise UsageError(f"invalid URL '{redact(url)}': {problem}")
    parts = urlsplit(url)
    opts = DownloadOptions(
        base_url=f"{parts.scheme}://{parts.netloc}",
        token="",
        use_hf_cache=False,
        **options,  # type: ignore[arg-type]
    )
    reporter = reporter or NullReporter()
    spec = FileSpec(filename or unquote(parts.path.rsplit("/", 1)[-1]), sha256)
    client = _client(opts, reporter, source="URL")
    job = _Job(spec, opts, client, reporter, Target(directory, leaf_name(spec.path)), url)
    try:
        return _download_one(job)
    finally:
        job.session.close()


def plan_download(
    files: Sequence[FileSpec],
    options: DownloadOptions | None = None,
    reporter: Reporter | None = None,
) -> list[DownloadPlan]:
    """What a download would do (`--dry-run`): asks the server, writes nothing; `reporter`
    gets the lines a download would print before its first request (a token file ignored)."""
    options = options or DownloadOptions()
    client = _client(options, reporter or NullReporter())
    jobs = [_job(spec, options, client, NullReporter()) for spec in files]
    for job in jobs:  # what the download would refuse, the plan refuses too
        check_destination(job.target)
    plans = []
    for job in jobs:
        try:
            remote = job.probe()
        finally:
            job.session.close()
        state = None if options.force else _resumable(job, remote)
        stored = read_metadata(job.target.etag)
        plans.append(
            DownloadPlan(
                url=redact(job.url),
                path=job.target.final,
                size=remote.size,
                resume_from=state.received if state else 0,
                free_bytes=free_bytes(job.target.directory),
                connections=_default_connections(options, remote),
                commit=remote.commit,
                up_to_date=bool(
                    not options.force
                    and job.target.final.is_file()
                    and stored
                    and remote.identity == strip_quotes(stored)
                ),
            )
        )
    return plans
