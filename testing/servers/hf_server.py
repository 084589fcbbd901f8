"""A real HTTP/1.1 peer that speaks the Hugging Face "resolve" protocol, with fault injection.

Why: the downloader's test-suite must exercise real sockets, real keep-alive, real redirects and
real mid-stream failures instead of mocks, because most download bugs live exactly in those
details (a Range header that is ignored, a connection that dies after 3 MiB, an ``Authorization``
header that leaks to a CDN host).  This module runs two listening servers that share one state:

* the **hub** (``/{org}/{repo}/resolve/{rev}/{path}``), which answers like huggingface.co does
  for LFS files: a ``302`` to a signed CDN URL plus ``X-Repo-Commit``, ``X-Linked-Etag`` and
  ``X-Linked-Size``;
* the **CDN** (``/cdn/{sha256}?sig=...``), which serves the bytes with ``ETag``, ``Last-Modified``,
  ``Range``/``If-Range``/``If-None-Match``/``If-Modified-Since`` support.

Being on a different port, the CDN is a different origin, so tests can check that credentials are
never forwarded to it.  Faults (:class:`Faults`) are set per file and consumed per request, which
keeps "the first N requests fail" scenarios deterministic.

Usable in-process (``with HFTestServer(root) as srv: ...``) or as a subprocess::

    python testing/servers/hf_server.py --root DIR [--port N]

which prints one JSON line ``{"hub": "http://127.0.0.1:P1", "cdn": "http://127.0.0.1:P2"}`` once
ready and serves until SIGTERM/SIGINT.  Only the standard library is used (here and in the sibling
``process.py``), so the subprocess form works in any interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import email.utils
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import stat
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Literal, TypeAlias

if __package__:
    from .process import ServerContext
else:  # run as a script (see above): no parent package, but testing/servers is on sys.path
    from process import ServerContext  # type: ignore[import-not-found, no-redef]

__all__ = ["COMMIT", "Faults", "HFTestServer", "RecordedRequest", "main"]

#: The fake commit id every resolve answers with; fixed so tests can hard-code expectations.
COMMIT = hashlib.sha1(b"main").hexdigest()

# Slice size for normal bodies: large enough for GB/s over loopback, small enough that drop/stall
# offsets and server shutdown are honoured promptly.
_SLICE = 256 * 1024
# Upper bound of a slice when rate limiting, so pacing is smooth rather than bursty.
_RATE_SLICE = 16 * 1024
# Hashing chunk for files found on disk (never load a whole multi-GiB file into memory).
_HASH_CHUNK = 1024 * 1024

_SHA256_PATH_RE = re.compile(r"/cdn/([0-9a-f]{64})")
_RESOLVE_PATH_RE = re.compile(
    r"/(?P<org>[^/]*)/(?P<name>[^/]*)/resolve/(?P<rev>[^/]*)/(?P<file>.*)"
)
_ETAG_RE = re.compile(r'(?:W/)?"[^"]*"')
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
# Errors that simply mean "the peer went away"; a test server must not be noisy about them.
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

_Key: TypeAlias = tuple[str, str]
_StatKey: TypeAlias = tuple[int, int, int]
_Role: TypeAlias = Literal["hub", "cdn"]


@dataclass
class Faults:
    """Per-file fault injection; every field defaults to "behave correctly".

    Why dataclass of plain values: tests build one literal per scenario, and the server deep-copies
    it on :meth:`HFTestServer.set_faults` so consuming one-shot faults never mutates the caller's
    object.  One-shot/queued faults are consumed per request, in arrival order, so retries are
    deterministic.
    """

    #: Next GET/HEAD resolves of this file on the hub get these statuses (+ extra headers), one
    #: per request, before the hub behaves normally again, e.g. ``(429, {"Retry-After": "1"})``.
    status_sequence: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    #: Next GETs of this file on the CDN (HEADs pass): e.g. ``(403, {})`` for a signed URL
    #: that expired mid-download.
    cdn_status_sequence: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    #: One entry per body-bearing GET: abort the connection once the stream reaches this absolute
    #: file offset (bytes before it are flushed; ``d <= start`` means no body byte at all).
    drop_at: list[int] = field(default_factory=list)
    #: Once: when the stream reaches this absolute offset, stop sending, keep the socket open for
    #: ``stall_seconds``, then close it (a "hung" peer that only a read timeout can detect).
    stall_at: int | None = None
    stall_seconds: float = 30.0
    #: Bytes per second per response body, paced in small slices (to signal downloads mid-flight).
    rate_limit: int | None = None
    #: Behave like a server without range support: ranged GETs get a full ``200``.
    ignore_range: bool = False
    #: Next ranged GET: ``206`` for the window shifted by +1 byte, with a truthful (misaligned)
    #: ``Content-Range`` starting one byte after the requested offset.
    wrong_content_range: bool = False
    #: Next ranged GET: correct ``206`` body but no ``Content-Range`` header.
    missing_content_range: bool = False
    #: New content uploaded "mid-download": after ``change_after_requests`` body-bearing GETs of
    #: this file, the file on the hub becomes these bytes (new sha256/ETag/Last-Modified).  The old
    #: version stays addressable through its (already signed) CDN URL.  ``<= 0`` switches at once.
    change_after: bytes | None = None
    change_after_requests: int = 1
    #: Next ranged GET: ``416`` with ``Content-Range: bytes */<size>`` even though it was valid.
    range_not_satisfiable_once: bool = False
    #: Hub redirect ``Location`` is relative (``/cdn/...``); the hub also serves ``/cdn/`` paths.
    relative_redirect: bool = False
    #: Absolute URL to use as the redirect ``Location`` verbatim (e.g. an ``http://`` downgrade).
    redirect_to: str | None = None
    #: Small non-LFS file: the hub serves it directly with ``200`` and a git-blob-sha1 ``ETag``,
    #: without ``X-Linked-*`` headers and without a redirect.  Body faults (drop, stall, rate,
    #: range faults, ``change_after``) then apply to that direct hub response.
    no_linked_headers: bool = False
    #: CDN sends ``ETag: W/"..."`` (weak validators must never satisfy ``If-Range``).
    weak_etag: bool = False
    #: Headers of the hub's redirect replaced (or added) verbatim, on every resolve: a hostile
    #: or broken hub, e.g. ``{"X-Linked-Size": "abc"}`` or ``{"Location": "http://[::1"}``.
    hub_headers: dict[str, str] = field(default_factory=dict)
    #: Every ranged GET (not just the next one) is mangled: ``"misaligned"`` (as
    #: ``wrong_content_range``) or ``"no-content-range"`` (as ``missing_content_range``).
    #: Unranged GETs are served correctly, so one stream from byte 0 still works.
    mangle_ranges: Literal["misaligned", "no-content-range"] | None = None
    #: Headers of every body-bearing GET answer (``200``/``206``, from the CDN or a direct hub
    #: answer) replaced or added verbatim, e.g. a ``Content-Range`` with a 5,000-digit total.
    #: ``Content-Length`` is never touched, so the framing of the connection stays truthful.
    body_headers: dict[str, str] = field(default_factory=dict)
    #: The reason phrase of every injected status (``status_sequence``,
    #: ``cdn_status_sequence``) instead of the standard one, sent verbatim: a hostile server's
    #: ``HTTP/1.1 500 <escape codes, 50 KB of text>``.  It must be Latin-1 and hold no CR/LF
    #: (``http.server`` encodes the status line as Latin-1; a line break would end it).
    reason: str | None = None


@dataclass
class RecordedRequest:
    """One request seen by either server.

    Why: tests assert on what actually crossed the wire (which host got ``Authorization``, how
    many bytes a dropped response delivered, how many retries happened), not on client internals.
    """

    server: _Role
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    bytes_sent: int = 0


@dataclass
class _Version:
    """One immutable content version of a file, addressable on the CDN by its sha256."""

    owner: _Key
    sha256: str
    git_sha1: str
    size: int
    last_modified: int
    path: Path
    stat_key: _StatKey


@dataclass
class _FileState:
    """Mutable per-file state: the (consumable) faults and the current version."""

    faults: Faults = field(default_factory=Faults)
    body_gets: int = 0
    changed: bool = False
    current: _Version | None = None


@dataclass
class _BodyPlan:
    """Everything decided (under the state lock) about one GET response before streaming it."""

    status: int
    headers: list[tuple[str, str]]
    start: int
    length: int
    cut_at: int | None = None
    stall_seconds: float = 0.0
    rate_limit: int | None = None


class _Unsatisfiable:
    """Marker for a syntactically valid but unsatisfiable Range (answered with 416)."""


_UNSATISFIABLE = _Unsatisfiable()


def _stat_key(st: os.stat_result) -> _StatKey:
    """Identity of a file's content on disk; a change means the bytes may have changed."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _git_blob_sha1(data: bytes) -> str:
    """The id git would give this blob; huggingface.co uses it as ETag for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hash_file(path: Path, size: int) -> tuple[str, str]:
    """Stream-hash a file (sha256 and git blob sha1) without loading it into memory."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _http_date(timestamp: int) -> str:
    """RFC 9110 IMF-fixdate, as sent in ``Last-Modified``."""
    return email.utils.formatdate(timestamp, usegmt=True)


