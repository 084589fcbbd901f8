"""Self-tests for the real-server fixtures (nginx, tinyproxy) used by download tests.

Why: downloader tests lean on these servers as the reference for HTTP semantics, so we first
prove the harness itself delivers them (Range, ETag revalidation, rate limiting, extra
Hugging Face-style headers, JSON access log, Via through the proxy).  Skipped, with the reason,
when a binary is not installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from servers.nginx import NginxServer, nginx_available
from servers.tinyproxy import VIA_PROXY_NAME, TinyProxy, tinyproxy_available

SMALL_SIZE = 64 * 1024
LIMITED_SIZE = 1536 * 1024  # 512 KiB/s, first 512 KiB unthrottled: ~2.0 s, assert >= 1.5 s


def _require_nginx() -> None:
    if nginx_available() is None:
        pytest.skip("nginx binary not installed (Debian: apt-get install nginx-light)")


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A session that ignores *_PROXY / NO_PROXY from the environment, so only what a test
    passes explicitly decides whether a request is proxied."""
    with requests.Session() as sess:
        sess.trust_env = False
        yield sess


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    (root / "models" / "small.bin").write_bytes(os.urandom(SMALL_SIZE))
    (root / "big.bin").write_bytes(os.urandom(LIMITED_SIZE))
    return root


@pytest.fixture
def nginx(docroot: Path, tmp_path: Path) -> Iterator[NginxServer]:
    _require_nginx()
    headers = {
        "/models/small.bin": {
            "X-Repo-Commit": "0123456789abcdef0123456789abcdef01234567",
            "X-Linked-Etag": '"sha256-$literal"',
        }
    }
    with NginxServer(docroot, tmp_path / "nginx", rate_limit="512k", hf_headers=headers) as srv:
        yield srv


def test_serves_file(nginx: NginxServer, docroot: Path, session: requests.Session) -> None:
    resp = session.get(f"{nginx.url}/models/small.bin", timeout=10)
    assert resp.status_code == 200
    assert resp.content == (docroot / "models" / "small.bin").read_bytes()
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert session.get(f"{nginx.url}/missing.bin", timeout=10).status_code == 404


def test_range_request(nginx: NginxServer, docroot: Path, session: requests.Session) -> None:
    data = (docroot / "models" / "small.bin").read_bytes()
    resp = session.get(
        f"{nginx.url}/models/small.bin", headers={"Range": "bytes=100-199"}, timeout=10
    )
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes 100-199/{SMALL_SIZE}"
    assert resp.content == data[100:200]

    entries = nginx.access_log(min_entries=1)
    assert entries[-1]["http_range"] == "bytes=100-199"
    assert entries[-1]["status"] == 206
    assert entries[-1]["bytes_sent"] == 100


def test_if_range_with_stale_etag_sends_whole_file(
    nginx: NginxServer, session: requests.Session
) -> None:
    resp = session.get(
        f"{nginx.url}/big.bin",
        headers={"Range": "bytes=0-9", "If-Range": '"not-the-etag"'},
        timeout=10,
    )
    assert resp.status_code == 200
    assert len(resp.content) == LIMITED_SIZE


def test_etag_revalidation(nginx: NginxServer, session: requests.Session) -> None:
    first = session.get(f"{nginx.url}/big.bin", timeout=10)
    etag = first.headers["ETag"]
    again = session.get(f"{nginx.url}/big.bin", headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304
    assert again.content == b""
    since = first.headers["Last-Modified"]
    cond = session.get(f"{nginx.url}/big.bin", headers={"If-Modified-Since": since}, timeout=10)
    assert cond.status_code == 304

    entries = nginx.access_log(min_entries=3)
    assert entries[1]["http_if_none_match"] == etag
    assert entries[2]["http_if_modified_since"] == since


def test_limited_is_slower(nginx: NginxServer, docroot: Path, session: requests.Session) -> None:
    expected = (docroot / "big.bin").read_bytes()
    start = time.monotonic()
    fast = session.get(f"{nginx.url}/big.bin", timeout=30)
    fast_s = time.monotonic() - start

    start = time.monotonic()
    slow = session.get(f"{nginx.url}/limited/big.bin", timeout=30)
    slow_s = time.monotonic() - start

    assert fast.content == expected
    assert slow.content == expected
    assert slow_s >= 1.5, f"/limited/ took {slow_s:.2f}s, expected >= 1.5s at 512k"
    assert fast_s < slow_s


def test_hf_headers_only_on_their_path(nginx: NginxServer, session: requests.Session) -> None:
    hf = session.get(f"{nginx.url}/models/small.bin", timeout=10)
    assert hf.headers["X-Repo-Commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert hf.headers["X-Linked-Etag"] == '"sha256-$literal"'
    assert "ETag" in hf.headers  # nginx's own ETag stays unless overridden

    # The rate-limited twin of the same file carries the same headers.
    limited = session.head(f"{nginx.url}/limited/models/small.bin", timeout=10)
    assert limited.headers["X-Repo-Commit"] == hf.headers["X-Repo-Commit"]

    other = session.get(f"{nginx.url}/big.bin", timeout=10)
    assert "X-Repo-Commit" not in other.headers


def test_access_log_hides_authorization(nginx: NginxServer, session: requests.Session) -> None:
    session.get(
        f"{nginx.url}/models/small.bin", headers={"Authorization": "Bearer hf_secret"}, timeout=10
    )
    session.get(f"{nginx.url}/models/small.bin", timeout=10)
    entries = nginx.access_log(min_entries=2)
    assert [e["http_authorization"] for e in entries] == ["set", ""]
    assert entries[0]["method"] == "GET"
    assert entries[0]["uri"] == "/models/small.bin"
    assert entries[0]["bytes_sent"] == SMALL_SIZE
    assert "hf_secret" not in nginx.access_log_path.read_text()


def test_tinyproxy_forwards_with_via(
    nginx: NginxServer, docroot: Path, tmp_path: Path, session: requests.Session
) -> None:
    if tinyproxy_available() is None:
        pytest.skip("tinyproxy binary not installed (Debian: apt-get install tinyproxy)")
    with TinyProxy(tmp_path / "proxy") as proxy:
        resp = session.get(f"{nginx.url}/models/small.bin", proxies={"http": proxy.url}, timeout=10)
        assert resp.status_code == 200
        assert resp.content == (docroot / "models" / "small.bin").read_bytes()

    direct = session.get(f"{nginx.url}/models/small.bin", timeout=10)
    assert direct.status_code == 200
    entries = nginx.access_log(min_entries=2)
    assert VIA_PROXY_NAME in entries[0]["http_via"]
    assert entries[1]["http_via"] == ""
