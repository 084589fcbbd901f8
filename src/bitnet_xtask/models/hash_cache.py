"""A file's sha256, remembered between runs while the file stays the same.

Hashing a models folder reads every byte of it (a 2B model is 1.2 GB); the inventory and
`models fetch` ask for the same digests run after run. An entry is trusted only while the
file is provably the one that was hashed: the same absolute path, device, inode, size,
mtime and ctime (a ctime cannot be set from user space, so a file rewritten and given its
old mtime back, or a new file on a reused inode, is still told apart). Two more rules
close the races a key like this leaves open:

- the file is stat'ed on its open descriptor before and after it is read, and the digest
  is recorded only when nothing changed meanwhile;
- a file modified in the last `RACY_SECONDS` is hashed but not recorded: a write right
  after the hash, in the same tick of the file system's clock, would leave every field of
  the key as it was (git's "racy clean" problem). The next run records it.

Facts derived from the bytes (the inventory's GGUF header facts) may be attached to an
entry and live and die with it. The cache file is ours but lives in the user's cache
home: one that is missing, corrupt, not JSON, oversized, a link or a FIFO is treated as
empty, and one that cannot be written is a `--verbose` note, never a failed command; a
lost entry only costs a hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bitnet_xtask.cache import cache_home
from bitnet_xtask.errors import XtaskError
from bitnet_xtask.fs import atomic_write_text, read_small_text
from bitnet_xtask.inputs import open_regular

from .catalog import SHA256_HEX

Note = Callable[[str], None]

#: The cache file's format; a file of another version is ignored (and replaced on save).
VERSION = 1
#: Most bytes a cache file may hold; a larger one is not read (nor written).
CACHE_LIMIT = 64 << 20
#: Most entries kept: ~0.5 KB each with GGUF facts, so well inside CACHE_LIMIT.
MAX_ENTRIES = 50_000
#: A file modified this recently is hashed but not recorded (see the module).
RACY_SECONDS = 2.0
_BLOCK = 4 << 20  # as fs.hash_file reads
_KEY_FIELDS = ("dev", "ino", "size", "mtime_ns", "ctime_ns")


def default_path() -> Path:
    """`$XDG_CACHE_HOME/bitnet_xtask/sha256-cache.json`."""
    return cache_home() / "bitnet_xtask" / "sha256-cache.json"


Identity = tuple[int, int, int, int, int]


def _identity(info: os.stat_result) -> Identity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass
class _Entry:
    identity: Identity
    sha256: str
    attached: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**dict(zip(_KEY_FIELDS, self.identity, strict=True)), "sha256": self.sha256,
                "attached": self.attached}  # fmt: skip

    @classmethod
    def from_json(cls, value: Any) -> _Entry | None:
        """An entry as written by `to_json`, or None for anything else."""
        if not isinstance(value, dict):
            return None
        numbers = tuple(value.get(key) for key in _KEY_FIELDS)
        sha256, attached = value.get("sha256"), value.get("attached", {})
        if not all(type(n) is int and n >= 0 for n in numbers):
            return None
        if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
            return None
        if not isinstance(attached, dict):
            return None
        return cls(cast(Identity, numbers), sha256, attached)


class HashCache:
    """sha256 by file, cached on disk by the file's identity (see the module).

    `hashed` counts the files this instance has read to hash (its misses). Not
    thread-safe: one per command run.
    """

    def __init__(self, path: Path, entries: dict[str, _Entry], note: Note | None = None) -> None:
        self.path = path
        self.hashed = 0
        self._entries = entries
        self._used: set[str] = set()
        self._dirty = False
        self._note = note

    @classmethod
    def load(cls, path: Path | None = None, *, note: Note | None = None) -> HashCache:
        """The cache in `path` (default `default_path()`); empty when it is absent or not
        a cache file of this version. `note` receives `--verbose` lines: why a file was
        ignored, why a save was skipped."""
        path = default_path() if path is None else path
        return cls(path, _read_entries(path, note), note)

    def sha256(self, file: Path) -> str:
        """The file's sha256: from the cache while it is unchanged, else read and recorded.

        Only a regular file is read (a link to one is followed): one that is absent, not
        regular (a FIFO would block, a device never end) or unreadable is a `UsageError`
        (exit 2) that says which.
        """
        key = str(file.absolute())
        if (entry := self._unchanged(key, file)) is not None:
            return entry.sha256
        return self._hash(key)

    def attached(self, file: Path, name: str) -> Any:
        """What was attached as `name` to the file's entry, None if nothing was. After
        `sha256(file)` in this run, the entry that digest came from (what is attached
        is of the same bytes); otherwise the entry while the file is unchanged."""
        key = str(file.absolute())
        entry = self._entries.get(key) if key in self._used else self._unchanged(key, file)
        return None if entry is None else entry.attached.get(name)

    def attach(self, file: Path, name: str, value: Any) -> None:
        """Keep a JSON value derived from the file's bytes beside its digest. Dropped
        unless the file is, now, still the one its recorded digest is of: a file that
        changed since (or one too recent to record) keeps nothing."""
        if (entry := self._unchanged(str(file.absolute()), file)) is not None:
            entry.attached[name] = value
            self._dirty = True

    def save(self) -> None:
        """Write the cache back when it changed (atomically), without the entries of files
        that are gone or changed, at most `MAX_ENTRIES`. Never fails: a cache that cannot
        be written is a note, and the next run hashes again."""
        for key in [k for k in self._entries if k not in self._used]:
            try:
                unchanged = self._entries[key].identity == _identity(Path(key).stat())
            except OSError:
                unchanged = False
            if not unchanged:
                del self._entries[key]
                self._dirty = True
        if not self._dirty:
            return
        kept = sorted(self._entries, key=lambda k: k not in self._used)[:MAX_ENTRIES]
        document = {"version": VERSION, "entries": {k: self._entries[k].to_json() for k in kept}}
        text = json.dumps(document, separators=(",", ":"))
        if len(text) > CACHE_LIMIT:
            self._say(f"not saving {self.path}: {len(text):,} bytes, over {CACHE_LIMIT:,}")
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)
        except (OSError, XtaskError) as exc:
            reason = exc.message if isinstance(exc, XtaskError) else exc.strerror or str(exc)
            self._say(f"sha256 cache {self.path} not saved ({reason}); the next run hashes again")
            return
        self._dirty = False

    # --- inside ---------------------------------------------------------------------------

    def _unchanged(self, key: str, file: Path) -> _Entry | None:
        """The entry of `key` while `file` (the same path) is still the file it records."""
        if (entry := self._entries.get(key)) is None:
            return None
        try:
            if entry.identity != _identity(file.stat()):
                return None
        except OSError:
            return None
        self._used.add(key)
        return entry

    def _hash(self, key: str) -> str:
        started = time.time_ns()
        fd, before = open_regular(Path(key), what="file")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "rb", closefd=False) as handle:
                while block := handle.read(_BLOCK):
                    digest.update(block)
            after = os.fstat(fd)
        except OSError as exc:  # EIO on a failing disk, a network file system gone
            raise XtaskError(f"cannot read {key}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        self.hashed += 1
        sha256 = digest.hexdigest()
        identity = _identity(before)
        settled = started - before.st_mtime_ns > RACY_SECONDS * 1e9
        if settled and identity == _identity(after):
            self._entries[key] = _Entry(identity, sha256)
            self._used.add(key)
            self._dirty = True
        elif self._entries.pop(key, None) is not None:  # it held other bytes' digest
            self._dirty = True
        return sha256

    def _say(self, message: str) -> None:
        if self._note is not None:
            self._note(message)


def _read_entries(path: Path, note: Note | None) -> dict[str, _Entry]:
    try:
        text = read_small_text(path, CACHE_LIMIT, note)
    except (OSError, XtaskError) as exc:  # a directory, link or FIFO at its path, unreadable
        if note is not None:
            reason = exc.message if isinstance(exc, XtaskError) else exc.strerror or str(exc)
            note(f"ignoring the sha256 cache {path}: {reason}")
        return {}
    if text is None:
        return {}
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not (isinstance(document, dict) and document.get("version") == VERSION):
        if note is not None:
            note(f"ignoring the sha256 cache {path}: not a version {VERSION} cache file")
        return {}
    raw = document.get("entries")
    entries = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        if (entry := _Entry.from_json(value)) is not None:
            entries[key] = entry  # a key no lookup makes (not absolute) is merely unused
    return entries
