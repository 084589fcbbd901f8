"""Which URLs, repository ids and revisions can be fetched, and how a URL is shown.

A bad `--base-url`, `--id` or `--rev` is the user's to fix (exit 2), found before the
first request; a URL goes into a message only through `redact` (no credentials, no
signed query, printable and bounded: a redirect's `Location` is the server's text).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from urllib.parse import urlsplit

from bitnet_xtask.errors import UsageError
from bitnet_xtask.redact import redact_url
from bitnet_xtask.untrusted import URL_LIMIT, printable

DEFAULT_BASE_URL = "https://huggingface.co"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# git check-ref-format's forbidden characters (plus whitespace and controls); Hugging Face
# revisions are git refs (`main`, `v1.0`, `refs/pr/1`) or commit ids.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def default_base_url() -> str:
    """`HF_ENDPOINT` when set (as huggingface_hub honours it), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_BASE_URL


def redact(url: str) -> str:
    """A URL fit for a message: no userinfo, no signed query, printable and bounded (a
    redirect's `Location` is the server's text)."""
    return printable(redact_url(url), URL_LIMIT)


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
