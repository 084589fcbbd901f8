"""Talking to Hugging Face (or a mirror): URLs, the token, redirects, error mapping.

Redirects are followed by hand, not by requests, because each hop is a security
decision: the token goes only to the `--base-url` origin (never to the CDN a resolve
redirects to), an https -> http downgrade is refused, and the hub's `X-Repo-Commit` /
`X-Linked-*` headers live on the redirect itself, not on the CDN's answer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

import requests

from bitnet_xtask import __version__
from bitnet_xtask.errors import AuthError, NetworkError, NotFoundError, UsageError

from .retry import TransientError, parse_retry_after

DEFAULT_BASE_URL = "https://huggingface.co"
MAX_REDIRECTS = 10
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def default_base_url() -> str:
    """`HF_ENDPOINT` when set (as huggingface_hub honours it), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_BASE_URL


def strip_quotes(etag: str | None) -> str | None:
    """`W/"abc"` -> `abc`: the comparable value of an entity tag."""
    if etag is None:
        return None
    value = etag.strip()
    value = value.removeprefix("W/")
    return value.strip('"') or None


def is_strong(etag: str | None) -> bool:
    """Only a strong ETag may guard a byte-range resume (RFC 9110 If-Range)."""
    return bool(etag) and not etag.strip().startswith("W/")  # type: ignore[union-attr]


def as_sha256(value: str | None) -> str | None:
    """The sha256 hex in an ETag, if it is one (Hugging Face's LFS ETags are)."""
    bare = strip_quotes(value)
    return bare.lower() if bare and _SHA256.match(bare.lower()) else None


def redact(url: str) -> str:
    """A URL fit for logs: signed CDN URLs carry credentials in their query."""
    parts = urlsplit(url)
    return parts._replace(query="…" if parts.query else "", fragment="").geturl()


