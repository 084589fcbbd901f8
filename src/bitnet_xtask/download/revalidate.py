"""The real run's use of the freshness rule: ask the server about the file already here.

The verdict itself is `freshness.judge`, shared with `--dry-run`; this adds what only a
run does: going on with the file when the server can't be reached, writing the missing
`.etag` of a file that proved current by its bytes, and the conditional headers for the
GET that decides when nothing else can.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitnet_xtask.errors import NetworkError, NotFoundError
from bitnet_xtask.fs import hash_file

from .freshness import Freshness, Stored, judge, kept_mismatch
from .headers import strip_quotes
from .hub import RemoteFile
from .job import Job
from .results import DownloadResult


@dataclass(frozen=True)
class Revalidation:
    """What asking the server about an existing file settled: a result (nothing to
    download), or the probe to reuse and the headers of a conditional GET."""

    result: DownloadResult | None = None
    remote: RemoteFile | None = None
    conditional: dict[str, str] = field(default_factory=dict)


def revalidate(job: Job) -> Revalidation:
    """Is the finished file current? Offline, a file with metadata (or `--sha256`) is
    used with a warning; a 404 is never papered over."""
    target = job.target
    stored = Stored.beside(target, job.reporter.debug)
    try:
        remote = job.probe()
    except NetworkError as exc:
        if isinstance(exc, NotFoundError) or (stored.etag is None and job.spec.sha256 is None):
            raise
        job.reporter.info(f"warning: could not check for a newer version ({exc.message})")
        return Revalidation(confirm_existing(job, None, None))
    verdict = judge(target.final, stored, remote, job.spec.expected)
    if verdict.up_to_date:
        if verdict.freshness is Freshness.BY_SHA256:  # copied in by hand: now it has metadata
            job.record_version(remote.identity, remote.last_modified)
        size = target.final.stat().st_size
        return Revalidation(job.result("up-to-date", size, verdict.sha256, remote.commit))
    if verdict.freshness is Freshness.STALE:
        job.reporter.info(
            f"{target.name}: {verdict.why}; downloading it again (the file is replaced only "
            "once the new download verifies)"
        )
        return Revalidation(remote=remote)
    return Revalidation(remote=remote, conditional=_conditional(stored))


def _conditional(stored: Stored) -> dict[str, str]:
    """The headers that let the server answer 304 for the version on disk."""
    headers = {}
    if stored.etag:
        headers["If-None-Match"] = f'"{strip_quotes(stored.etag)}"'
    if stored.last_modified:
        headers["If-Modified-Since"] = stored.last_modified
    return headers


def confirm_existing(job: Job, commit: str | None, sha256: str | None) -> DownloadResult:
    """The file here is taken as current without the rule (the server is unreachable, or
    answered 304); `--sha256` is still checked, and a mismatch keeps the file (exit 13)."""
    target, expected = job.target, job.spec.expected
    if expected:
        actual = hash_file(target.final)
        if actual != expected:
            raise kept_mismatch(target.final, expected, actual)
        sha256 = actual
    return job.result("up-to-date", target.final.stat().st_size, sha256, commit)
