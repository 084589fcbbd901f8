"""Talking to Hugging Face (or a mirror): URLs, the token, redirects, error mapping.

Redirects are followed by hand, not by requests, because each hop is a security
decision: the token goes only to the `--base-url` origin (never to the CDN a resolve
redirects to), an https -> http downgrade is refused, and the hub's `X-Repo-Commit` /
`X-Linked-*` headers live on the redirect itself, not on the CDN's answer.

Nothing a server sends is trusted before it is checked: a size is a decimal integer of at
most 2^50 bytes, a redirect target an http(s) URL with a host and a valid port. A server
that breaks these rules is a protocol error (exit 14, never retried, no traceback); a bad
`--base-url` or `--rev` is the user's to fix (exit 2). What a server says goes into a
message only through `printable` (its reason phrase, header values, a redirect's
`Location`, which `redact` also passes through): escaped and bounded, never raw.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3.exceptions

from bitnet_xtask import __version__
from bitnet_xtask.errors import AuthError, NetworkError, NotFoundError, UsageError, XtaskError
from bitnet_xtask.redact import redact_url

from .retry import TransientError, parse_retry_after
from .untrusted import URL_LIMIT, printable

DEFAULT_BASE_URL = "https://huggingface.co"
MAX_REDIRECTS = 10
#: The largest file size believed from a server: 1 PiB, 10^4 times today's largest GGUFs,
#: and small enough that nothing sized by it (the chunk map, the disk check) can explode.
MAX_FILE_SIZE = 1 << 50
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# ASCII digits only (int() also takes "+5", " 5", "1_000" and other scripts' digits), at
# most 16 of them: 2^50 has 16, and int() of a 5,000-digit string raises ValueError.
_SIZE = re.compile(r"^[0-9]{1,16}$")
_CONTENT_RANGE = re.compile(r"^bytes ([0-9]{1,16})-([0-9]{1,16})/([0-9]{1,16}|\*)$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# git check-ref-format's forbidden characters (plus whitespace and controls); Hugging Face
# revisions are git refs (`main`, `v1.0`, `refs/pr/1`) or commit ids.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_E = TypeVar("_E", bound=BaseException)
BROKEN_SERVER = (
    "the server or mirror is broken; report it to its operator, or use another --base-url"
)


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
    """A URL fit for a message: no userinfo, no signed query, printable and bounded (a
    redirect's `Location` is the server's text)."""
    return printable(redact_url(url), URL_LIMIT)


def parse_size(value: str, what: str, where: str) -> int:
    """A size header (`X-Linked-Size`, `Content-Length`) as a number of bytes, 0 to 2^50.

    Anything else is the server's fault (exit 14): `abc` was a traceback, `-5` or `0` for
    an LFS file a "SHA-256 mismatch of the empty file", and `10^20` a chunk map that grew
    until the kernel killed the process.
    """
    text = value.strip()
    if not _SIZE.match(text) or int(text) > MAX_FILE_SIZE:
        raise NetworkError(
            f"protocol error: {what} '{printable(value, 40)}' from {where} is not a size in bytes "
            f"(a whole number from 0 to 2^50)",
            BROKEN_SERVER,
        )
    return int(text)


def url_problem(url: str) -> str | None:
    """Why `url` can't be fetched (None if it can): http or https, a host, a port 1-65535.

    `urlsplit` only complains about a bad IPv6 literal; the port is checked when read, so
    `http://h:99999` and `http://h:abc` raised ValueError deep inside a request.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # its text quotes the URL: `Port could not be cast ... 'abc'`
        return printable(str(exc))
    if parts.scheme not in ("http", "https"):
        return (
            f"unsupported scheme '{printable(parts.scheme, 40)}' (only http and https are fetched)"
        )
    host = parts.hostname
    if not host:
        return "no host name"
    if not _host_ok(host, bracketed="[" in parts.netloc):
        return f"invalid host name '{printable(host, 100)}'"
    if port == 0:
        return "port 0"
    return None


def _host_ok(host: str, *, bracketed: bool) -> bool:
    """A DNS name or an IP literal. Spaces and control characters got as far as
    http.client, which failed an assert on them; an empty or 64-character label raised
    urllib3's LocationParseError, which requests does not wrap. The IDNA codec is the
    check urllib3 makes (labels of 1 to 63 characters; IDN letters are fine)."""
    if bracketed:
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(host.split("%", 1)[0]).version == 6
        return False
    if not all(c.isalnum() or c in "-._~" for c in host):
        return False
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def validate_base_url(base_url: str, source: str = "--base-url") -> str:
    """A hub or mirror URL the resolve path can be appended to (exit 2 otherwise)."""
    problem = url_problem(base_url)
    if problem is None and ("?" in base_url or "#" in base_url):
        problem = "a query or fragment would swallow the resolve path"
    if problem:
        raise UsageError(
            f"invalid {source} '{redact(base_url)}': {problem}",
            "use e.g. https://huggingface.co or http://127.0.0.1:8080 (a port from 1 to 65535)",
        )
    return base_url.rstrip("/")


def validate_revision(revision: str) -> str:
    """A branch, tag or commit, by git's ref-name rules (`git check-ref-format`).

    `--rev ''` became `/resolve//file`, a 404 that told the user to check `--id`. `/` is
    allowed (`refs/pr/1` is a Hugging Face revision) and is percent-encoded in the URL.
    """
    parts = revision.split("/")
    bad = (
        not revision
        or _REF_FORBIDDEN.search(revision)
        or ".." in revision
        or "@{" in revision
        or revision == "@"
        or revision.endswith(".")
        or any(not p or p.startswith(".") or p.endswith(".lock") for p in parts)
    )
    if bad:
        raise UsageError(
            f"invalid --rev {revision!r}",
            "give a branch, tag or commit of the repository, e.g. main, v1.0 or a commit id",
        )
    return revision


