"""Reuse a blob of the local Hugging Face cache instead of downloading it.

Called at one point of a download (`api._from_cache_or_network`), once the sha256 to look
for is known: `--sha256`, else the hub's advertised one, else (the server unreachable) the
snapshot of `--rev`, whose blob is named by its sha256. A blob is hashed before it is
trusted; its name alone never is.
"""

from __future__ import annotations

import os

from bitnet_xtask.fs import hash_file, link_or_copy, publish, remove

from . import hf_cache
from .hub import RemoteFile
from .job import Job
from .results import DownloadResult
from .store import raise_if_no_space


def adopt_hf_blob(job: Job, remote: RemoteFile | None) -> DownloadResult | None:
    """Hard-link (or copy) the verified blob of this file from the HF cache, if there is
    one. `remote` is None when the server was not asked (`--sha256` names the blob) or
    could not be reached; a server that answered without a sha256 names no blob."""
    wanted = job.expected_sha256(remote)
    if not job.options.use_hf_cache or (wanted is None and remote is not None):
        return None
    options = job.options
    found = hf_cache.find_blob(options.repo_id, options.revision, job.spec.path, wanted)
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
    job.record_version(f'"{expected}"', None)
    remove(target.state)
    job.reporter.info(f"reused {blob} from the Hugging Face cache")
    return job.result("hf-cache", target.final.stat().st_size, actual, None)
