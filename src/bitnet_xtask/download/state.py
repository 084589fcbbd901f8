"""The resume state of one download: `<file>.part.json`, the sidecar that lets a later run
continue `.part` safely, and refuse when it can't.

It only ever claims bytes that were fsynced before it was written, so a crash or power
cut can make us fetch a few MiB again, never trust bytes we lack; a checksum exposes a
torn write, and its shape is checked so that a forged one cannot splice ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bitnet_xtask.download.headers import as_sha256, is_strong
from bitnet_xtask.errors import NoSpaceError
from bitnet_xtask.fs import Note, atomic_write_text, open_regular, read_small_text

from .store import DOWNLOAD_NO_SPACE_HINT

STATE_VERSION = 1
#: The largest resume state we write: at most 4096 ranges (`transfer.MAX_PIECES`) of
#: about 100 bytes each, plus a few validators and the URL, is well under 1 MiB.
STATE_LIMIT = 1 << 20


@dataclass
class Chunk:
    """One byte range [start, end) of the file and how far it is safely written."""

    start: int
    end: int
    done: int

    @property
    def complete(self) -> bool:
        """All bytes of this range are on disk."""
        return self.done >= self.end


@dataclass
class ResumeState:
    """What a later run needs to continue `.part` safely, and to refuse when it can't."""

    url: str
    size: int | None
    etag: str | None
    linked_etag: str | None
    commit: str | None
    last_modified: str | None
    chunks: list[Chunk] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def resumable(self) -> bool:
        """Ranges are safe only with a known size and a validator that names the bytes:
        a strong ETag, or the hub's sha256 (a weak ETag allows "equivalent" content)."""
        return self.size is not None and (
            is_strong(self.etag) or as_sha256(self.linked_etag) is not None
        )

    @property
    def received(self) -> int:
        """Bytes safely on disk."""
        return sum(chunk.done - chunk.start for chunk in self.chunks)

    def contiguous(self) -> int:
        """Length of the prefix [0, n) that is completely on disk."""
        end = 0
        for chunk in sorted(self.chunks, key=lambda c: c.start):
            if chunk.start != end:
                break
            end = chunk.done
            if not chunk.complete:
                break
        return end

    def to_json(self) -> str:
        """Serialise for the sidecar, with a checksum that exposes a torn write.

        Finished neighbouring ranges are saved as one, so the sidecar stays small
        however many pieces a large file was fetched in.
        """
        chunks: list[Chunk] = []
        for chunk in sorted(self.chunks, key=lambda c: c.start):
            last = chunks[-1] if chunks else None
            if last and last.complete and chunk.complete and last.end == chunk.start:
                chunks[-1] = Chunk(last.start, chunk.end, chunk.end)
            else:
                chunks.append(Chunk(chunk.start, chunk.end, chunk.done))
        body = asdict(self) | {"chunks": [asdict(c) for c in chunks]}
        return json.dumps({**body, "check": _checksum(body)}, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: Path, note: Note | None = None) -> ResumeState | None:
        """The sidecar, or None when absent, unreadable, larger than `STATE_LIMIT`, from
        another version, or claiming what no download of ours writes: the checksum
        exposes a torn write, not a forged one, so the shape is checked too (JSON nested
        past the recursion limit, a `done` that is not an integer, ranges that overlap or
        leave the file would otherwise be tracebacks, or a splice). `note` says why one
        that exists was ignored; the download then starts again from byte 0."""
        text = read_small_text(path, STATE_LIMIT, note)
        if text is None:
            return None
        state = cls._parse(text)
        if state is None and note is not None:
            note(f"ignoring {path}: not a resume state of this version (torn, edited or corrupt)")
        return state

    @classmethod
    def _parse(cls, text: str) -> ResumeState | None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                return None
            check = data.pop("check", None)
            if data.get("version") != STATE_VERSION or check != _checksum(data):
                return None
            data["chunks"] = [Chunk(**c) for c in data.get("chunks", [])]
            state = cls(**data)
        except (ValueError, TypeError, RecursionError):
            return None
        return state if state.well_formed() else None

    def well_formed(self) -> bool:
        """Field types, and chunks that are ordered, disjoint ranges inside the file."""
        if not all(isinstance(v, str | None) for v in (self.url, self.etag, self.linked_etag)):
            return False
        if not all(isinstance(v, str | None) for v in (self.commit, self.last_modified)):
            return False
        if not isinstance(self.url, str) or not _count(self.size, allow_none=True):
            return False
        end = 0
        for chunk in self.chunks:
            if not all(_count(v) for v in (chunk.start, chunk.end, chunk.done)):
                return False
            if not end <= chunk.start <= chunk.done <= chunk.end:
                return False
            end = chunk.end
        return self.size is None or end <= self.size


def _count(value: object, *, allow_none: bool = False) -> bool:
    """A non-negative int (not a bool), or None where allowed."""
    if value is None:
        return allow_none
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write_state(path: Path, text: str) -> None:
    """Save the resume state: atomically, or in place when the disk is full.

    A full disk is exactly when the state matters most (the download stops and must
    resume later), and it is when a new temp file can't be created. Overwriting the
    existing sidecar needs no new blocks; a torn write fails the checksum, and the next
    run then starts from 0, which is safe.
    """
    try:
        atomic_write_text(path, text)
    except NoSpaceError as full:
        try:
            fd = open_regular(path, write=True)
        except FileNotFoundError:
            raise NoSpaceError(full.message, DOWNLOAD_NO_SPACE_HINT) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
