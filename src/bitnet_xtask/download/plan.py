"""`--dry-run`: what a download would do, asking the server and writing nothing.

Every number comes from the rule the download itself uses: freshness from
`freshness.judge` (so the plan and the run agree on "up to date", issue 12 bug 1), the
resume offset from `resume.resumable`, the connections from `resume.default_connections`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.fs import free_bytes

from .freshness import Stored, Verdict, judge
from .hub import RemoteFile
from .job import Job, hub_job, new_client
from .options import DownloadOptions, FileSpec
from .results import DownloadPlan
from .resume import default_connections, resumable
from .store import check_destination
from .urls import redact


def plan_download(
    files: Sequence[FileSpec],
    options: DownloadOptions | None = None,
    reporter: Reporter | None = None,
) -> list[DownloadPlan]:
    """What a download would do; `reporter` gets the lines a download would print before
    its first request (a token file ignored), and the verdict on each file already here."""
    options = options or DownloadOptions()
    reporter = reporter or NullReporter()
    client = new_client(options, reporter)
    jobs = [hub_job(spec, options, client, NullReporter()) for spec in files]
    for job in jobs:  # what the download would refuse, the plan refuses too
        check_destination(job.target)
    plans = []
    for job in jobs:
        try:
            remote = job.probe()
        finally:
            job.session.close()
        plan = _plan_one(job, remote)  # the verdict on a file here, as revalidation's
        if not plan.up_to_date:
            job.check_advertised(remote)  # a pin the server contradicts: the fetch refuses
        if plan.freshness is not None:
            reporter.info(plan.freshness.describe(job.target.name))
        plans.append(plan)
    return plans


def _plan_one(job: Job, remote: RemoteFile) -> DownloadPlan:
    state = None if job.options.force else resumable(job, remote)
    return DownloadPlan(
        url=redact(job.url),
        path=job.target.final,
        size=remote.size,
        resume_from=state.received if state else 0,
        free_bytes=free_bytes(job.target.directory),
        connections=default_connections(job.options, remote),
        commit=remote.commit,
        freshness=_freshness(job, remote),
    )


def _freshness(job: Job, remote: RemoteFile) -> Verdict | None:
    """The run's verdict on the file here (None: no file, or `--force` ignores it)."""
    final = job.target.final
    if job.options.force or not final.is_file():
        return None
    return judge(final, Stored.beside(job.target), remote, job.spec.expected)
