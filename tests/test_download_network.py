"""Proxies and TLS: a real tinyproxy, and a real https server with a test CA."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, Xtask, payload
from servers.hf_server import HFTestServer
from servers.tinyproxy import VIA_PROXY_NAME, TinyProxy, tinyproxy_available

NAME = "model.gguf"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    if tinyproxy_available() is None:
        pytest.skip("tinyproxy is not installed (scripts/ci-local.sh deps installs it)")
    with TinyProxy(tmp_path / "proxy") as server:
        yield server


def test_http_proxy_from_the_environment_is_used(
    hf: HFTestServer, xtask: Xtask, proxy: TinyProxy
) -> None:
    data = payload(200_000)
    hf.add_file(REPO, NAME, data)
    run = xtask.download(hf.hub_url, "--file", NAME, env=xtask.env(HTTP_PROXY=proxy.url))
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    assert hf.requests and all(VIA_PROXY_NAME in r.headers.get("via", "") for r in hf.requests)


def test_no_proxy_bypasses_the_proxy(hf: HFTestServer, xtask: Xtask, proxy: TinyProxy) -> None:
    hf.add_file(REPO, NAME, payload(1000))
    env = xtask.env(HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
    assert xtask.download(hf.hub_url, "--file", NAME, env=env).code == 0
    assert hf.requests and all("via" not in r.headers for r in hf.requests)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def https_redirector(cert: Path, key: Path, location: str) -> ThreadingHTTPServer:
    """An https 'hub' whose every answer is a 302 to `location`."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_https_to_http_redirect_is_refused(
    hf: HFTestServer, xtask: Xtask, tls_files: tuple[Path, Path]
) -> None:
    hf.add_file(REPO, NAME, b"bytes")
    cert, key = tls_files
    server = https_redirector(cert, key, f"{hf.cdn_url}/cdn/anything")
    try:
        base = f"https://127.0.0.1:{server.server_address[1]}"
        env = xtask.env(REQUESTS_CA_BUNDLE=str(cert), HF_TOKEN="hf_mustNotTravel")
        run = xtask.download(base, "--file", NAME, env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert run.code == 14, run.stderr
    assert "refusing redirect from https to http" in run.stderr
    assert hf.requests == []  # not a single byte went out over plain http
    assert "hf_mustNotTravel" not in run.stderr + run.stdout


def test_https_with_an_untrusted_certificate_fails_clearly(
    xtask: Xtask, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    server = https_redirector(cert, key, "/elsewhere")
    try:
        run = xtask.download(
            f"https://127.0.0.1:{server.server_address[1]}", "--file", NAME, "--retries", "0"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert run.code == 14
    assert "Traceback" not in run.stderr
