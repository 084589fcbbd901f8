"""Which bytes a download starts from: a `.part` to adopt, or a new state for the file.

Shared by the run and `--dry-run` (its "resume at" and "connections" are these rules).
"""

from __future__ import annotations

from bitnet_xtask.redact import without_userinfo

from .headers import strip_quotes
from .hub import RemoteFile
from .job import Job
from .options import DownloadOptions
from .partfile import plan_chunks
from .state import Chunk, ResumeState
from .store import ensure_download_space

PARALLEL_THRESHOLD = 64 << 20
AUTO_CONNECTIONS = 4


def state_of(remote: RemoteFile, url: str, chunks: list[Chunk]) -> ResumeState:
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


def default_connections(options: DownloadOptions, remote: RemoteFile) -> int:
    """`--connections`, else 4 for a file of 64 MiB or more; one for a file that can't be
    fetched in ranges (no size, no range support, no strong validator)."""
    resumable = state_of(remote, "", []).resumable
    if remote.size is None or not remote.accept_ranges or not resumable:
        return 1
    if options.connections is not None:
        return max(1, options.connections)
    return AUTO_CONNECTIONS if remote.size >= PARALLEL_THRESHOLD else 1


def fresh_state(job: Job, remote: RemoteFile, connections: int) -> ResumeState:
    """A new state for the whole file, once the disk is known to hold it: the size is the
    server's word, so nothing is built from it before that check (a 10^15-byte claim
    used to cost gigabytes of chunk map before the disk check said no)."""
    ensure_download_space(job.target.directory, remote.size)
    return state_of(remote, job.url, plan_chunks(remote.size, connections))


def resumable(job: Job, remote: RemoteFile) -> ResumeState | None:
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
