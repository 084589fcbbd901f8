"""Fetching a pinned C++ reference and proving its bytes before anything builds them.

A PyPI sdist is checked against the index's sha256 while it downloads; a GitHub tarball
is checked after unpacking, by the NAR hash of its tree, which is the same check
nixpkgs' fetchFromGitHub makes, so the Python and Nix paths build the same bytes.
Archives are unpacked member by member into a temporary directory next to the
destination and renamed into place: a hostile member (absolute path, `..`, a link that
leaves the tree, a device) stops the unpacking, and a failure leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bitnet_xtask.cpp.nar import nar_hash
from bitnet_xtask.cpp.pins import GITHUB, GithubPin, Pin, SdistPin
from bitnet_xtask.download import download_url
from bitnet_xtask.errors import HashMismatchError, UsageError, XtaskError
from bitnet_xtask.events import NullReporter, Reporter

_HAS_FILTER = hasattr(tarfile, "tar_filter")


@dataclass(frozen=True)
class SourceTree:
    """An unpacked, verified source tree ready to configure."""

    root: Path
    verified: str  # what was checked: "sha256:<hex>" of the archive, or the tree's NAR hash


class UnsafeArchive(XtaskError):
    """An archive member that would write outside the destination (exit 1)."""


def _member_path(member: tarfile.TarInfo) -> PurePosixPath:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UnsafeArchive(f"refusing archive member {member.name!r}: it leaves the tree")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"refusing archive member {member.name!r}: not a file, dir or link")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = path.parent if member.issym() else PurePosixPath()
        depth = len(base.parts)
        for part in target.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if target.is_absolute() or depth < 0:
            raise UnsafeArchive(
                f"refusing archive member {member.name!r}: its link to {member.linkname!r} "
                "leaves the tree"
            )
    return path


def safe_extract(archive: Path, destination: Path) -> Path:
    """Unpack `archive` so that `destination` becomes its single top-level directory."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            tops = {_member_path(m).parts[0] for m in members}
            if len(tops) != 1:
                raise UnsafeArchive(f"{archive.name} has {len(tops)} top-level entries, not one")
            for member in members:
                # Our checks above come first; Python's own "tar" filter (3.10.12+) second.
                if _HAS_FILTER:
                    tar.extract(member, staging, set_attrs=False, filter="tar")
                else:  # pragma: no cover - Python before 3.10.12
                    tar.extract(member, staging, set_attrs=False)
                if member.isfile() and member.mode & 0o100:
                    (staging / member.name).chmod(0o755)
        if destination.exists():
            shutil.rmtree(destination)
        (staging / tops.pop()).rename(destination)
    except tarfile.TarError as exc:
        raise UsageError(f"{archive} is not a readable tar archive: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _verify_tree(pin: GithubPin, tree: Path) -> str:
    actual = nar_hash(tree)
    if actual != pin.hash:
        shutil.rmtree(tree, ignore_errors=True)
        raise HashMismatchError(
            f"NAR hash mismatch for {pin.name} ({pin.owner}/{pin.repo}@{pin.rev[:12]}): "
            f"expected {pin.hash}, got {actual}",
            "the download was removed; if the pin is right, the server served other bytes",
        )
    return actual


def _fetch_github(
    pin: GithubPin, tree: Path, downloads: Path, github: str, reporter: Reporter
) -> str:
    archive = download_url(
        pin.tarball_url(github),
        downloads,
        filename=f"{pin.repo}-{pin.rev}.tar.gz",
        reporter=reporter,
    )
    safe_extract(archive.path, tree)
    verified = _verify_tree(pin, tree)
    for path, submodule in pin.submodules.items():
        _fetch_github(submodule, tree / path, downloads, github, reporter)
    return verified


def fetch_source(
    pin: Pin,
    destination: Path,
    *,
    downloads: Path,
    github: str = GITHUB,
    reporter: Reporter | None = None,
) -> SourceTree:
    """Download, verify and unpack `pin` into `destination` (replacing what is there)."""
    reporter = reporter or NullReporter()
    if isinstance(pin, SdistPin):
        archive = download_url(pin.url, downloads, sha256=pin.sha256, reporter=reporter)
        safe_extract(archive.path, destination)
        root = destination / pin.subdir
        if not root.is_dir():
            raise UsageError(f"{pin.name}: the sdist has no {pin.subdir}/ directory")
        return SourceTree(root, f"sha256:{pin.sha256}")
    verified = _fetch_github(pin, destination, downloads, github, reporter)
    return SourceTree(destination, verified)
