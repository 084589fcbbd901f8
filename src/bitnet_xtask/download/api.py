"""The public entry points: `download_files`, `download_model`, `download_url`.

For each file: take the lock; if the file is already here, ask the server whether it
changed (`revalidate`, by the rule `--dry-run` shares); else reuse a matching blob from
the local Hugging Face cache (`adopt`); else fetch it (`fetch`: adopt a `.part` whose
version still matches, check the disk, stream, verify the SHA-256, publish atomically).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from bitnet_xtask.cache import tag_created
from bitnet_xtask.errors import NetworkError, UsageError
from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.filelock import FileLock
from bitnet_xtask.fs import fs_error

from .adopt import adopt_hf_blob
from .defaults import DEFAULT_FILE, DEFAULT_REPO
from .fetch import fetch
from .hub import RemoteFile
from .job import Job, hub_job, new_client
from .options import DownloadOptions, FileSpec
from .results import DownloadResult
from .revalidate import Revalidation, revalidate
from .store import Target, check_destination, download_lock_busy, leaf_name
from .urls import redact, url_problem

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import HubOptions, TransferOptions

__all__ = ["download_files", "download_model", "download_url"]


def download_files(
    files: Sequence[FileSpec],
    options: DownloadOptions | None = None,
    reporter: Reporter | None = None,
) -> list[DownloadResult]:
    """Download several files of one repository; stops at the first failure."""
    options = options or DownloadOptions()
    reporter = reporter or NullReporter()
    client = new_client(options, reporter)
    jobs = [hub_job(spec, options, client, reporter) for spec in files]
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
    **options: Unpack[HubOptions],
) -> DownloadResult:
    """Download one file; `options` are the fields of `DownloadOptions`."""
    opts = DownloadOptions(repo_id=repo_id, **options)
    return download_files([FileSpec(filename, sha256)], opts, reporter)[0]


def download_url(
    url: str,
    directory: Path,
    *,
    filename: str | None = None,
    sha256: str | None = None,
    reporter: Reporter | None = None,
    **options: Unpack[TransferOptions],
) -> DownloadResult:
    """Any http(s) URL into `directory`, with every guarantee of `download_model`
    (resume, verification, lock, durability); no token is sent and no HF cache is used.

    fetch-cpp uses it for source tarballs.
    """
    if problem := url_problem(url):  # urlsplit below raises on `http://[::1`
        raise UsageError(f"invalid URL '{redact(url)}': {problem}")
    parts = urlsplit(url)
    opts = DownloadOptions(
        base_url=f"{parts.scheme}://{parts.netloc}", token="", use_hf_cache=False, **options
    )
    reporter = reporter or NullReporter()
    spec = FileSpec(filename or unquote(parts.path.rsplit("/", 1)[-1]), sha256)
    client = new_client(opts, reporter, source="URL")
    job = Job(spec, opts, client, reporter, Target(directory, leaf_name(spec.path)), url)
    try:
        return _download_one(job)
    finally:
        job.session.close()


def _download_one(job: Job) -> DownloadResult:
    """Run one file's download, in its directory (`made_directory`). The destination is
    checked again just before (`check_destination`): in a multi-file run, what was
    checked up front may have changed while earlier files downloaded."""
    check_destination(job.target)
    with made_directory(job.target.directory, job.options.out):
        return _download_locked(job)


@contextlib.contextmanager
def made_directory(directory: Path, out: Path) -> Iterator[None]:
    """`directory`, created for the block if missing; what this created is removed again
    if left empty, and what stays is tagged as ours (under `out`), whatever the outcome:
    a failed, interrupted or out-of-space download keeps its `.part` there, and
    clean-cache may remove it. `download_many` holds every directory of its files for
    the whole run, so one file's clean-up never removes a directory another file is
    about to write in."""
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(exc, directory) from None
    try:
        yield
    finally:
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()  # only succeeds when empty
        tag_created([p for p in created if p.is_dir()], out)  # made by us


def _download_locked(job: Job) -> DownloadResult:
    target = job.target
    lock = FileLock(
        target.lock,
        job.options.lock_timeout,
        busy=download_lock_busy(target.final),
        on_wait=job.reporter.info,
        on_note=job.reporter.debug,
    )
    with lock.held():
        job.check_cancelled()  # the run was stopped while this waited for the lock
        if lock.took_over:
            job.reporter.debug(f"took over the lock left by {lock.took_over}")
        revalidation = Revalidation()
        if target.final.is_file() and not job.options.force:
            revalidation = revalidate(job)
            if revalidation.result is not None:
                return revalidation.result
        return _from_cache_or_network(job, revalidation)


def _from_cache_or_network(job: Job, revalidation: Revalidation) -> DownloadResult:
    """The file is not here (or not current): from the HF cache if it holds it, else from
    the server. Without `--sha256` the server is asked first, since its sha256 names the
    blob; when it can't be reached, the snapshot of `--rev` may still name one."""
    remote: RemoteFile | None = revalidation.remote
    unreachable: NetworkError | None = None
    if remote is None and job.spec.sha256 is None:
        try:
            remote = job.probe()
        except NetworkError as exc:
            unreachable = exc
    if (adopted := adopt_hf_blob(job, remote)) is not None:
        return adopted
    if unreachable is not None:
        raise unreachable
    return fetch(job, remote or job.probe(), revalidation.conditional)