def validate_repo_id(repo_id: str) -> str:
    """`org/name` (or `name`), in the characters Hugging Face allows."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise UsageError(
            f"invalid repository id {repo_id!r}", "use the form org/name, e.g. microsoft/bitnet"
        )
    return repo_id


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
            url=url,
            location=self.raw.url,
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
    first, last = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if first > last or (total is not None and (last >= total or total > MAX_FILE_SIZE)):
        return None
    return ContentRange(first, last, total)


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
            try:
                raw = session.request(
                    method,
                    url,
                    headers=send,
                    stream=stream,
                    allow_redirects=False,
                    timeout=self._timeout,
                )
            except (requests.RequestException, urllib3.exceptions.LocationValueError) as exc:
                raise _failure(exc, url, redirected_from) from None
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
                        f"refusing redirect from https to {urlsplit(target).scheme}: "
                        f"{redact(target)}",
                        "the server tried to downgrade the connection; use a trusted mirror",
                    )
                redirected_from, url = url, target
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
        server_message = raw.headers.get("x-error-message", "")  # matched, never shown
        raw.close()
        where = redact(url)
        reason = printable(raw.reason or "")  # `HTTP/1.1 500 <anything, up to 64 KiB>`
        if status == 429:
            raise TransientError(
                f"429 Too Many Requests from {where}",
                retry_after=parse_retry_after(raw.headers.get("retry-after")),
                rate_limited=True,
            )
        if status >= 500 or status == 408:
            raise TransientError(
                f"{status} {reason} from {where}",
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
            raise AuthError(f"{status} {reason}: not allowed to read {where}", hint)
        if status == 404:
            what = {
                "RepoNotFound": ("repository", "check --id (org/name)"),
                "RevisionNotFound": ("revision", "check --rev (branch, tag or commit)"),
                "EntryNotFound": ("file", "check --file (path inside the repository)"),
            }.get(code, ("file", "check --id, --rev and --file"))
            raise NotFoundError(f"404: {what[0]} not found: {where}", what[1])
        raise NetworkError(f"{status} {reason} from {where}")

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
    """The headers that explain a download decision; never Authorization. Their values
    are a server's (or a sidecar's) text: shown only through `printable`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    shown = [
        f"{name}={redact(lowered[name]) if name == 'location' else printable(lowered[name])}"
        for name in names
        if name in lowered
    ]
    return f"[{' '.join(shown)}] " if shown else ""


def _failure(
    exc: requests.RequestException | urllib3.exceptions.LocationValueError,
    url: str,
    redirected_from: str | None,
) -> XtaskError | TransientError:
    """What a failed request means: retry only what a later attempt can fix.

    A host name that does not exist, an untrusted certificate or a URL requests refuses
    will fail the same way every time, so they are final errors that say what happened
    (a name that did not resolve used to be "connection failed or dropped", retried; a
    redirect to `file://` an "InvalidSchema", retried).
    """
    where = redact(url)
    via = f" (redirected from {redact(redirected_from)})" if redirected_from else ""
    fix = (
        "the server redirected to it; report it to the server's operator, or use another --base-url"
        if redirected_from
        else "check --base-url (or $HF_ENDPOINT), and the name and DNS settings of that host"
    )
    host = printable(urlsplit(url).hostname or "?", 100)
    said = printable(str(exc))  # requests quotes the URL, which a redirect chose
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.InvalidSchema
        | requests.exceptions.MissingSchema
        | urllib3.exceptions.LocationValueError,
    ):
        if redirected_from:
            return NetworkError(f"protocol error: can't fetch {where}{via}: {said}", fix)
        return UsageError(f"invalid URL {where}: {said}")
    if isinstance(exc, requests.exceptions.ProxyError):
        return TransientError(f"proxy error: {_reason(exc)}")
    if (lookup := _cause(exc, socket.gaierror)) is not None:
        if lookup.errno in _FINAL_LOOKUP_ERRORS:
            return NetworkError(
                f"host name '{host}' does not resolve ({lookup.strerror}): {where}{via}", fix
            )
        return TransientError(f"temporary failure resolving '{host}' ({where})")
    if (untrusted := _cause(exc, ssl.SSLCertVerificationError)) is not None:
        return NetworkError(
            f"TLS certificate of {host} not trusted ({untrusted.verify_message}): {where}{via}",
            "for a mirror with a private CA, set REQUESTS_CA_BUNDLE to its certificate file",
        )
    if isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return TransientError(f"{_reason(exc)} ({where})")
    # InvalidHeader, TooManyRedirects, ...: the same request fails the same way again.
    return NetworkError(f"{type(exc).__name__} for {where}{via}")


# EAI_NONAME "Name or service not known", EAI_NODATA "No address associated with
# hostname", EAI_FAIL "Non-recoverable failure": answers, not outages (EAI_AGAIN is one).
_FINAL_LOOKUP_ERRORS = frozenset(
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA", "EAI_FAIL")
    if hasattr(socket, name)
)


def _cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first `kind` in the chain of causes (requests wraps urllib3 wraps socket)."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None))
        todo += [e for e in (*linked, *current.args) if isinstance(e, BaseException)]
    return None


def _reason(exc: requests.RequestException) -> str:
    """A short, token-free description of a requests failure."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no data from the server (stalled)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed or dropped"
    return type(exc).__name__