def _parse_http_date(value: str) -> int | None:
    """Parse an HTTP-date to epoch seconds; ``None`` if invalid (then the header is ignored)."""
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)  # "-0000" means UTC here
    return int(parsed.timestamp())


def _opaque(tag: str) -> str:
    """Entity tag without its weakness prefix, for the weak comparison of RFC 9110 8.8.3.2."""
    return tag[2:] if tag.startswith("W/") else tag


def _if_none_match(header: str, etag: str) -> bool:
    """``If-None-Match`` uses weak comparison; ``*`` matches any current representation."""
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(m.group(0)) == wanted for m in _ETAG_RE.finditer(header))


def _if_range(header: str, etag: str, last_modified: int) -> bool:
    """``If-Range`` uses strong comparison: weak tags never match, dates must be equal."""
    value = header.strip()
    if value.startswith(('"', "W/")):
        return not value.startswith("W/") and not etag.startswith("W/") and value == etag
    parsed = _parse_http_date(value)
    return parsed is not None and parsed == last_modified


def _parse_range(header: str, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """Parse a single ``bytes=`` range into an inclusive window.

    Returns ``None`` for anything we do not support or that is invalid (multi-range, other units,
    ``b < a``), because RFC 9110 lets a server ignore such a header and answer ``200``.
    """
    match = _RANGE_RE.fullmatch(header.strip().replace(" ", ""))
    if match is None or not any(match.groups()):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        return _suffix_range(int(last), size)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return _UNSATISFIABLE
    return (start, min(int(last), size - 1) if last else size - 1)


def _suffix_range(suffix: int, size: int) -> tuple[int, int] | _Unsatisfiable:
    """``bytes=-N``: the last N bytes (all of them when N exceeds the size)."""
    if suffix == 0 or size == 0:
        return _UNSATISFIABLE
    return (max(0, size - suffix), size - 1)


def _override(
    headers: list[tuple[str, str]],
    replacements: dict[str, str],
    *,
    untouched: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """``headers`` with every header ``replacements`` names replaced (or added) verbatim,
    except those named (lower case) in ``untouched``, which are only dropped."""
    replaced = {name.lower() for name in replacements}
    kept = [h for h in headers if h[0].lower() not in replaced]
    return kept + [(n, v) for n, v in replacements.items() if n.lower() not in untouched]


def _stat_regular(path: Path) -> os.stat_result | None:
    """The stat of a regular file (links followed), or None for anything else or nothing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _valid_segment(segment: str) -> bool:
    """Reject traversal and separator tricks so a URL can never escape the root directory."""
    return segment not in ("", ".", "..") and not any(c in segment for c in "/\\\0")


def _faulty_range(
    spec: tuple[int, int] | _Unsatisfiable | None, faults: Faults
) -> tuple[int, int] | _Unsatisfiable | None:
    """The requested range after the range faults: ignored (``ignore_range``), or refused
    once (``range_not_satisfiable_once``, consumed)."""
    if spec is None or faults.ignore_range:
        return None
    if faults.range_not_satisfiable_once:
        faults.range_not_satisfiable_once = False
        return _UNSATISFIABLE
    return spec


def _window(
    spec: tuple[int, int] | None, size: int, faults: Faults
) -> tuple[int, int, int, str | None]:
    """Status, first byte, length and ``Content-Range`` of a body, with the (consumed)
    Content-Range faults applied: a window shifted by one byte, or no header."""
    if spec is None:
        return 200, 0, size, None
    first, last = spec
    if faults.wrong_content_range or faults.mangle_ranges == "misaligned":
        faults.wrong_content_range = False
        if first + 1 >= size:  # nothing after the last byte: lie in the header instead
            return 206, first, last - first + 1, f"bytes {first + 1}-{last + 1}/{size}"
        start = first + 1
        length = min(last + 1, size - 1) - start + 1
        return 206, start, length, f"bytes {start}-{start + length - 1}/{size}"
    if faults.missing_content_range or faults.mangle_ranges == "no-content-range":
        faults.missing_content_range = False
        return 206, first, last - first + 1, None
    return 206, first, last - first + 1, f"bytes {first}-{last}/{size}"


def _cut(faults: Faults, start: int, end: int) -> tuple[int | None, float]:
    """Where the body stops early and how long the socket then stalls open, from the next
    ``drop_at`` and the one-shot ``stall_at`` (each consumed)."""
    cut_at: int | None = None
    if faults.drop_at:
        drop = faults.drop_at.pop(0)
        if drop < end:
            cut_at = max(drop, start)
    stall = faults.stall_at
    if stall is not None and start <= stall < (end if cut_at is None else cut_at):
        faults.stall_at = None
        return stall, faults.stall_seconds
    return cut_at, 0.0


class _HTTPServer(ThreadingHTTPServer):
    """One listening socket (hub or CDN) bound to the shared :class:`HFTestServer` state."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, port: int, role: _Role, owner: HFTestServer) -> None:
        self.role: _Role = role
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s ``getfqdn`` call, which can hang for seconds offline."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet about disconnects; keep real bugs in :attr:`HFTestServer.errors`."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECTS) or self.owner.stopping:
            return
        self.owner.record_error(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    """Request handler shared by hub and CDN; ``self.server.role`` says which one it is."""

    protocol_version = "HTTP/1.1"
    server_version = "hf-test-server/1.0"
    # Idle keep-alive connections are dropped after this, so threads never linger forever.
    timeout = 30.0

    _record: RecordedRequest | None = None

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _srv(self) -> _HTTPServer:
        server = self.server
        assert isinstance(server, _HTTPServer)
        return server

    @property
    def _hf(self) -> HFTestServer:
        return self._srv.owner

    @property
    def _sock(self) -> socket.socket:
        conn = self.connection
        assert isinstance(conn, socket.socket)
        return conn

    def setup(self) -> None:
        """Track the connection so :meth:`HFTestServer.stop` can close idle keep-alives."""
        super().setup()
        self._hf.track_connection(self._sock, add=True)

    def finish(self) -> None:
        """Untrack the connection; swallow errors from flushing to a vanished peer."""
        self._hf.track_connection(self._sock, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default per-request stderr logging; the request log is in memory."""

    def send_response(self, code: int, message: str | None = None) -> None:
        """Record the status before it is sent, so the log is final once the client sees it."""
        if self._record is not None:
            self._hf.update_record(self._record, status=code)
        super().send_response(code, message)

    def do_GET(self) -> None:
        """Entry point for GET (hub resolve, CDN download)."""
        self._dispatch()

    def do_HEAD(self) -> None:
        """Entry point for HEAD (metadata probes; same headers as GET, no body)."""
        self._dispatch()

    def _dispatch(self) -> None:
        self._record = self._hf.log_request(
            self._srv.role, self.command, self.path, list(self.headers.items())
        )
        self._discard_request_body()
        try:
            self._route()
        except _DISCONNECTS:
            self.close_connection = True
        finally:
            self._record = None

    def _discard_request_body(self) -> None:
        """Keep the keep-alive stream in sync even if a client sends a body with GET/HEAD."""
        length = self.headers.get("Content-Length")
        if length is not None and length.strip().isdigit():
            self.rfile.read(int(length))
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True

    def _abort(self) -> None:
        """Kill the connection mid-response (after whatever was already flushed)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _send_simple(
        self,
        status: int,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        content_type: str | None = None,
        content_length: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Send a complete response; always framed so keep-alive stays correct.

        ``content_length`` overrides the advertised length for HEAD (which sends no body);
        ``reason`` replaces the standard reason phrase.
        """
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        no_body = status in (204, 304) or 100 <= status < 200
        if not no_body:
            if content_type is not None and body:
                self.send_header("Content-Type", content_type)
            length = len(body) if content_length is None else content_length
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if body and not no_body and self.command != "HEAD":
            self._hf.update_record(self._record, add_bytes=len(body))
            self.wfile.write(body)

    def _send_error_json(self, status: int, message: str, code: str | None = None) -> None:
        """Hub-style error: small JSON body, ``X-Error-Code``/``X-Error-Message`` headers."""
        headers: list[tuple[str, str]] = []
        if code is not None:
            headers += [("X-Error-Code", code), ("X-Error-Message", message)]
        body = json.dumps({"error": message}).encode()
        self._send_simple(status, headers, body, content_type="application/json; charset=utf-8")

    def _send_injected(self, key: _Key, status: int, extra: dict[str, str]) -> None:
        """An injected status (``status_sequence``, ``cdn_status_sequence``), with the file's
        ``reason`` fault if it has one."""
        body = json.dumps({"error": f"injected status {status}"}).encode()
        self._send_simple(
            status,
            list(extra.items()),
            body,
            content_type="application/json; charset=utf-8",
            reason=self._hf.faults_snapshot(key).reason,
        )

    # -- routes -------------------------------------------------------------------------------

    def _routes(self) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], None]]]:
        """This server's routes, in order: the CDN's content by sha256 (on the hub too, since
        relative redirects resolve against it) and the hub's resolve endpoint."""
        cdn = (_SHA256_PATH_RE, self._handle_cdn)
        return [cdn] if self._srv.role == "cdn" else [cdn, (_RESOLVE_PATH_RE, self._handle_resolve)]

    def _route(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        for pattern, handler in self._routes():
            if match := pattern.fullmatch(path):
                handler(match)
                return
        self._send_error_json(404, "Not Found")

    # -- hub ----------------------------------------------------------------------------------

    def _handle_resolve(self, match: re.Match[str]) -> None:
        """``/{org}/{repo}/resolve/{rev}/{path}``, answered as huggingface.co does."""
        org, name, rev = (urllib.parse.unquote(match[group]) for group in ("org", "name", "rev"))
        repo = f"{org}/{name}"
        file_path = "/".join(urllib.parse.unquote(p) for p in match["file"].split("/"))
        refusal = self._resolve_refusal(repo, rev, file_path)
        if refusal is not None:
            self._send_error_json(*refusal)
            return
        key = (repo, file_path)
        injected = self._hf.next_injected_status(key)
        faults = self._hf.faults_snapshot(key)
        if injected is not None:
            self._send_injected(key, *injected)
        elif faults.no_linked_headers:
            self._serve_direct(key)
        else:
            self._redirect(key, faults)

    def _resolve_refusal(self, repo: str, rev: str, file_path: str) -> tuple[int, str, str] | None:
        """The hub's error (status, message, ``X-Error-Code``) for a resolve it cannot answer,
        checked in huggingface.co's order; None when it can."""
        hf = self._hf
        if not hf.repo_exists(repo):
            return 404, "Repository not found", "RepoNotFound"
        denied = hf.check_auth(repo, self.headers.get("Authorization"))
        if denied is not None:
            message = f"Access to model {repo} is restricted. You must be authenticated."
            return denied, message, "GatedRepo"
        if rev not in ("main", COMMIT):
            return 404, f"Invalid rev id: {rev}", "RevisionNotFound"
        disk_path = hf.disk_path(repo, file_path)
        if disk_path is None or not disk_path.is_file():
            return 404, "Entry not found", "EntryNotFound"
        return None

    def _serve_direct(self, key: _Key) -> None:
        """A small non-LFS file: the bytes from the hub itself, with a git-blob ETag."""
        opened = self._hf.open_current(key)
        if opened is None:
            self._send_error_json(404, "Entry not found", "EntryNotFound")
            return
        direct, fh = opened
        with fh:
            self._serve_content(direct, fh, f'"{direct.git_sha1}"', [("X-Repo-Commit", COMMIT)])

    def _redirect(self, key: _Key, faults: Faults) -> None:
        """An LFS file: ``302`` to a signed CDN URL, with the ``X-Linked-*`` headers."""
        hf = self._hf
        version = hf.resolve(key)
        if version is None:
            self._send_error_json(404, "Entry not found", "EntryNotFound")
            return
        query = urllib.parse.urlencode({"sig": hf.new_signature(key), "file": key[1]})
        cdn_path = f"/cdn/{version.sha256}?{query}"
        if faults.redirect_to is not None:
            location = faults.redirect_to
        else:
            location = cdn_path if faults.relative_redirect else hf.cdn_url + cdn_path
        headers = [
            ("X-Repo-Commit", COMMIT),
            ("Location", location),
            ("X-Linked-Etag", f'"{version.sha256}"'),
            ("X-Linked-Size", str(version.size)),
            ("ETag", f'"{version.sha256}"'),
        ]
        self._send_simple(302, _override(headers, faults.hub_headers))

    # -- cdn ----------------------------------------------------------------------------------

    def _handle_cdn(self, match: re.Match[str]) -> None:
        """``/cdn/{sha256}?sig=...``: a (possibly superseded) version's bytes."""
        sig = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("sig", [None])[0]
        opened = self._hf.open_by_sha(match.group(1), sig)
        if opened is None:
            self._send_error_json(404, "Not Found")
            return
        version, fh = opened
        injected = (
            self._hf.next_injected_status(version.owner, "cdn") if self.command == "GET" else None
        )
        if injected is not None:
            fh.close()
            self._send_injected(version.owner, *injected)
            return
        weak = self._hf.faults_snapshot(version.owner).weak_etag
        etag = f'{"W/" if weak else ""}"{version.sha256[:32]}"'
        with fh:
            self._serve_content(version, fh, etag, [])

    # -- content ------------------------------------------------------------------------------

    def _serve_content(
        self,
        version: _Version,
        fh: BinaryIO,
        etag: str,
        extra: list[tuple[str, str]],
    ) -> None:
        """Serve one version with conditional and range semantics (RFC 9110) plus faults."""
        base = [
            *extra,
            ("ETag", etag),
            ("Last-Modified", _http_date(version.last_modified)),
            ("Accept-Ranges", "bytes"),
        ]
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            if _if_none_match(inm, etag):
                self._send_simple(304, base)
                return
        else:
            ims_header = self.headers.get("If-Modified-Since")
            ims = _parse_http_date(ims_header) if ims_header is not None else None
            if ims is not None and version.last_modified <= ims:
                self._send_simple(304, base)
                return
        base.append(("Content-Type", "application/octet-stream"))
        if self.command == "HEAD":
            # RFC 9110 defines Range for GET only, so HEAD describes the full representation.
            self._send_simple(200, base, content_length=version.size)
            return

        spec: tuple[int, int] | _Unsatisfiable | None = None
        range_header = self.headers.get("Range")
        if range_header is not None:
            if_range = self.headers.get("If-Range")
            if if_range is None or _if_range(if_range, etag, version.last_modified):
                spec = _parse_range(range_header, version.size)
        plan = self._hf.plan_body(version, spec, base)
        self._stream(plan, fh)

    def _stream(self, plan: _BodyPlan, fh: BinaryIO) -> None:
        """Send headers and body slices, honouring rate limit, drop and stall faults."""
        with self._hf.body_stream():
            self.send_response(plan.status)
            for name, value in plan.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(plan.length))
            self.end_headers()
            end = plan.start + plan.length
            limit = end if plan.cut_at is None else min(plan.cut_at, end)
            if not self._send_body(plan, fh, limit):
                self._abort()
            elif plan.cut_at is not None:
                if plan.stall_seconds > 0:
                    self._hf.wait_stopping(plan.stall_seconds)
                self._abort()

    def _send_body(self, plan: _BodyPlan, fh: BinaryIO, limit: int) -> bool:
        """Send the file's bytes from ``plan.start`` up to ``limit``, paced to the rate limit;
        False when the server is stopping or the file shrank under us (then abort)."""
        slice_size = _SLICE
        if plan.rate_limit is not None:
            slice_size = max(1, min(_RATE_SLICE, plan.rate_limit // 10))
        started = time.monotonic()
        pos = plan.start
        while pos < limit:
            if self._hf.stopping or not self._pace(plan, pos, started):
                return False
            count = min(slice_size, limit - pos)
            if not self._send_slice(fh, pos, count):
                return False
            pos += count
        return True

    def _pace(self, plan: _BodyPlan, pos: int, started: float) -> bool:
        """Wait until byte ``pos`` is due under the rate limit; False if stopped meanwhile."""
        if plan.rate_limit is None:
            return True
        delay = started + (pos - plan.start) / plan.rate_limit - time.monotonic()
        return delay <= 0 or not self._hf.wait_stopping(delay)

    def _send_slice(self, fh: BinaryIO, pos: int, count: int) -> bool:
        """``count`` bytes at ``pos`` by sendfile; False if fewer went (the file shrank: never
        send a short body silently)."""
        hf = self._hf
        # Count before sending so the log is final by the time the client has the bytes.
        hf.update_record(self._record, add_bytes=count)
        try:
            sent = self._sock.sendfile(fh, pos, count)
        except BaseException:
            hf.update_record(self._record, add_bytes=-count)
            raise
        if sent != count:
            hf.update_record(self._record, add_bytes=sent - count)
            return False
        return True


class HFTestServer(ServerContext):
    """Hub + CDN pair over one shared state; see the module docstring for the protocol.

    ``root`` holds repositories as ``root/<org>/<repo>/<path within repo>``; files may be put
    there directly or through :meth:`add_file`.  Every public method is thread-safe.
    """

    commit: str = COMMIT

    def __init__(self, root: Path, *, hub_port: int = 0, cdn_port: int = 0) -> None:
        self.root = Path(root)
        self._hub_port = hub_port
        self._cdn_port = cdn_port
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._files: dict[_Key, _FileState] = {}
        self._by_sha: dict[str, list[_Version]] = {}
        self._signatures: dict[str, _Key] = {}
        self._log: list[RecordedRequest] = []
        self._bodies = 0
        self._peak_bodies = 0
        self._errors: list[str] = []
        self._token: str | None = None
        self._gated: frozenset[str] = frozenset()
        self._connections: set[socket.socket] = set()
        self._servers: list[_HTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._store_dir: Path | None = None
        self._hub_url: str | None = None
        self._cdn_url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> HFTestServer:
        """Bind both servers on 127.0.0.1 and serve in daemon threads; returns ``self``."""
        if self._servers:
            raise RuntimeError("HFTestServer already started")
        self.root.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        hub = _HTTPServer(self._hub_port, "hub", self)
        try:
            cdn = _HTTPServer(self._cdn_port, "cdn", self)
        except BaseException:
            hub.server_close()
            raise
        self._servers = [hub, cdn]
        self._hub_url = f"http://127.0.0.1:{hub.server_port}"
        self._cdn_url = f"http://127.0.0.1:{cdn.server_port}"
        for srv in self._servers:
            thread = threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"hf-test-{srv.role}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections (stalls, keep-alives) and drop stored versions."""
        if not self._servers:
            return
        self._stopping.set()
        for srv in self._servers:
            srv.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for srv in self._servers:
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers = []
        self._threads = []
        if self._store_dir is not None:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            self._store_dir = None

    @property
    def hub_url(self) -> str:
        """Base URL of the hub, e.g. ``http://127.0.0.1:P1`` (only after :meth:`start`)."""
        if self._hub_url is None:
            raise RuntimeError("HFTestServer not started")
        return self._hub_url

    @property
    def cdn_url(self) -> str:
        """Base URL of the CDN; a distinct origin from the hub (only after :meth:`start`)."""
        if self._cdn_url is None:
            raise RuntimeError("HFTestServer not started")
        return self._cdn_url

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began; long sleeps in handlers end early."""
        return self._stopping.is_set()

    def wait_stopping(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns True early if the server is being stopped."""
        return self._stopping.wait(seconds)

    # -- content management -------------------------------------------------------------------

    def add_file(self, repo: str, path: str, data: bytes) -> str:
        """Write ``root/repo/path`` (creating the repo) and return its sha256 hex.

        Overwriting a file keeps the previous version addressable on the CDN, like a real CDN
        keeps serving already-signed URLs after a new upload.
        """
        key = self._key(repo, path)
        with self._lock:
            return self._replace_content(key, data).sha256

    def set_faults(self, repo: str, path: str, faults: Faults) -> None:
        """Replace the faults of one file (a private copy) and reset its per-file counters."""
        key = self._key(repo, path)
        with self._lock:
            state = self._files.setdefault(key, _FileState())
            state.faults = copy.deepcopy(faults)
            state.body_gets = 0
            state.changed = False
            if faults.change_after is not None and faults.change_after_requests <= 0:
                state.changed = True
                self._replace_content(key, faults.change_after)

    def set_token(self, token: str | None, gated_repos: Collection[str] = frozenset()) -> None:
        """Require ``Authorization: Bearer <token>`` on the hub for ``gated_repos``.

        ``None`` disables gating.  The CDN never checks credentials (its URLs are signed), which
        is what lets tests assert that the client does not forward them there.
        """
        with self._lock:
            self._token = token
            self._gated = frozenset(gated_repos)

    # -- request log --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot (copies) of every request on both servers, in arrival order."""
        with self._lock:
            return [replace(r, headers=dict(r.headers)) for r in self._log]

    def clear_log(self) -> None:
        """Forget recorded requests (e.g. after a test's setup phase); the peak of
        :attr:`peak_body_streams` starts again from the bodies being sent now."""
        with self._lock:
            self._log.clear()
            self._peak_bodies = self._bodies

    @property
    def peak_body_streams(self) -> int:
        """The most response bodies (GETs answered ``200``/``206``/``416``, on both servers)
        that were being sent at the same time, since the start or :meth:`clear_log`.

        Why: a client's bound on its connections is only visible on the server side; the
        request log says which requests came, not how many were open at once.  A body
        counts from its status line until its last byte is handed to the socket (or the
        connection is cut), so a client that keeps within its bound never shows more.
        """
        with self._lock:
            return self._peak_bodies

    @contextlib.contextmanager
    def body_stream(self) -> Iterator[None]:
        """Count one response body being sent (:attr:`peak_body_streams`)."""
        with self._lock:
            self._bodies += 1
            self._peak_bodies = max(self._peak_bodies, self._bodies)
        try:
            yield
        finally:
            with self._lock:
                self._bodies -= 1

    @property
    def errors(self) -> list[str]:
        """Tracebacks of unexpected handler exceptions; tests can assert this stays empty."""
        with self._lock:
            return list(self._errors)

    # -- internals used by the handler (public names so the handler stays type-checked) -------

    def record_error(self, text: str) -> None:
        """Keep an unexpected handler exception (we never print to stderr)."""
        with self._lock:
            self._errors.append(text)

    def track_connection(self, conn: socket.socket, *, add: bool) -> None:
        """Register/unregister a live client connection."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def log_request(
        self, role: _Role, method: str, path: str, headers: list[tuple[str, str]]
    ) -> RecordedRequest:
        """Append a request to the log at arrival (status/bytes are filled in as they happen)."""
        merged: dict[str, str] = {}
        for name, value in headers:
            lower = name.lower()
            merged[lower] = f"{merged[lower]}, {value}" if lower in merged else value
        record = RecordedRequest(server=role, method=method, path=path, headers=merged)
        with self._lock:
            self._log.append(record)
        return record

    def update_record(
        self, record: RecordedRequest | None, *, status: int | None = None, add_bytes: int = 0
    ) -> None:
        """Update a log entry under the lock so snapshots are consistent."""
        if record is None:
            return
        with self._lock:
            if status is not None:
                record.status = status
            record.bytes_sent += add_bytes

    def repo_exists(self, repo: str) -> bool:
        """A repo exists iff ``root/<org>/<repo>`` is a directory."""
        parts = repo.split("/")
        if len(parts) != 2 or not all(_valid_segment(p) and p[0] != "." for p in parts):
            return False
        return self.root.joinpath(*parts).is_dir()

    def check_auth(self, repo: str, authorization: str | None) -> int | None:
        """Return 401/403 if the repo is gated and the bearer token is missing/wrong."""
        with self._lock:
            token, gated = self._token, self._gated
        if token is None or repo not in gated:
            return None
        if authorization is None:
            return 401
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or credentials.strip() != token:
            return 403
        return None

    def disk_path(self, repo: str, path: str) -> Path | None:
        """Map repo + path to a file under root, or ``None`` if it could escape the root."""
        repo_parts = repo.split("/")
        parts = path.split("/")
        if len(repo_parts) != 2 or not all(_valid_segment(p) for p in (*repo_parts, *parts)):
            return None
        if any(p.startswith(".") for p in repo_parts):
            return None
        return self.root.joinpath(*repo_parts, *parts)

    def next_injected_status(
        self, key: _Key, server: _Role = "hub"
    ) -> tuple[int, dict[str, str]] | None:
        """Consume the next injected status of this file on `server`, if any."""
        with self._lock:
            state = self._files.get(key)
            if state is None:
                return None
            faults = state.faults
            sequence = faults.status_sequence if server == "hub" else faults.cdn_status_sequence
            return sequence.pop(0) if sequence else None

    def faults_snapshot(self, key: _Key) -> Faults:
        """A copy of the file's remaining faults (for read-only decisions)."""
        with self._lock:
            state = self._files.get(key)
            return copy.deepcopy(state.faults) if state is not None else Faults()

    def new_signature(self, key: _Key) -> str:
        """Random URL signature; remembers which file it was issued for (faults lookup)."""
        sig = secrets.token_hex(8)
        with self._lock:
            self._signatures[sig] = key
        return sig

    def resolve(self, key: _Key) -> _Version | None:
        """Current version of a file on disk, hashing it only when it changed (and again,
        up to three times, when it changes while being hashed)."""
        path = self.disk_path(*key)
        if path is None:
            return None
        for _ in range(3):
            st = _stat_regular(path)
            if st is None:
                return None
            with self._lock:
                state = self._files.get(key)
                current = state.current if state is not None else None
                if current is not None and current.stat_key == _stat_key(st):
                    return current
            # Hash outside the lock: a multi-GiB file must not block every other request.
            sha256, git_sha1 = _hash_file(path, st.st_size)
            with self._lock:
                again = _stat_regular(path)
                if again is not None and _stat_key(again) == _stat_key(st):
                    return self._register(key, path, sha256, git_sha1, again)
        return None

    def open_current(self, key: _Key) -> tuple[_Version, BinaryIO] | None:
        """Resolve and open the current version atomically w.r.t. content switches."""
        for _ in range(3):
            version = self.resolve(key)
            if version is None:
                return None
            with self._lock:
                fh = self._open_version(version)
            if fh is not None:
                return version, fh
        return None

    def open_by_sha(self, sha256: str, sig: str | None) -> tuple[_Version, BinaryIO] | None:
        """Open a (possibly old) version by content hash, preferring the file ``sig`` was for."""
        with self._lock:
            owner = self._signatures.get(sig) if sig is not None else None
            candidates = sorted(self._by_sha.get(sha256, []), key=lambda v: v.owner != owner)
            for version in candidates:
                fh = self._open_version(version)
                if fh is not None:
                    return version, fh
        return None

    def plan_body(
        self,
        version: _Version,
        spec: tuple[int, int] | _Unsatisfiable | None,
        base_headers: list[tuple[str, str]],
    ) -> _BodyPlan:
        """Decide status, window and faults of one GET, consuming one-shot faults atomically."""
        with self._lock:
            state = self._files.setdefault(version.owner, _FileState())
            faults = state.faults
            spec = _faulty_range(spec, faults)
            if isinstance(spec, _Unsatisfiable):
                headers = [*base_headers, ("Content-Range", f"bytes */{version.size}")]
                return _BodyPlan(status=416, headers=headers, start=0, length=0)
            status, start, length, content_range = _window(spec, version.size, faults)
            headers = list(base_headers)
            if content_range is not None:
                headers.append(("Content-Range", content_range))
            headers = _override(
                headers, faults.body_headers, untouched=frozenset({"content-length"})
            )
            state.body_gets += 1
            cut_at, stall_seconds = _cut(faults, start, start + length)
            if (
                faults.change_after is not None
                and not state.changed
                and state.body_gets >= faults.change_after_requests
            ):
                # The caller already holds an open handle on the old bytes, so this response
                # still serves the old version; only later resolves see the new one.
                state.changed = True
                self._replace_content(version.owner, faults.change_after)
            return _BodyPlan(
                status, headers, start, length, cut_at, stall_seconds, faults.rate_limit
            )

    # -- private helpers (call with the lock held where noted) --------------------------------

    def _key(self, repo: str, path: str) -> _Key:
        repo, path = repo.strip("/"), path.strip("/")
        if self.disk_path(repo, path) is None:
            raise ValueError(f"invalid repo/path: {repo!r} {path!r}")
        return (repo, path)

    def _open_version(self, version: _Version) -> BinaryIO | None:
        """Open a version's bytes, or ``None`` if they were changed behind our back (lock held)."""
        try:
            fh = version.path.open("rb")
        except OSError:
            return None
        if _stat_key(os.fstat(fh.fileno())) != version.stat_key:
            fh.close()
            return None
        return fh

    def _store(self) -> Path:
        """Private directory for superseded versions (lock held); removed on :meth:`stop`."""
        if self._store_dir is None:
            self._store_dir = Path(tempfile.mkdtemp(prefix="hf-test-server-"))
        return self._store_dir

    def _replace_content(self, key: _Key, data: bytes) -> _Version:
        """Make ``data`` the current content, keeping the old version servable (lock held)."""
        path = self.disk_path(*key)
        if path is None:
            raise ValueError(f"invalid repo/path: {key!r}")
        state = self._files.setdefault(key, _FileState())
        old = state.current
        with contextlib.suppress(OSError):
            if old is not None and _stat_key(path.stat()) == old.stat_key:
                # Move (not copy) so readers holding the old inode keep streaming it untouched.
                dest = self._store() / f"{old.sha256}-{secrets.token_hex(4)}"
                shutil.move(path, dest)
                old.path = dest
                old.stat_key = _stat_key(dest.stat())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        sha256 = hashlib.sha256(data).hexdigest()
        return self._register(key, path, sha256, _git_blob_sha1(data), path.stat())

    def _register(
        self, key: _Key, path: Path, sha256: str, git_sha1: str, st: os.stat_result
    ) -> _Version:
        """Record a new current version (lock held); Last-Modified strictly increases."""
        state = self._files.setdefault(key, _FileState())
        last_modified = int(st.st_mtime)
        previous = state.current
        if previous is not None and last_modified <= previous.last_modified:
            last_modified = previous.last_modified + 1
        # Entries still pointing at this path describe bytes that are gone.
        for sha, versions in list(self._by_sha.items()):
            kept = [v for v in versions if v.path != path]
            if kept:
                self._by_sha[sha] = kept
            else:
                del self._by_sha[sha]
        version = _Version(
            owner=key,
            sha256=sha256,
            git_sha1=git_sha1,
            size=st.st_size,
            last_modified=last_modified,
            path=path,
            stat_key=_stat_key(st),
        )
        state.current = version
        self._by_sha.setdefault(sha256, []).append(version)
        return version


def main(argv: Sequence[str] | None = None) -> int:
    """Subprocess entry point: serve ``--root`` until SIGTERM/SIGINT.

    Why a subprocess mode: some tests (signals, crash-resume) must run the downloader or the
    server in another process; the JSON line is the readiness handshake.
    """
    parser = argparse.ArgumentParser(description="Fake Hugging Face hub + CDN for tests.")
    parser.add_argument("--root", type=Path, required=True, help="root/<org>/<repo>/<path>")
    parser.add_argument("--port", type=int, default=0, help="hub port (default: random)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (default: random)")
    parser.add_argument("--token", default=None, help="bearer token required for --gated repos")
    parser.add_argument("--gated", action="append", default=[], help="org/repo needing --token")
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server = HFTestServer(args.root, hub_port=args.port, cdn_port=args.cdn_port)
    if args.token is not None:
        server.set_token(args.token, set(args.gated))
    with server:
        print(json.dumps({"hub": server.hub_url, "cdn": server.cdn_url}), flush=True)
        while not done.is_set():
            done.wait(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
