"""Self-test of the fake Hugging Face hub/CDN in ``testing/servers/hf_server.py``.

Why: the downloader's tests trust this server as the reference peer, so its protocol behaviour
and every fault it injects must be proven with a plain HTTP client first; otherwise a failing
downloader test could be a server bug.  Each test is fast (well under a second).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from servers.hf_server import COMMIT, Faults, HFTestServer

REPO = "org/model"
FILE = "weights/model.gguf"
DATA = bytes(range(256)) * 1024  # 256 KiB, non-repeating within 256 bytes
SHA = hashlib.sha256(DATA).hexdigest()
SERVER_SCRIPT = Path(__file__).parent.parent / "testing" / "servers" / "hf_server.py"


@pytest.fixture
def hf(tmp_path: Path) -> Iterator[HFTestServer]:
    """A started server with one LFS-like file; asserts no handler crashed."""
    with HFTestServer(tmp_path / "root") as server:
        server.add_file(REPO, FILE, DATA)
        yield server
        assert server.errors == []


def resolve_url(hf: HFTestServer, rev: str = "main", path: str = FILE, repo: str = REPO) -> str:
    return f"{hf.hub_url}/{repo}/resolve/{rev}/{path}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def cdn_location(hf: HFTestServer) -> str:
    response = requests.head(resolve_url(hf), allow_redirects=False, timeout=5)
    assert response.status_code == 302
    return response.headers["Location"]


def test_redirect_and_headers(hf: HFTestServer) -> None:
    head = requests.head(resolve_url(hf), allow_redirects=False, timeout=5)
    assert head.status_code == 302
    assert head.headers["X-Repo-Commit"] == COMMIT == hf.commit
    assert head.headers["X-Linked-Etag"] == f'"{SHA}"'
    assert head.headers["X-Linked-Size"] == str(len(DATA))
    assert head.headers["ETag"] == f'"{SHA}"'
    assert head.headers["Content-Length"] == "0"
    location = head.headers["Location"]
    assert location.startswith(f"{hf.cdn_url}/cdn/{SHA}?sig=")
    assert "file=weights%2Fmodel.gguf" in location

    # Resolving by commit id works too; the redirect is followed to the CDN origin.
    response = requests.get(resolve_url(hf, rev=COMMIT), timeout=5)
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["ETag"] == f'"{SHA[:32]}"'
    assert "Last-Modified" in response.headers
    assert [(r.server, r.status) for r in hf.requests] == [
        ("hub", 302),
        ("hub", 302),
        ("cdn", 200),
    ]
    assert hf.requests[-1].bytes_sent == len(DATA)


def test_keep_alive_across_response_kinds(hf: HFTestServer) -> None:
    """Every response is framed, so one connection survives 302/404/304/416/206/HEAD."""
    location = cdn_location(hf)
    cdn_path = location.removeprefix(hf.cdn_url)
    conn = http.client.HTTPConnection("127.0.0.1", port_of(hf.cdn_url), timeout=5)
    try:
        for method, headers, status, body_len in [
            ("HEAD", {}, 200, 0),
            ("GET", {"Range": "bytes=0-9"}, 206, 10),
            ("GET", {"If-None-Match": f'"{SHA[:32]}"'}, 304, 0),
            ("GET", {"Range": f"bytes={len(DATA)}-"}, 416, 0),
            ("GET", {}, 200, len(DATA)),
            ("GET", {}, 200, len(DATA)),
        ]:
            conn.request(method, cdn_path, headers=headers)
            response = conn.getresponse()
            assert (response.status, len(response.read())) == (status, body_len)
        conn.request("GET", "/cdn/" + "0" * 64)
        missing = conn.getresponse()
        assert missing.status == 404
        missing.read()
        conn.request("GET", cdn_path)
        assert conn.getresponse().read() == DATA
    finally:
        conn.close()


def test_ranges(hf: HFTestServer) -> None:
    location = cdn_location(hf)
    size = len(DATA)
    cases = {
        "bytes=10-19": (10, 19),
        "bytes=1000-": (1000, size - 1),
        "bytes=-100": (size - 100, size - 1),
        f"bytes=5-{size + 50}": (5, size - 1),
    }
    for header, (first, last) in cases.items():
        response = requests.get(location, headers={"Range": header}, timeout=5)
        assert response.status_code == 206, header
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert response.content == DATA[first : last + 1]
    for header in (f"bytes={size}-", "bytes=-0"):
        response = requests.get(location, headers={"Range": header}, timeout=5)
        assert response.status_code == 416
        assert response.headers["Content-Range"] == f"bytes */{size}"
    # Multi-range is not supported: ignored, full body.
    response = requests.get(location, headers={"Range": "bytes=0-1,5-6"}, timeout=5)
    assert response.status_code == 200
    assert response.content == DATA


def test_if_range_and_conditionals(hf: HFTestServer) -> None:
    location = cdn_location(hf)
    first = requests.get(location, timeout=5)
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]

    matching = requests.get(location, headers={"Range": "bytes=4-", "If-Range": etag}, timeout=5)
    assert matching.status_code == 206
    stale = requests.get(location, headers={"Range": "bytes=4-", "If-Range": '"x"'}, timeout=5)
    assert stale.status_code == 200
    assert stale.content == DATA
    weak = requests.get(location, headers={"Range": "bytes=4-", "If-Range": f"W/{etag}"}, timeout=5)
    assert weak.status_code == 200

    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"nope", W/{etag}'},
        {"If-None-Match": "*"},
        {"If-Modified-Since": last_modified},
    ):
        response = requests.get(location, headers=headers, timeout=5)
        assert response.status_code == 304, headers
        assert response.content == b""
    changed = requests.get(location, headers={"If-None-Match": '"other"'}, timeout=5)
    assert changed.status_code == 200


def test_status_sequence_then_success(hf: HFTestServer) -> None:
    hf.set_faults(REPO, FILE, Faults(status_sequence=[(429, {"Retry-After": "1"}), (503, {})]))
    first = requests.head(resolve_url(hf), allow_redirects=False, timeout=5)
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "1"
    second = requests.get(resolve_url(hf), allow_redirects=False, timeout=5)
    assert second.status_code == 503
    assert requests.get(resolve_url(hf), timeout=5).content == DATA


def test_drop_at_truncates_then_resume(hf: HFTestServer) -> None:
    hf.set_faults(REPO, FILE, Faults(drop_at=[100_000, 150_000]))
    location = cdn_location(hf)
    hf.clear_log()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(location, timeout=5)
    # The second drop is an absolute offset too: resuming at 100_000 dies at 150_000.  Read it
    # with http.client, which exposes the partial body that requests would discard.
    conn = http.client.HTTPConnection("127.0.0.1", port_of(hf.cdn_url), timeout=5)
    try:
        conn.request("GET", location.removeprefix(hf.cdn_url), headers={"Range": "bytes=100000-"})
        response = conn.getresponse()
        assert response.status == 206
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        assert excinfo.value.partial == DATA[100_000:150_000]
    finally:
        conn.close()
    assert requests.get(location, timeout=5).content == DATA  # faults consumed
    assert [r.bytes_sent for r in hf.requests] == [100_000, 50_000, len(DATA)]


def test_error_codes(hf: HFTestServer) -> None:
    expected = {
        resolve_url(hf, repo="org/missing"): "RepoNotFound",
        resolve_url(hf, rev="v9.9"): "RevisionNotFound",
        resolve_url(hf, path="nope.bin"): "EntryNotFound",
    }
    for url, code in expected.items():
        response = requests.get(url, timeout=5)
        assert response.status_code == 404, url
        assert response.headers["X-Error-Code"] == code
        assert "error" in response.json()
    # Traversal never escapes the root (raw request: clients would normalise "..").
    conn = http.client.HTTPConnection("127.0.0.1", port_of(hf.hub_url), timeout=5)
    try:
        conn.request("GET", f"/{REPO}/resolve/main/../../{REPO}/{FILE}")
        response_raw = conn.getresponse()
        response_raw.read()
        assert response_raw.status == 404
        assert response_raw.getheader("X-Error-Code") == "EntryNotFound"
    finally:
        conn.close()


def test_token_gating_and_auth_never_reaches_cdn(hf: HFTestServer) -> None:
    hf.set_token("s3cret", {REPO})
    url = resolve_url(hf)
    anonymous = requests.get(url, timeout=5)
    assert (anonymous.status_code, anonymous.headers["X-Error-Code"]) == (401, "GatedRepo")
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert (wrong.status_code, wrong.headers["X-Error-Code"]) == (403, "GatedRepo")
    hf.clear_log()
    ok = requests.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=5)
    assert ok.content == DATA
    hub, cdn = hf.requests
    assert (hub.server, hub.headers["authorization"]) == ("hub", "Bearer s3cret")
    assert cdn.server == "cdn"
    assert "authorization" not in cdn.headers


def test_change_after_keeps_old_version_addressable(hf: HFTestServer) -> None:
    new = b"new version" * 1000
    hf.set_faults(REPO, FILE, Faults(change_after=new, change_after_requests=1))
    old_location = cdn_location(hf)
    old = requests.get(old_location, timeout=5)
    assert old.content == DATA
    head = requests.head(resolve_url(hf), allow_redirects=False, timeout=5)
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(new).hexdigest()}"'
    assert head.headers["X-Linked-Size"] == str(len(new))
    assert requests.get(old_location, timeout=5).content == DATA
    fresh = requests.get(resolve_url(hf), timeout=5)
    assert fresh.content == new
    assert fresh.headers["ETag"] != old.headers["ETag"]
    assert fresh.headers["Last-Modified"] != old.headers["Last-Modified"]
    stale = requests.get(
        head.headers["Location"],
        headers={"Range": "bytes=3-", "If-Range": old.headers["ETag"]},
        timeout=5,
    )
    assert (stale.status_code, stale.content) == (200, new)


def test_range_faults(hf: HFTestServer) -> None:
    hf.set_faults(
        REPO,
        FILE,
        Faults(
            wrong_content_range=True,
            missing_content_range=True,
            range_not_satisfiable_once=True,
        ),
    )
    location = cdn_location(hf)
    size = len(DATA)

    def ranged() -> requests.Response:
        return requests.get(location, headers={"Range": "bytes=10-19"}, timeout=5)

    unsatisfiable = ranged()
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{size}"
    misaligned = ranged()
    assert misaligned.status_code == 206
    assert misaligned.headers["Content-Range"] == f"bytes 11-20/{size}"
    assert misaligned.content == DATA[11:21]
    missing = ranged()
    assert missing.status_code == 206
    assert "Content-Range" not in missing.headers
    assert missing.content == DATA[10:20]
    assert ranged().headers["Content-Range"] == f"bytes 10-19/{size}"

    hf.set_faults(REPO, FILE, Faults(ignore_range=True, weak_etag=True))
    ignored = ranged()
    assert (ignored.status_code, ignored.content) == (200, DATA)
    assert ignored.headers["ETag"] == f'W/"{SHA[:32]}"'


@pytest.mark.parametrize(
    ("mangle", "first", "header"),
    [("misaligned", 11, "bytes 11-20/"), ("no-content-range", 10, None)],
)
def test_mangle_ranges_mangles_every_ranged_answer_and_no_whole_one(
    hf: HFTestServer, mangle: str, first: int, header: str | None
) -> None:
    hf.set_faults(REPO, FILE, Faults(mangle_ranges=mangle))  # type: ignore[arg-type]
    location = cdn_location(hf)
    for _ in range(3):
        ranged = requests.get(location, headers={"Range": "bytes=10-19"}, timeout=5)
        assert ranged.status_code == 206 and ranged.content == DATA[first : first + 10]
        expected = None if header is None else f"{header}{len(DATA)}"
        assert ranged.headers.get("Content-Range") == expected
    whole = requests.get(location, timeout=5)
    assert (whole.status_code, whole.content) == (200, DATA)


def test_hub_and_body_header_overrides(hf: HFTestServer) -> None:
    hf.set_faults(
        REPO,
        FILE,
        Faults(
            hub_headers={"X-Linked-Size": "abc", "Location": "http://[::1"},
            body_headers={"Content-Range": "bytes 0-0/" + "9" * 50, "Content-Length": "1"},
        ),
    )
    # http.client: requests itself raises ValueError on that Location, even unfollowed.
    conn = http.client.HTTPConnection("127.0.0.1", port_of(hf.hub_url), timeout=5)
    try:
        conn.request("HEAD", resolve_url(hf)[len(hf.hub_url) :])
        head = conn.getresponse()
        assert head.status == 302
        assert head.getheader("X-Linked-Size") == "abc"
        assert head.getheader("Location") == "http://[::1"
        assert head.getheader("X-Linked-Etag") == f'"{SHA}"'  # the rest is untouched
    finally:
        conn.close()
    hf.set_faults(REPO, FILE, Faults(body_headers={"Content-Range": "bytes 0-0/" + "9" * 50}))
    body = requests.get(cdn_location(hf), headers={"Range": "bytes=0-9"}, timeout=5)
    assert body.headers["Content-Range"] == "bytes 0-0/" + "9" * 50
    assert body.headers["Content-Length"] == "10" and body.content == DATA[:10]  # framing kept


def test_redirect_variants_and_small_files(hf: HFTestServer) -> None:
    hf.set_faults(REPO, FILE, Faults(relative_redirect=True))
    location = cdn_location(hf)
    assert location.startswith(f"/cdn/{SHA}?")
    response = requests.get(resolve_url(hf), timeout=5)
    assert response.content == DATA
    assert [r.server for r in hf.requests][-2:] == ["hub", "hub"]

    hf.set_faults(REPO, FILE, Faults(redirect_to="http://example.invalid/x"))
    assert cdn_location(hf) == "http://example.invalid/x"

    small = b'{"architectures": ["BitNet"]}\n'
    hf.add_file(REPO, "config.json", small)
    hf.set_faults(REPO, "config.json", Faults(no_linked_headers=True))
    direct = requests.get(resolve_url(hf, path="config.json"), allow_redirects=False, timeout=5)
    assert direct.status_code == 200
    assert direct.content == small
    assert "X-Linked-Etag" not in direct.headers
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(small) + small).hexdigest()
    assert direct.headers["ETag"] == f'"{git_sha1}"'
    assert direct.headers["X-Repo-Commit"] == COMMIT


def test_stall_and_rate_limit(hf: HFTestServer) -> None:
    hf.set_faults(REPO, FILE, Faults(stall_at=1000, stall_seconds=0.3))
    location = cdn_location(hf)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(location, timeout=5)
    assert time.monotonic() - started >= 0.25
    with pytest.raises(requests.exceptions.ConnectionError):
        hf.set_faults(REPO, FILE, Faults(stall_at=0, stall_seconds=2))
        requests.get(location, timeout=(5, 0.2))  # read timeout fires during the stall

    hf.set_faults(REPO, FILE, Faults(rate_limit=len(DATA) * 4))
    started = time.monotonic()
    assert requests.get(location, timeout=5).content == DATA
    assert time.monotonic() - started >= 0.2


def test_lazily_discovered_file(hf: HFTestServer) -> None:
    on_disk = hf.root / "other" / "repo" / "tokenizer.model"
    on_disk.parent.mkdir(parents=True)
    on_disk.write_bytes(b"tok" * 100)
    response = requests.head(
        resolve_url(hf, repo="other/repo", path="tokenizer.model"),
        allow_redirects=False,
        timeout=5,
    )
    assert response.headers["X-Linked-Etag"] == f'"{hashlib.sha256(b"tok" * 100).hexdigest()}"'


def test_subprocess_mode(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / REPO).mkdir(parents=True)
    (root / REPO / "a.bin").write_bytes(b"abc")
    proc = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--root", str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        assert set(urls) == {"hub", "cdn"}
        assert urls["hub"] != urls["cdn"]
        response = requests.get(f"{urls['hub']}/{REPO}/resolve/main/a.bin", timeout=5)
        assert response.content == b"abc"
        assert response.url.startswith(urls["cdn"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
