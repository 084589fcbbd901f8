"""A real nginx, run as an unprivileged-port child process for tests and benchmarks.

Why a real nginx and not a Python fake: downloader behaviour that matters in production (Range,
If-Range, ETag / If-None-Match, If-Modified-Since, sendfile throughput, per-connection rate
limits) is easy to get subtly wrong in a hand-written server, and then the tests only prove that
the client agrees with our own misunderstanding.  nginx implements these semantics natively for
static files, so it is a trustworthy reference peer.

Everything (config, pid file, logs, temp dirs) lives under ``workdir`` so several instances can
run side by side and nothing outside the test's temporary directory is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from .process import ProcessServer, spawn, tail, wait_for_port

__all__ = ["NginxServer", "nginx_available"]

# Debian installs nginx in /usr/sbin, which is often not on an unprivileged user's PATH.
_NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

_START_TIMEOUT_S = 15.0  # nginx itself retries a busy port for ~2.5 s before giving up
_RATE_RE = re.compile(r"^[0-9]+[kKmMgG]?$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Fields of the JSON access log.  nginx writes every value as a JSON string (a bare ``$status``
# can be ``000`` for aborted requests, which is not valid JSON), and ``access_log()`` converts
# these ones back to numbers.
_INT_FIELDS = frozenset({"status", "bytes_sent", "total_bytes_sent", "connection", "requests"})
_FLOAT_FIELDS = frozenset({"request_time"})
_LOG_FIELDS: tuple[tuple[str, str], ...] = (
    ("time", "$time_iso8601"),
    ("remote_addr", "$remote_addr"),
    ("method", "$request_method"),
    ("uri", "$request_uri"),  # as the client sent it: undecoded, query string included
    ("status", "$status"),
    ("bytes_sent", "$body_bytes_sent"),  # body only, so it can be compared with file sizes
    ("total_bytes_sent", "$bytes_sent"),
    ("http_range", "$http_range"),
    ("http_if_range", "$http_if_range"),
    ("http_if_none_match", "$http_if_none_match"),
    ("http_if_modified_since", "$http_if_modified_since"),
    # Presence only: tokens must never end up in a log file that a failing test might print.
    ("http_authorization", "$xtask_authorization"),
    ("http_via", "$http_via"),
    ("http_user_agent", "$http_user_agent"),
    ("sent_content_range", "$sent_http_content_range"),
    ("connection", "$connection"),  # lets tests see whether connections were reused
    ("requests", "$connection_requests"),
    ("request_time", "$request_time"),
)


def nginx_available() -> str | None:
    """Return the nginx binary's path, or None so callers can ``pytest.skip`` cleanly."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in _NGINX_CANDIDATES:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _check_text(value: str, what: str) -> None:
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} must not contain control characters: {value!r}")


def _quote_path(path: str, what: str) -> str:
    """Quote a filesystem path / URI for nginx.conf.

    ``$`` is rejected rather than escaped: nginx would treat it as a variable in root/alias,
    which silently changes how the path is mapped.
    """
    _check_text(path, what)
    if "$" in path:
        raise ValueError(f"{what} must not contain '$' (nginx would read a variable): {path!r}")
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_value(value: str, what: str) -> str:
    """Quote a header value for nginx.conf, keeping ``$`` literal.

    nginx has no escape for ``$`` inside strings, so it is spelled via a ``geo`` variable whose
    value (unlike a ``map`` value) is never interpolated.
    """
    _check_text(value, what)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${xtask_dollar}")
    return '"' + escaped + '"'


