"""What a server's headers mean, checked before anything uses them.

A size is a decimal integer of at most 2^50 bytes, a `Content-Range` a byte range of such
a file; anything else is the server's fault: a protocol error (exit 14, never retried, no
traceback). An ETag is compared without its quotes and weakness prefix, and names the
content by its sha256 when it is one (Hugging Face's LFS ETags are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bitnet_xtask.errors import NetworkError
from bitnet_xtask.untrusted import printable

#: The largest file size believed from a server: 1 PiB, 10^4 times today's largest GGUFs,
#: and small enough that nothing sized by it (the chunk map, the disk check) can explode.
MAX_FILE_SIZE = 1 << 50
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# ASCII digits only (int() also takes "+5", " 5", "1_000" and other scripts' digits), at
# most 16 of them: 2^50 has 16, and int() of a 5,000-digit string raises ValueError.
_SIZE = re.compile(r"^[0-9]{1,16}$")
_CONTENT_RANGE = re.compile(r"^bytes ([0-9]{1,16})-([0-9]{1,16})/([0-9]{1,16}|\*)$")
BROKEN_SERVER = (
    "the server or mirror is broken; report it to its operator, or use another --base-url"
)


def strip_quotes(etag: str | None) -> str | None:
    """`W/"abc"` -> `abc`: the comparable value of an entity tag."""
    if etag is None:
        return None
    value = etag.strip()
    value = value.removeprefix("W/")
    return value.strip('"') or None


def is_strong(etag: str | None) -> bool:
    """Only a strong ETag may guard a byte-range resume (RFC 9110 If-Range)."""
    return bool(etag) and not (etag or "").strip().startswith("W/")


def as_sha256(value: str | None) -> str | None:
    """The sha256 hex in an ETag, if it is one (Hugging Face's LFS ETags are)."""
    bare = strip_quotes(value)
    return bare.lower() if bare and _SHA256.match(bare.lower()) else None


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
