"""What a download did (`DownloadResult`), or would do (`DownloadPlan`, `--dry-run`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .freshness import Verdict

#: Where the bytes came from: the server, the file already here, or the HF cache.
Source = Literal["network", "up-to-date", "hf-cache"]


@dataclass(frozen=True)
class DownloadResult:
    """What happened to one file."""

    path: Path
    size: int
    sha256: str | None
    url: str
    commit: str | None
    source: Source
    resumed_from: int = 0
    elapsed_ms: int = 0

    @property
    def cached(self) -> bool:
        """No byte of the file came over the network this time."""
        return self.source != "network"


@dataclass(frozen=True)
class DownloadPlan:
    """What `--dry-run` reports: what would happen, with nothing written. `freshness` is
    the verdict on the file already here (None when there is none, or with `--force`)."""

    url: str
    path: Path
    size: int | None
    resume_from: int
    free_bytes: int
    connections: int
    commit: str | None
    freshness: Verdict | None

    @property
    def up_to_date(self) -> bool:
        """The real run would download nothing."""
        return self.freshness is not None and self.freshness.up_to_date
