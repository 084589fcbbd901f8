"""What a download is asked for: the files, and how to fetch them.

`HubOptions` and `TransferOptions` are the fields of `DownloadOptions` as keyword
arguments (`download_model(..., connections=4)`), so mypy checks them at the call: the
entry points used to take `**options: object` behind a `type: ignore`, and a misspelt
keyword was a TypeError at run time only. tests/test_issue12_download.py holds the two
TypedDicts to the dataclass, field for field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from bitnet_xtask.cache import MODELS_DIR
from bitnet_xtask.errors import UsageError

from .defaults import DEFAULT_REPO

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Mismatch:
    """What contradicts a pin: `what` is "SHA-256" or "size", then both values as shown."""

    what: str
    actual: str
    expected: str


def contradiction(
    expected_sha256: str | None, expected_size: int | None, sha256: str | None, size: int | None
) -> Mismatch | None:
    """The one rule for "is this the pinned file": a sha256 (lower case) and a size, each
    compared only when both sides know it. It judges what a server advertises before the
    first body byte (`Job.check_advertised`) and the bytes once they are all here
    (`fetch._publish`), so the two can never disagree about what matches."""
    if expected_sha256 and sha256 and sha256.lower() != expected_sha256:
        return Mismatch("SHA-256", sha256.lower(), expected_sha256)
    if expected_size is not None and size is not None and size != expected_size:
        return Mismatch("size", f"{size:,} bytes", f"{expected_size:,} bytes")
    return None


@dataclass(frozen=True)
class FileSpec:
    """One file to fetch: its path inside the repository and, optionally, what it must be:
    its sha256 and its size in bytes (a catalog pins both; `--sha256` only the first)."""

    path: str
    sha256: str | None = None
    size: int | None = None
    #: Where the pin comes from, as a message names it ("--sha256", "the catalog", ...).
    pinned_by: str = "--sha256"

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise UsageError(
                f"--sha256 must be 64 hex digits, got {self.sha256!r}",
                "copy the SHA256 from the file's page on the hub",
            )
        if self.size is not None and (
            isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0
        ):
            raise UsageError(
                f"the expected size of {self.path} must be a number of bytes, got {self.size!r}"
            )

    @property
    def expected(self) -> str | None:
        """`--sha256` as hashes are compared: lower case."""
        return self.sha256.lower() if self.sha256 else None

    def contradiction(self, sha256: str | None, size: int | None) -> Mismatch | None:
        """How `sha256` / `size` contradict this pin (`contradiction`), if they do."""
        return contradiction(self.expected, self.size, sha256, size)


@dataclass(frozen=True)
class DownloadOptions:
    """Everything about how to download, shared by all files of one run."""

    repo_id: str = DEFAULT_REPO
    revision: str = "main"
    out: Path = MODELS_DIR
    base_url: str | None = None
    token: str | None = None
    force: bool = False
    retries: int = 3
    timeout: float = 1800.0
    stall_timeout: float = 60.0
    connections: int | None = None
    lock_timeout: float = 1800.0
    use_hf_cache: bool = True


class TransferOptions(TypedDict, total=False):
    """`download_url`'s keywords: how to transfer (the URL says where from, and the
    caller where to; no token is sent and no HF cache is used)."""

    force: bool
    retries: int
    timeout: float
    stall_timeout: float
    connections: int | None
    lock_timeout: float


class HubOptions(TransferOptions, total=False):
    """`download_model`'s keywords: every field of `DownloadOptions` but `repo_id`, which
    is its first argument."""

    revision: str
    out: Path
    base_url: str | None
    token: str | None
    use_hf_cache: bool