def _hf_locations(
    url_path: str, headers: dict[str, str], root: Path, rate: str | None
) -> list[str]:
    """The ``location`` adding Hugging Face-style headers to one file, and its twin under
    ``/limited/`` when there is a rate limit (so HF-style clients can be slowed too)."""
    if not url_path.startswith("/"):
        raise ValueError(f"hf_headers keys must be URL paths starting with '/': {url_path}")
    body: list[str] = []
    for name, value in headers.items():
        if not _HEADER_NAME_RE.match(name):
            raise ValueError(f"invalid header name {name!r} for {url_path}")
        if name.lower() == "etag":
            body.append("etag off;")
        body.append(f"add_header {name} {_quote_value(value, name)} always;")
    lines = [f"        location = {_quote_path(url_path, 'path')} {{ {' '.join(body)} }}"]
    if rate is not None:
        target = _quote_path(str(root) + url_path, "path")
        limited = _quote_path("/limited" + url_path, "path")
        lines.append(
            f"        location = {limited} {{ alias {target}; limit_rate {rate}; "
            f"{' '.join(body)} }}"
        )
    return lines


@dataclass
class NginxServer(ProcessServer):
    """An nginx serving ``root`` on 127.0.0.1 at a free port, configured entirely in ``workdir``.

    ``rate_limit`` (an nginx size such as ``"2m"``) exposes the same files under ``/limited/``
    with a per-connection ``limit_rate``, so a test can make a download slow enough to interrupt
    without changing the content.  ``hf_headers`` maps URL paths to extra response headers, so
    nginx can imitate what Hugging Face sends for a file (X-Repo-Commit, X-Linked-Etag, ...); a
    header named ``ETag`` replaces nginx's own ETag for that path.
    """

    # Graceful quit first (lets workers finish), then fast shutdown, then SIGKILL for the group.
    _STOP_SIGNALS: ClassVar[tuple[tuple[signal.Signals, float], ...]] = (
        (signal.SIGQUIT, 3.0),
        (signal.SIGTERM, 5.0),
    )
    _BIND_FAILURE: ClassVar[str] = "Address already in use"

    root: Path
    workdir: Path
    rate_limit: str | None = None
    hf_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _port: int | None = field(default=None, init=False, repr=False)
    _output: IO[bytes] | None = field(default=None, init=False, repr=False)  # nginx.stderr.log

    # -- paths ---------------------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        """The generated nginx.conf (kept after stop, for post-mortems)."""
        return self.workdir / "nginx.conf"

    @property
    def access_log_path(self) -> Path:
        """JSON-lines access log, one object per request."""
        return self.workdir / "access.log"

    @property
    def error_log_path(self) -> Path:
        """nginx's error log; its tail is quoted when start-up fails."""
        return self.workdir / "error.log"

    @property
    def pid_path(self) -> Path:
        """nginx writes this only after binding, which is how start() knows the port is ours."""
        return self.workdir / "nginx.pid"

    @property
    def stderr_path(self) -> Path:
        """nginx's own stderr: config errors found before error_log is opened land here."""
        return self.workdir / "nginx.stderr.log"

    # -- config --------------------------------------------------------------------------------

    def render_config(self, port: int) -> str:
        """Return nginx.conf text for ``port``; public so tests can show it when debugging."""
        root = self.root.resolve()
        rate = self.rate_limit
        if rate is not None and not _RATE_RE.match(rate):
            raise ValueError(f"rate_limit must look like '512k' or '2m', got {rate!r}")
        lines: list[str] = ["# Generated by testing/servers/nginx.py; edits are overwritten."]
        if os.geteuid() == 0:
            # As root, nginx would otherwise switch workers to 'nobody', who may not be able to
            # read a test's temporary directory.  Non-root nginx cannot switch users anyway.
            lines.append("user root;")
        lines += self._http_lines(self.workdir.resolve())
        lines += [
            "    server {",
            f"        listen 127.0.0.1:{port};",
            "        server_name localhost;",
            f"        root {_quote_path(str(root), 'root')};",
            "        location / { }",
        ]
        if rate is not None:
            alias = _quote_path(str(root) + "/", "root")
            lines.append(f"        location /limited/ {{ alias {alias}; limit_rate {rate}; }}")
        for url_path, headers in sorted(self.hf_headers.items()):
            lines += _hf_locations(url_path, headers, root, rate)
        lines += ["    }", "}", ""]
        return "\n".join(lines)

    @staticmethod
    def _http_lines(work: Path) -> list[str]:
        """Everything before the ``server`` block: files under ``work``, the JSON log."""
        lines = [
            "worker_processes 1;",
            f"pid {_quote_path(str(work / 'nginx.pid'), 'workdir')};",
            f"error_log {_quote_path(str(work / 'error.log'), 'workdir')} warn;",
            "events { worker_connections 512; }",
            "http {",
        ]
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            # The compiled-in defaults are under /var/lib/nginx, which may not exist / be ours.
            temp = _quote_path(str(work / f"{kind}_temp"), "workdir")
            lines.append(f"    {kind}_temp_path {temp};")
        fields = ",".join(f'"{name}":"{var}"' for name, var in _LOG_FIELDS)
        return [
            *lines,
            "    types { }",
            "    default_type application/octet-stream;",
            "    sendfile on;",
            "    tcp_nopush on;",
            "    etag on;",
            "    server_tokens off;",
            "    keepalive_timeout 65s;",
            '    geo $xtask_dollar { default "$"; }',
            '    map $http_authorization $xtask_authorization { default "set"; "" ""; }',
            f"    log_format xtask_json escape=json '{{{fields}}}';",
            f"    access_log {_quote_path(str(work / 'access.log'), 'workdir')} xtask_json;",
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> NginxServer:
        """Write the config, launch nginx in the foreground and wait until it serves our port."""
        if self._proc is not None:
            raise RuntimeError("NginxServer already started")
        binary = nginx_available()
        if binary is None:
            raise RuntimeError("nginx binary not found (looked on PATH and in /usr/sbin)")
        if not self.root.is_dir():
            raise FileNotFoundError(f"document root {self.root} is not a directory")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_on_free_port(
            binary, f"nginx did not start (conf {self.conf_path}); output and error.log tail:\n"
        )
        return self

    def _spawn(self, binary: str, port: int) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        self.conf_path.write_text(self.render_config(port), encoding="utf-8")
        for stale in (self.pid_path, self.error_log_path, self.stderr_path):
            stale.unlink(missing_ok=True)
        return spawn(
            [
                binary,
                "-c",
                str(self.conf_path.resolve()),
                "-p",
                str(self.workdir.resolve()) + "/",
                "-g",
                "daemon off;",
            ],
            self.stderr_path,
        )

    def _ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        """True once nginx has bound ``port``: pid file holds its pid and the port answers.

        The pid-file check matters: a connect alone could reach some other process that grabbed
        the port between ``free_port`` and nginx's bind.
        """

        def pid_file_is_ours() -> bool:
            try:
                return self.pid_path.read_text().strip() == str(proc.pid)
            except OSError:
                return False

        return wait_for_port(proc, port, pid_file_is_ours, _START_TIMEOUT_S)

    def _failure_output(self) -> str:
        return tail(self.stderr_path) + tail(self.error_log_path)

    # -- observation ---------------------------------------------------------------------------

    def access_log(self, min_entries: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Parse the JSON access log into dicts (numbers converted, see ``_LOG_FIELDS``).

        nginx writes the log line after the response has been sent, so a client can see the
        response before the entry exists; ``min_entries`` waits (up to ``timeout``) for at least
        that many entries instead of making every test sleep.
        """
        deadline = time.monotonic() + timeout
        while True:
            entries = self._read_access_log()
            if len(entries) >= min_entries or time.monotonic() >= deadline:
                return entries
            time.sleep(0.02)

    def _read_access_log(self) -> list[dict[str, Any]]:
        try:
            text = self.access_log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries: list[dict[str, Any]] = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a line still being written
            raw: dict[str, Any] = json.loads(line)
            for key in _INT_FIELDS & raw.keys():
                with contextlib.suppress(ValueError):
                    raw[key] = int(raw[key])
            for key in _FLOAT_FIELDS & raw.keys():
                with contextlib.suppress(ValueError):
                    raw[key] = float(raw[key])
            entries.append(raw)
        return entries
