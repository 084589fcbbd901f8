"""Text we did not write, made fit for a message: printable, bounded, credential-free.

A server chooses its reason phrase (`HTTP/1.1 500 <anything>`), every header value and
every redirect `Location`; a file planted next to a download chooses what its sidecars
say. Put into a message as it is, such text reaches the user's terminal: escape codes
that retitle the window, clear the screen or hide the rest of the line, and up to 64 KiB
per header or status line (http.client's `_MAXLINE`) of noise. `printable` is the one rule
for all of it, applied where that text enters a message.
"""

from __future__ import annotations

from bitnet_xtask.redact import redact_text

#: Enough for any honest reason phrase, header value or error text.
TEXT_LIMIT = 200
#: Enough for any honest URL (Hugging Face's resolve URLs are a few hundred characters;
#: the signed query of a CDN URL is never shown).
URL_LIMIT = 1024
ELLIPSIS = "…"


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` as one line a terminal shows as it is: credentials masked (`redact_text`,
    before anything is cut, so a cut never leaves half a password unmasked), every
    character that is not printable escaped as `\\xNN` / `\\uNNNN` (C0 and C1 controls,
    ESC, DEL, newlines, bidirectional overrides, zero-width characters: whatever
    `str.isprintable` refuses), and at most `limit` characters, then an ellipsis if it was cut.
    """
    masked = redact_text(text)
    out: list[str] = []
    length = 0
    for char in masked[: limit + 1]:  # each character gives at least one
        piece = char if char.isprintable() else _escape(char)
        if length + len(piece) > limit:
            out.append(ELLIPSIS)
            break
        out.append(piece)
        length += len(piece)
    return "".join(out)
