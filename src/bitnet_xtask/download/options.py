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

    @property
    def expected(self) -> str | None:
        """`--sha256` as hashes are compared: lower case."""
        return self.sha256.lower() if self.sha256 else None


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