def validate_repo_id(repo_id: str) -> str:
    """`org/name` (or `name`), in the characters Hugging Face allows."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise UsageError(
            f"invalid repository id {repo_id!r}", "use the form org/name, e.g. microsoft/bitnet"
        )
    return repo_id


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default_port


@dataclass(frozen=True)
class RemoteFile:
    """What the server says about one file, gathered over the redirect chain."""

    url: str
    location: str
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
        """Summarise the answer as a `RemoteFile`."""
        headers = self.raw.headers
        size: int | None = None
        if linked := self.hub_headers.get("x-linked-size"):
            size = int(linked)
        elif self.raw.status_code == 206 and (
            span := parse_content_range(headers.get("content-range"))
        ):
            size = span.total
        elif self.raw.status_code == 200 and headers.get("content-length"):
            size = int(headers["content-length"])
        return RemoteFile(
            url=url,
            location=self.raw.url,
            size=size,
            etag=headers.get("etag"),
            linked_etag=self.hub_headers.get("x-linked-etag"),
            commit=self.hub_headers.get("x-repo-commit") or headers.get("x-repo-commit"),
            last_modified=headers.get("last-modified"),
            accept_ranges=headers.get("accept-ranges", "").lower() == "bytes"
            or self.raw.status_code == 206,
        )


@dataclass(frozen=True)
class ContentRange:
    """A 206's `Content-Range: bytes first-last/total` (total None for `*`)."""

    first: int
    last: int
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    """The byte range a 206 says it carries; None when the header is missing or malformed."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match:
        return None
    first, last, total = match.groups()
    return ContentRange(int(first), int(last), None if total == "*" else int(total))


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
    ) -> None:
        scheme = urlsplit(base_url).scheme
        if scheme not in ("http", "https") or not urlsplit(base_url).hostname:
            raise UsageError(f"invalid --base-url {base_url!r}", "use e.g. https://huggingface.co")
        self.base_url = base_url.rstrip("/")
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
        session = requests.Session()
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
        for _ in range(MAX_REDIRECTS + 1):
            on_hub = _origin(url) == base_origin
            send = dict(headers or {})
            if self._token and on_hub:
                send["Authorization"] = f"Bearer {self._token}"
            try:
                raw = session.request(
                    method,
                    url,
                    headers=send,
                    stream=stream,
                    allow_redirects=False,
                    timeout=self._timeout,
                )
            except requests.exceptions.InvalidURL as exc:
                raise UsageError(f"invalid URL {redact(url)}: {exc}") from None
            except requests.exceptions.ProxyError as exc:
                raise TransientError(f"proxy error: {_reason(exc)}") from None
            except requests.RequestException as exc:
                raise TransientError(f"{_reason(exc)} ({redact(url)})") from None
            self._debug(
                f"{method} {redact(url)} {_describe_headers(send)}-> {raw.status_code}"
                f" {_describe_headers(raw.headers, _ANSWER_HEADERS)}"
            )
            if on_hub:
                for name in ("x-repo-commit", "x-linked-etag", "x-linked-size"):
                    if name in raw.headers:
                        hub_headers[name] = raw.headers[name]
            if raw.is_redirect or raw.status_code in (301, 302, 303, 307, 308):
                location = raw.headers.get("location")
                raw.close()
                if not location:
                    raise NetworkError(f"redirect without Location from {redact(url)}")
                target = urljoin(url, location)
                if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                    raise NetworkError(
                        f"refusing redirect from https to {urlsplit(target).scheme}: "
                        f"{redact(target)}",
                        "the server tried to downgrade the connection; use a trusted mirror",
                    )
                url = target
                continue
            response = Response(raw=raw, hub_headers=hub_headers, from_hub=on_hub)
            self._raise_for_status(response, url)
            return response
        raise NetworkError(f"more than {MAX_REDIRECTS} redirects for {redact(url)}")

    def _raise_for_status(self, response: Response, url: str) -> None:
        raw = response.raw
        status = raw.status_code
        if status < 400 or status == 416:
            return
        code = raw.headers.get("x-error-code", "")
        server_message = raw.headers.get("x-error-message", "")
        raw.close()
        where = redact(url)
        if status == 429:
            raise TransientError(
                f"429 Too Many Requests from {where}",
                retry_after=parse_retry_after(raw.headers.get("retry-after")),
                rate_limited=True,
            )
        if status >= 500 or status == 408:
            raise TransientError(
                f"{status} {raw.reason} from {where}",
                retry_after=parse_retry_after(raw.headers.get("retry-after")),
            )
        if status in (401, 403) and not response.from_hub:
            # A CDN 403 is an expired signed URL: resolving again fixes it.
            raise TransientError(f"{status} from the CDN ({where}): signed URL expired?")
        if status in (401, 403):
            if code == "RepoNotFound":
                raise AuthError(
                    f"repository not found or private ({status}): {where}",
                    "check --id; for a private repository set HF_TOKEN",
                )
            gated = code == "GatedRepo" or "gated" in server_message.lower()
            hint = (
                "this repository is gated: accept its terms on the model page, "
                "then set HF_TOKEN to a token of that account"
                if gated
                else "set HF_TOKEN (or run `hf auth login`) with a token that can read this repo"
            )
            if self._token:
                hint = "the token in HF_TOKEN was rejected or lacks access; " + hint
            raise AuthError(f"{status} {raw.reason}: not allowed to read {where}", hint)
        if status == 404:
            what = {
                "RepoNotFound": ("repository", "check --id (org/name)"),
                "RevisionNotFound": ("revision", "check --rev (branch, tag or commit)"),
                "EntryNotFound": ("file", "check --file (path inside the repository)"),
            }.get(code, ("file", "check --id, --rev and --file"))
            raise NotFoundError(f"404: {what[0]} not found: {where}", what[1])
        raise NetworkError(f"{status} {raw.reason} from {where}")

    def probe(self, session: requests.Session, url: str) -> RemoteFile:
        """Learn size and validators without downloading: HEAD, else a 1-byte range GET."""
        response = self.request(session, "HEAD", url)
        if response.raw.status_code in (405, 501) or (
            response.raw.status_code == 200
            and "content-length" not in response.raw.headers
            and "x-linked-size" not in response.hub_headers
        ):
            response = self.request(session, "GET", url, {"Range": "bytes=0-0"}, stream=True)
            response.raw.close()
        return response.remote(url)


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
    """The headers that explain a download decision; never Authorization."""
    lowered = {k.lower(): v for k, v in headers.items()}
    shown = [
        f"{name}={redact(lowered[name]) if name == 'location' else lowered[name]}"
        for name in names
        if name in lowered
    ]
    return f"[{' '.join(shown)}] " if shown else ""


def _reason(exc: requests.RequestException) -> str:
    """A short, token-free description of a requests failure."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no data from the server (stalled)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed or dropped"
    return type(exc).__name__
