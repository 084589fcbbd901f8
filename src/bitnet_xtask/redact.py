"""Credentials never reach output: one rule masks them in URLs and in any message text.

A `--base-url` (or `$HF_ENDPOINT`) may carry `user:password@` (RFC 3986 userinfo, what
requests turns into Basic auth for a private mirror), and a signed CDN URL carries its
signature in the query. Messages are built from URLs in many places, so the same mask is
applied twice: `redact_url` where a URL is put into a message, and `redact_text` on every
line that leaves the process (every `XtaskError` message and hint, every reporter event
and line), so a path that forgot the first still cannot leak.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

# scheme "://" userinfo "@": the userinfo is everything up to the *last* "@" before the
# authority ends ("/", "?", "#" or whitespace), as urllib.parse splits it, so an
# unencoded "@" in a password (`http://u:p@ss@host`) is masked whole. A match starts only
# where a run of scheme characters starts (the lookbehind), so each run is scanned once:
# `\b[a-z][a-z0-9+.-]*` was tried again at every word start inside it, and 64 KiB of
# `a-a-a-` (a reason phrase a server chooses) took 45 s; it also missed `x_http://u:p@h`.
_USERINFO = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z0-9+.-]*://)[^\s/?#]*@")


def redact_text(text: str) -> str:
    """`... http://user:pw@host/x ...` -> `... http://***@host/x ...`, anywhere in `text`."""
    return _USERINFO.sub(rf"\g<1>{MASK}@", text)


def redact_url(url: str) -> str:
    """A URL fit for logs: no userinfo, no query (signed URLs), no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL (e.g. `http://[::1`) is still text to mask
        return redact_text(url.split("?", 1)[0].split("#", 1)[0])
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    return parts._replace(netloc=netloc, query="…" if parts.query else "", fragment="").geturl()


def without_userinfo(url: str) -> str:
    """The same URL minus `user:password@`: what may be written to disk (the resume state)."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
