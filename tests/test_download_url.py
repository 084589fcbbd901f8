"""download_url(): any http(s) URL with download-model's guarantees (fetch-cpp uses it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, payload, sha256
from servers.nginx import NginxServer

from bitnet_xtask.download import download_url
from bitnet_xtask.errors import HashMismatchError, NotFoundError

SMALL = f"{REPO}/resolve/main/small.bin"


def test_a_plain_url_is_downloaded_verified_and_then_current(
    nginx: NginxServer, tmp_path: Path
) -> None:
    data = payload(300_000, seed=3)
    result = download_url(f"{nginx.url}/{SMALL}", tmp_path / "src", sha256=sha256(data))
    assert result.path == tmp_path / "src" / "small.bin" and result.source == "network"
    assert result.path.read_bytes() == data and result.sha256 == sha256(data)
    again = download_url(f"{nginx.url}/{SMALL}", tmp_path / "src", sha256=sha256(data))
    assert again.source == "up-to-date"
    entries = nginx.access_log()
    assert all(e["http_authorization"] == "" for e in entries)


def test_a_wrong_hash_and_a_missing_url_fail_with_the_documented_errors(
    nginx: NginxServer, tmp_path: Path
) -> None:
    with pytest.raises(HashMismatchError):
        download_url(f"{nginx.url}/{SMALL}", tmp_path, filename="x.tar.gz", sha256="0" * 64)
    assert not (tmp_path / "x.tar.gz").exists()
    with pytest.raises(NotFoundError):
        download_url(f"{nginx.url}/nope.tar.gz", tmp_path / "none", retries=0)
    assert not (tmp_path / "none").exists()
