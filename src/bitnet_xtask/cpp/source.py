"""Fetching a pinned C++ reference and proving its bytes before anything builds them.

A PyPI sdist is checked against the index's sha256 while it downloads; a GitHub tarball
is checked after unpacking, by the NAR hash of its tree, which is the same check
nixpkgs' fetchFromGitHub makes, so the Python and Nix paths build the same bytes.
Archives are unpacked by `bitnet_xtask.archive.safe_extract`, the one reader of
untrusted archives (the models layer uses it too): member by member into a temporary
directory next to the destination, renamed into place; a hostile member (absolute
path, `..`, a link that leaves the tree, a device) stops the unpacking, and a failure
leaves nothing behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bitnet_xtask.archive import UnsafeArchive, safe_extract
from bitnet_xtask.cpp.nar import nar_hash
from bitnet_xtask.cpp.pins import GITHUB, GithubPin, Pin, SdistPin
from bitnet_xtask.download import download_url
from bitnet_xtask.errors import HashMismatchError, UsageError
from bitnet_xtask.events import NullReporter, Reporter

# UnsafeArchive and safe_extract were defined here first; callers still import them here.
__all__ = ["SourceTree", "UnsafeArchive", "fetch_source", "safe_extract"]


@dataclass(frozen=True)
class SourceTree:
    """An unpacked, verified source tree ready to configure."""

    root: Path
    verified: str  # what was checked: "sha256:<hex>" of the archive, or the tree's NAR hash


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
