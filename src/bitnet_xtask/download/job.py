"""One file's download in progress: what every step of it needs, in one object."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests

from bitnet_xtask.errors import HashMismatchError, Interrupted
from bitnet_xtask.events import Reporter
from bitnet_xtask.fs import atomic_write_text, remove

from . import hf_cache
from .hub import HubClient, RemoteFile
from .options import DownloadOptions, FileSpec, Mismatch, contradiction
from .results import DownloadResult, Source
from .retry import Backoff, StopRequested, TransientError, retrying
from .store import Target, leaf_name, metadata_ok, model_dir
from .urls import default_base_url, validate_repo_id, validate_revision


@dataclass
class Job:
    """The file, the options of its run, and the client, session and reporter it uses.

    `cancel` is set to stop the job from another thread: the files of one `download_many`
    share one, which its main thread sets on Ctrl-C (signals reach only that thread). The
    streams then stop and checkpoint `.part` as a single download's Ctrl-C does, and a
    retry's wait ends at once. A job of its own gets a fresh one that nothing sets.
    """

    spec: FileSpec
    options: DownloadOptions
    client: HubClient
    reporter: Reporter
    target: Target
    url: str
    session: requests.Session = field(init=False)
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.session = self.client.new_session()

    @property
    def backoff(self) -> Backoff:
        """A fresh retry budget (`--retries`) for one operation."""
        return Backoff(retries=self.options.retries)

    def expected_sha256(self, remote: RemoteFile | None) -> str | None:
        """`--sha256`, else the hub's advertised sha256 (its linked ETag), else nothing."""
        return self.spec.expected or (remote.sha256 if remote else None)

    def mismatch(self, remote: RemoteFile, sha256: str, size: int) -> Mismatch | None:
        """How the downloaded bytes contradict what they must be (`expected_sha256`, and
        the pinned size)."""
        return contradiction(self.expected_sha256(remote), self.spec.size, sha256, size)

    def check_advertised(self, remote: RemoteFile) -> None:
        """Refuse, before the first body byte, a file whose advertised sha256 (an LFS
        linked ETag) or size (X-Linked-Size, Content-Length) is not the pinned one: the
        download could only end in a mismatch, after all of its bytes."""
        found = self.spec.contradiction(remote.sha256, remote.size)
        if found is None:
            return
        kept = ""
        if self.target.final.exists():
            kept = f"; {self.target.final}, the version already on disk, was kept"
        raise HashMismatchError(
            f"{found.what} mismatch: the server's {self.target.name} is {found.actual}, "
            f"expected {found.expected}: not downloading",
            f"the pinned file changed on the server, or the pin is wrong{kept}; check the "
            f"pin ({self.spec.pinned_by}) against the file's page on the hub",
        )

    def check_cancelled(self) -> None:
        """Stop here if the run is being stopped (`cancel`): nothing of this file is lost."""
        if self.cancel.is_set():
            raise self._interrupted()

    def _interrupted(self) -> Interrupted:
        return Interrupted(
            f"interrupted before {self.target.name} was downloaded",
            "run the same command again to resume",
        )

    def probe(self) -> RemoteFile:
        """What the server says about the file now, retried like every request; a wait
        before a retry (a 429's Retry-After) ends at once when the run is stopped."""

        def on_retry(exc: TransientError, delay: float, failures: int) -> None:
            self.reporter.emit(
                {
                    "phase": "retry",
                    "command": "download-model",
                    "file": self.target.name,
                    "wait_secs": round(delay, 3),
                    "msg": str(exc),
                    "attempt": failures,
                }
            )

        try:
            return retrying(
                lambda: self.client.probe(self.session, self.url),
                self.backoff,
                on_retry,
                wait=self.cancel.wait,
            )
        except StopRequested:
            raise self._interrupted() from None

    def record_version(self, etag: str | None, last_modified: str | None) -> None:
        """Keep the validators of the published file for the next run. Only what it will
        read back and may send as a header (`metadata_ok`): a server's 60 KiB or
        multi-line ETag is not kept (the next run then hashes the file)."""
        target = self.target
        for path, value in ((target.etag, etag), (target.lastmod, last_modified)):
            if value and metadata_ok(value):
                atomic_write_text(path, value + "\n")
            else:
                remove(path)

    def result(
        self,
        source: Source,
        size: int,
        sha256: str | None,
        commit: str | None,
        resumed_from: int = 0,
    ) -> DownloadResult:
        """The outcome, also reported as the `done` event."""
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
                "command": "download-model",
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


def new_client(
    options: DownloadOptions, reporter: Reporter, source: str | None = None
) -> HubClient:
    """The client of one run: `--base-url` (an empty one is refused, not huggingface.co),
    else `$HF_ENDPOINT`; the token given, else the one huggingface_hub keeps."""
    given = options.base_url is not None
    return HubClient(
        options.base_url if options.base_url is not None else default_base_url(),
        options.token if options.token is not None else hf_cache.find_token(reporter.info),
        connect_timeout=options.timeout,
        stall_timeout=options.stall_timeout,
        debug=reporter.debug,
        source=source or ("--base-url" if given else "$HF_ENDPOINT"),
    )


def hub_job(
    spec: FileSpec,
    options: DownloadOptions,
    client: HubClient,
    reporter: Reporter,
    cancel: threading.Event | None = None,
) -> Job:
    """A repository file's job: `--id` and `--rev` checked, the target under `--out`;
    `cancel` is shared with the other files of its run (`Job`), else its own."""
    validate_repo_id(options.repo_id)
    validate_revision(options.revision)
    target = Target(model_dir(options.out, options.repo_id), leaf_name(spec.path))
    url = client.file_url(options.repo_id, options.revision, spec.path)
    return Job(spec, options, client, reporter, target, url, cancel=cancel or threading.Event())
