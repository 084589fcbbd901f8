"""Talking to Hugging Face (or a mirror): the client, the token, redirects.

Redirects are followed by hand, not by requests, because each hop is a security
decision: the token goes only to the `--base-url` origin (never to the CDN a resolve
redirects to), an https -> http downgrade is refused, and the hub's `X-Repo-Commit` /
`X-Linked-*` headers live on the redirect itself, not on the CDN's answer.

Nothing a server sends is trusted before it is checked (`headers`: sizes, ranges; here: a
redirect target is an http(s) URL with a host and a valid port); what a failed request
or an error status means is `failures`'. What a server says goes into a message only
through `printable` (its reason phrase, header values, a redirect's `Location`, which
`redact` also passes through): escaped and bounded, never raw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3.exceptions

from bitnet_xtask import __version__
from bitnet_xtask.errors import NetworkError
from bitnet_xtask.untrusted import printable

from .failures import raise_for_status, request_failure
from .headers import (
    BROKEN_SERVER,
    MAX_FILE_SIZE,
    as_sha256,
    is_strong,
    parse_content_range,
    parse_size,
    strip_quotes,
)
from .urls import default_base_url, redact, url_problem, validate_base_url

__all__ = [  # and, for the modules and tests that import them from here, their old home:
    "MAX_FILE_SIZE",
    "HubClient",
    "RemoteFile",
    "Response",
    "as_sha256",
    "default_base_url",
    "is_strong",
    "redact",
    "strip_quotes",
]

MAX_REDIRECTS = 10
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _header_text(value: str | None) -> str | None:
    """A header value that is shown as it is stored (the commit in the plan and the `done`
    event): printable and bounded from the start."""
    return None if value is None else printable(value)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default_port


@dataclass(frozen=True)
class RemoteFile:
    """What the server says about one file, gathered over the redirect chain."""

    size: int | None
    etag: str | None
    linked_etag: str | None
    commit: str | None
    last_modified: str | None
    accept_ranges: bool

    @property
    def identity(self) -> str | None:
        """The version tag that names the content (the hub's linked ETag when there is one)."""
        return strip_quotes(self.linked_etag or self.etag)

    @property
    def sha256(self) -> str | None:
        """The content hash the hub advertises, when its ETag is a sha256 (LFS files)."""
        return as_sha256(self.linked_etag) or as_sha256(self.etag)


@dataclass
class Response:
    """A final (non-redirect) answer plus the hub's headers seen on the way."""

    raw: requests.Response
    hub_headers: dict[str, str] = field(default_factory=dict)
    from_hub: bool = True

    def remote(self, url: str) -> RemoteFile:
        """Summarise the answer as a `RemoteFile`; sizes are checked (`parse_size`)."""
        headers = self.raw.headers
        where = redact(url)
        size: int | None = None
        if (linked := self.hub_headers.get("x-linked-size")) is not None:
            size = parse_size(linked, "X-Linked-Size", where)
        elif self.raw.status_code == 206 and (value := headers.get("content-range")):
            if (span := parse_content_range(value)) is None:
                # Unchecked, the size would be unknown: no space check, no bound on the body.
                raise NetworkError(
                    f"protocol error: Content-Range '{printable(value, 60)}' from {where} is "
                    "not a byte range of a file of at most 2^50 bytes",
                    BROKEN_SERVER,
                )
            size = span.total
        elif self.raw.status_code == 200 and headers.get("content-length") is not None:
            size = parse_size(headers["content-length"], "Content-Length", where)
        remote = RemoteFile(
            size=size,
            etag=headers.get("etag"),
            linked_etag=self.hub_headers.get("x-linked-etag"),
            commit=_header_text(
                self.hub_headers.get("x-repo-commit") or headers.get("x-repo-commit")
            ),
            last_modified=headers.get("last-modified"),
            accept_ranges=headers.get("accept-ranges", "").lower() == "bytes"
            or self.raw.status_code == 206,
        )
        if remote.size == 0 and remote.sha256 not in (None, _EMPTY_SHA256):
            # An empty file is fine (Content-Length: 0); an empty file whose advertised
            # sha256 is some other content's is a contradiction, not a hash mismatch.
            raise NetworkError(
                f"protocol error: {where} says the file is 0 bytes but advertises the sha256 "
                f"{remote.sha256} of other content",
                BROKEN_SERVER,
            )
        return remote


class _Session(requests.Session):
    """A session that never parses a redirect itself.

    Even with `allow_redirects=False`, `Session.send` runs `resolve_redirects` to offer
    `Response.next`, and a malformed `Location` (`http://[::1`) raised ValueError from
    inside requests before we could look at it. Redirects are followed by hand
    (`HubClient.request`), where every target is checked first.
    """

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter(())


class HubClient:
    """HTTP for one base URL: sessions, auth scoping, redirects and status mapping."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        connect_timeout: float = 1800.0,
        stall_timeout: float = 60.0,
        debug: Callable[[str], None] | None = None,
        source: str = "--base-url",
    ) -> None:
        self.base_url = validate_base_url(base_url, source)
        self._token = token
        self._timeout = (connect_timeout, stall_timeout)
        self._debug = debug or (lambda _message: None)

    def file_url(self, repo_id: str, revision: str, path: str) -> str:
        """`{base}/{id}/resolve/{rev}/{file}`, the Hugging Face resolve endpoint."""
        return (
            f"{self.base_url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path, safe='/')}"
        )

    def new_session(self) -> requests.Session:
        """One connection pool per stream; proxies come from the environment."""
        session = _Session()
        session.trust_env = True
        session.headers.update(
            {"User-Agent": f"bitnet-xtask/{__version__}", "Accept-Encoding": "identity"}
        )
        return session

    def request(
        self,
        session: requests.Session,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        stream: bool = False,
    ) -> Response:
        """Send, following redirects by our rules; map failures to our errors."""
        hub_headers: dict[str, str] = {}
        base_origin = _origin(self.base_url)
        redirected_from: str | None = None
        for _ in range(MAX_REDIRECTS + 1):
            on_hub = _origin(url) == base_origin
            send = dict(headers or {})
            if self._token and on_hub:
                send["Authorization"] = f"Bearer {self._token}"
            raw = self._send(session, method, url, send, stream=stream, via=redirected_from)
            if on_hub:
                hub_headers.update((n, raw.headers[n]) for n in _HUB_HEADERS if n in raw.headers)
            if raw.is_redirect or raw.status_code in _REDIRECT_STATUSES:
                redirected_from, url = url, _redirect_target(url, raw)
                continue
            response = Response(raw=raw, hub_headers=hub_headers, from_hub=on_hub)
            raise_for_status(raw, url, from_hub=on_hub, with_token=bool(self._token))
            return response
        raise NetworkError(f"more than {MAX_REDIRECTS} redirects for {redact(url)}")

    def _send(
        self,
        session: requests.Session,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        stream: bool,
        via: str | None,
    ) -> requests.Response:
        """One hop, never following its redirect; `via` is the URL that redirected here."""
        try:
            raw = session.request(
                method,
                url,
                headers=headers,
                stream=stream,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except (requests.RequestException, urllib3.exceptions.LocationValueError) as exc:
            raise request_failure(exc, url, via) from None
        self._debug(
            f"{method} {redact(url)} {_describe_headers(headers)}-> {raw.status_code}"
            f" {_describe_headers(raw.headers, _ANSWER_HEADERS)}"
        )
        return raw

    def probe(self, session: requests.Session, url: str) -> RemoteFile:
        """Learn size and validators without downloading: HEAD, and a 1-byte range GET when
        the HEAD gave no size. (A HEAD refused with 405 or 501 is an error of `request`,
        like any other status, before a fallback could see it: none is attempted.)"""
        response = self.request(session, "HEAD", url)
        if (
            response.raw.status_code == 200
            and "content-length" not in response.raw.headers
            and "x-linked-size" not in response.hub_headers
        ):
            response = self.request(session, "GET", url, {"Range": "bytes=0-0"}, stream=True)
            response.raw.close()
        return response.remote(url)


_HUB_HEADERS = ("x-repo-commit", "x-linked-etag", "x-linked-size")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def _redirect_target(url: str, raw: requests.Response) -> str:
    """Where a redirect from `url` leads, checked before it is followed: an http(s) URL
    with a host and a valid port, and never from https down to http."""
    location = raw.headers.get("location")
    raw.close()
    if not location:
        raise NetworkError(f"redirect without Location from {redact(url)}")
    try:
        target = urljoin(url, location)
    except ValueError:  # `http://[::1`: urljoin parses it, and fails
        target = location
    if problem := url_problem(target):
        raise NetworkError(
            f"protocol error: {redact(url)} redirected to '{redact(target)}', "
            f"which can't be followed: {problem}",
            "the server (or a proxy in between) sent a bad Location; "
            "report it to its operator, or use another --base-url",
        )
    if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
        raise NetworkError(
            f"refusing redirect from https to {urlsplit(target).scheme}: {redact(target)}",
            "the server tried to downgrade the connection; use a trusted mirror",
        )
    return target


_REQUEST_HEADERS = ("range", "if-range", "if-none-match", "if-modified-since")
_ANSWER_HEADERS = (
    "content-length",
    "content-range",
    "etag",
    "location",
    "retry-after",
    "x-error-code",
    "x-linked-etag",
    "x-linked-size",
    "x-repo-commit",
)


def _describe_headers(headers: Mapping[str, str], names: tuple[str, ...] = _REQUEST_HEADERS) -> str:
    """The headers that explain a download decision; never Authorization. Their values
    are a server's (or a sidecar's) text: shown only through `printable`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    shown = [
        f"{name}={redact(lowered[name]) if name == 'location' else printable(lowered[name])}"
        for name in names
        if name in lowered
    ]
    return f"[{' '.join(shown)}] " if shown else ""
