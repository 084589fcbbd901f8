"""Reading what a user points a command at: one regular file, bounded, decoded, parsed.

Every file a command reads on a user's behalf (a manifest, a receipt, a prompts or token
file, a profile) comes through here, so one rule holds for all of them: a FIFO, a device
or a directory is refused before it is read (`/dev/zero` would never end, a FIFO would
block forever), a file larger than its kind can sensibly be is refused before it is held
in memory, and text that is not UTF-8 or JSON that is malformed or nested too deep is a
usage error (exit 2) that names the file, never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bitnet_xtask import fs
from bitnet_xtask.errors import UsageError, XtaskError

MiB = 1 << 20
#: The largest text input a command accepts unless it says otherwise: manifests, prompt
#: and token files, profiles. A receipt names its own (larger) limit.
DEFAULT_LIMIT = 16 * MiB


def open_regular(path: Path, *, what: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file at `path` (a link to one is fine: the
    user chose it) and its fstat; the caller closes it. `fs.open_regular`'s rule, in
    words that name `what` the file was meant to be."""
    try:
        fd = fs.open_regular(path, follow_links=True)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except fs.NotRegularFileError as exc:
        raise UsageError(
            f"{what} {path} is not a regular file ({exc.kind})", "give the path of a file"
        ) from None
    except XtaskError as exc:
        raise UsageError(f"cannot open {what} {path}: {fs.os_reason(exc)}") from None
    try:
        return fd, os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_bytes(path: Path, *, what: str, limit: int = DEFAULT_LIMIT) -> bytes:
    """The bytes of the regular file at `path` (`open_regular`), at most `limit` of them."""
    fd, info = open_regular(path, what=what)
    try:
        if info.st_size > limit:
            raise UsageError(
                f"{what} {path} is {info.st_size:,} bytes, more than the {limit:,} accepted"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while we read it
        raise UsageError(f"{what} {path} is larger than the {limit:,} bytes accepted")
    return data


def read_text(path: Path, *, what: str, limit: int = DEFAULT_LIMIT) -> str:
    """`read_bytes`, decoded as UTF-8 (a BOM is tolerated)."""
    data = read_bytes(path, what=what, limit=limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1]
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {bad!r})") from None


def parse_json(text: str, *, what: str) -> Any:
    """JSON text, or a usage error naming `what`: malformed, or nested past Python's
    recursion limit (json raises RecursionError there, which is not a ValueError)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what} is JSON nested too deeply to read") from None


def read_json(path: Path, *, what: str, limit: int = DEFAULT_LIMIT) -> Any:
    """A bounded regular file, parsed as JSON."""
    return parse_json(read_text(path, what=what, limit=limit), what=f"{what} {path}")
