"""Is the file on disk the version the server serves? One rule, for `--dry-run` and the run.

The plan used to compare ETags only while the download also accepted a file whose bytes
hash to the advertised sha256, so a hand-copied, correct file was "not up to date" in the
dry run and then "up to date" for real (issue 12, bug 1). Both now ask `judge`.

In order: an ETag on both sides decides (`.etag` is what the server said when the file
was published here), and with `--sha256` the bytes must match it too; without `.etag`, the
bytes decide when a sha256 is known (`--sha256`, else the hub's, which is the ETag of
every LFS file); without either, only a conditional GET can tell (`If-None-Match`, or
`If-Modified-Since` from `.lastmod`), which the dry run does not send.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bitnet_xtask.errors import HashMismatchError
from bitnet_xtask.fs import Note, hash_file

from .headers import strip_quotes
from .hub import RemoteFile
from .store import Target, read_metadata


class Freshness(Enum):
    """The verdict's kind, in the words the dry run prints."""

    BY_ETAG = "up to date by ETag"
    BY_SHA256 = "up to date by sha256"
    STALE = "stale"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    """What `judge` found, and why; `sha256` is the file's, when it is known."""

    freshness: Freshness
    why: str
    sha256: str | None = None

    @property
    def up_to_date(self) -> bool:
        """No byte needs to be downloaded."""
        return self.freshness in (Freshness.BY_ETAG, Freshness.BY_SHA256)

    def describe(self, name: str) -> str:
        """One line for a person: `model.gguf: stale: changed on the server`."""
        return f"{name}: {self.freshness.value}: {self.why}"


@dataclass(frozen=True)
class Stored:
    """The validators kept beside the file (`.etag`, `.lastmod`), as read back."""

    etag: str | None
    last_modified: str | None

    @classmethod
    def beside(cls, target: Target, note: Note | None = None) -> Stored:
        """What `target`'s sidecars hold (a malformed or oversized one counts as absent)."""
        return cls(read_metadata(target.etag, note), read_metadata(target.lastmod, note))


def judge(final: Path, stored: Stored, remote: RemoteFile, expected: str | None) -> Verdict:
    """The freshness of `final` (which exists) against `remote`; `expected` is `--sha256`
    in lower case. A `--sha256` that the file and the hub both contradict is a typo, not
    damage: `HashMismatchError` (exit 13), the file kept, nothing downloaded."""
    if remote.identity and stored.etag:
        if remote.identity != strip_quotes(stored.etag):
            return Verdict(Freshness.STALE, "changed on the server (a new ETag)")
        return _same_version(final, remote, expected)
    if stored.etag is None and (want := expected or remote.sha256):
        actual = hash_file(final)
        source = "--sha256" if expected else "the sha256 the server advertises"
        if actual == want:
            return Verdict(Freshness.BY_SHA256, f"no .etag, but its bytes hash to {source}", actual)
        return Verdict(Freshness.STALE, f"has sha256 {actual}, not {source} {want}")
    if stored.etag or stored.last_modified:
        return Verdict(
            Freshness.UNKNOWN,
            "the server sends no ETag to compare: a conditional GET decides"
            if stored.etag
            else "no .etag and no sha256 to compare: a conditional GET (If-Modified-Since) decides",
        )
    return Verdict(Freshness.STALE, "nothing says it is current (no .etag, .lastmod or sha256)")


def _same_version(final: Path, remote: RemoteFile, expected: str | None) -> Verdict:
    """The server serves the version on disk. With `--sha256`, a file that does not match
    it is damaged when the hub's sha256 is that one (or unknown), so it is stale; when the
    hub advertises another, `--sha256` is wrong."""
    if not expected:
        return Verdict(Freshness.BY_ETAG, "the server's ETag is the one in .etag", remote.sha256)
    actual = hash_file(final)
    if actual == expected:
        return Verdict(Freshness.BY_ETAG, "same ETag, and its bytes match --sha256", actual)
    if remote.sha256 not in (None, expected):
        raise kept_mismatch(final, expected, actual, remote.sha256)
    return Verdict(Freshness.STALE, f"on disk does not match --sha256 (it has {actual})")


def kept_mismatch(
    final: Path, expected: str, actual: str, advertised: str | None = None
) -> HashMismatchError:
    """`--sha256` disagrees with the file on disk, and downloading cannot settle it."""
    server = f" (the server advertises {advertised})" if advertised else ""
    return HashMismatchError(
        f"SHA-256 mismatch for {final.name}: expected {expected}, "
        f"the file on disk has {actual}{server}",
        f"nothing was removed; check --sha256, or if {final} is damaged run "
        "again with --force (it is replaced only once the new download verifies)",
    )
