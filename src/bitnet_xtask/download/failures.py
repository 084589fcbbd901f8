"""What a failed request means: which failures a later attempt can fix (retried, as
`TransientError`), which fail the same way every time (final, with a message that says
what happened and what to do), in one place for every request the downloader makes.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from bitnet_xtask.errors import AuthError, NetworkError, NotFoundError, UsageError, XtaskError
from bitnet_xtask.untrusted import printable

from .retry import TransientError, parse_retry_after
from .urls import redact

_E = TypeVar("_E", bound=BaseException)


def raise_for_status(raw: requests.Response, url: str, *, from_hub: bool, with_token: bool) -> None:
    """An error status as the error it means: 429, 5xx and 408 (and a CDN's 401/403, an
    expired signed URL) are transient; the hub's 401/403 are auth errors, its 404s name
    what is missing from `X-Error-Code`; anything else is final."""
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
    if status in (401, 403) and not from_hub:
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
        if with_token:
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


def request_failure(
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
    hop = _Hop(url, redirected_from)
    if isinstance(exc, _UNFETCHABLE):
        return hop.unfetchable(printable(str(exc)))  # requests quotes the URL a redirect chose
    if isinstance(exc, requests.exceptions.ProxyError):
        return TransientError(f"proxy error: {_reason(exc)}")
    if (lookup := _cause(exc, socket.gaierror)) is not None:
        return hop.unresolved(lookup)
    if (untrusted := _cause(exc, ssl.SSLCertVerificationError)) is not None:
        return NetworkError(
            f"TLS certificate of {hop.host} not trusted ({untrusted.verify_message}): "
            f"{hop.where}{hop.via}",
            "for a mirror with a private CA, set REQUESTS_CA_BUNDLE to its certificate file",
        )
    if isinstance(exc, _DROPPED):
        return TransientError(f"{_reason(exc)} ({hop.where})")
    # InvalidHeader, TooManyRedirects, ...: the same request fails the same way again.
    return NetworkError(f"{type(exc).__name__} for {hop.where}{hop.via}")


_UNFETCHABLE = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    urllib3.exceptions.LocationValueError,
)
_DROPPED = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass(frozen=True)
class _Hop:
    """The request that failed, in the words of its messages."""

    url: str
    redirected_from: str | None

    @property
    def where(self) -> str:
        return redact(self.url)

    @property
    def via(self) -> str:
        return f" (redirected from {redact(self.redirected_from)})" if self.redirected_from else ""

    @property
    def host(self) -> str:
        return printable(urlsplit(self.url).hostname or "?", 100)

    @property
    def fix(self) -> str:
        if self.redirected_from:
            return (
                "the server redirected to it; report it to the server's operator, "
                "or use another --base-url"
            )
        return "check --base-url (or $HF_ENDPOINT), and the name and DNS settings of that host"

    def unfetchable(self, said: str) -> XtaskError:
        """A URL requests refuses: the user's (exit 2), or the redirecting server's."""
        if self.redirected_from:
            return NetworkError(
                f"protocol error: can't fetch {self.where}{self.via}: {said}", self.fix
            )
        return UsageError(f"invalid URL {self.where}: {said}")

    def unresolved(self, lookup: socket.gaierror) -> XtaskError | TransientError:
        """A name that does not exist is final; a temporary DNS failure is retried."""
        if lookup.errno in _FINAL_LOOKUP_ERRORS:
            return NetworkError(
                f"host name '{self.host}' does not resolve ({lookup.strerror}): "
                f"{self.where}{self.via}",
                self.fix,
            )
        return TransientError(f"temporary failure resolving '{self.host}' ({self.where})")


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
