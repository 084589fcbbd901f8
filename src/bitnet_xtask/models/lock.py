"""`models.lock.json`: what `models fetch` resolved, so another machine gets the same bytes.

The catalog says what a team asks for (a branch, perhaps no hash); the lock says what it
got: the commit the hub resolved the revision to (`X-Repo-Commit`), and each file's
size and sha256 (an archive's members too). `models fetch` writes the entries it fetched
and keeps the others; `models fetch --locked` downloads exactly what the lock names (the
commit, and each file's size and sha256, refused before its first byte when the hub
advertises other bytes) and refuses an entry the lock lacks or the catalog changed.

```json
{
  "version": 1,
  "models": {
    "<name>": {
      "repo": "org/name", "revision": "main", "commit": "<40 hex or null>",
      "files": [{"path": "model.gguf", "size": 123, "sha256": "<64 hex>",
                 "contents": [{"path": "inner.gguf", "size": 1, "sha256": "..."}]}]
    }
  }
}
```
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bitnet_xtask.errors import UsageError
from bitnet_xtask.filelock import FileLock
from bitnet_xtask.fs import atomic_write_text
from bitnet_xtask.inputs import read_json

from .catalog import (
    COMMIT_HEX,
    SHA256_HEX,
    ArchiveMember,
    CatalogFile,
    ModelEntry,
    member_path_problem,
)

#: The lockfile's name, beside the project's models.toml.
LOCKFILE = Path("models.lock.json")
LOCK_VERSION = 1
_LIMIT = 16 << 20
_WAIT = 60.0  # seconds another fetch may hold the lockfile while it writes
_HINT = "delete it and run `xtask models fetch` to write it again"


@dataclass(frozen=True)
class LockedFile:
    """One file as fetched: exactly these bytes."""

    path: str
    size: int
    sha256: str
    contents: tuple[ArchiveMember, ...] = ()


@dataclass(frozen=True)
class LockedModel:
    """One catalog entry as fetched."""

    repo: str
    revision: str  # the catalog's revision when it was locked
    commit: str | None  # what the hub resolved it to (None: a mirror that did not say)
    files: tuple[LockedFile, ...]

    def file(self, path: str) -> LockedFile | None:
        """The locked file at `path` in the repository."""
        return next((f for f in self.files if f.path == path), None)

    def drift(self, entry: ModelEntry) -> str | None:
        """Why this lock no longer describes the catalog entry (None: it does)."""
        if (entry.repo, entry.revision) != (self.repo, self.revision):
            return (
                f"the catalog asks for {entry.repo}@{entry.revision}, "
                f"the lock holds {self.repo}@{self.revision}"
            )
        if sorted(f.path for f in entry.files) != sorted(f.path for f in self.files):
            return "the catalog lists other files than the lock"
        for wanted in entry.files:
            if (problem := _pin_drift(wanted, self.file(wanted.path))) is not None:
                return problem
        return None


def _pin_drift(wanted: CatalogFile, locked: LockedFile | None) -> str | None:
    if locked is None:
        return f"{wanted.path} is not in the lock"
    for what, pin, got in (
        ("sha256", wanted.sha256, locked.sha256),
        ("size", wanted.size, locked.size),
    ):
        if pin is not None and pin != got:
            return f"the catalog pins {wanted.path}'s {what} to {pin}, the lock to {got}"
    if wanted.contents and not set(wanted.contents) <= set(locked.contents):
        return f"the catalog pins other members of {wanted.path} than the lock records"
    return None


@dataclass(frozen=True)
class Lockfile:
    """Every locked model by name; `path` is where it is read from and written to."""

    path: Path
    models: Mapping[str, LockedModel] = field(default_factory=dict)

    def with_models(self, updates: Mapping[str, LockedModel]) -> Lockfile:
        """The lock with these entries added or replaced."""
        return replace(self, models={**self.models, **updates})

    def save(self) -> None:
        """Written atomically, keys sorted: a diff shows exactly what a fetch changed."""
        document = {
            "version": LOCK_VERSION,
            "models": {name: _model_json(self.models[name]) for name in sorted(self.models)},
        }
        atomic_write_text(self.path, json.dumps(document, indent=2) + "\n", checked=True)


def lock_path(given: Path | None, catalog: Path | None) -> Path:
    """`--lock`, else `models.lock.json` beside the project catalog (`--catalog`, else the
    working directory's models.toml)."""
    if given is not None:
        return given
    return (catalog.parent if catalog is not None else Path()) / LOCKFILE


def update_lock(path: Path, updates: Mapping[str, LockedModel]) -> None:
    """Add or replace these entries, under the lock's own lock and from a fresh read, so
    two fetches of different models at once both land in it."""
    guard = FileLock(path.with_name(path.name + ".lock"), _WAIT)
    with guard.held():
        read_lock(path).with_models(updates).save()


def read_lock(path: Path) -> Lockfile:
    """The lockfile at `path`; an absent one is empty, a malformed one a usage error."""
    if not path.exists():
        return Lockfile(path)
    data = read_json(path, what="model lockfile", limit=_LIMIT)
    where = f"{path}"
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
        raise UsageError(f"{where}: not a version-{LOCK_VERSION} models lockfile", _HINT)
    models = data.get("models")
    if not isinstance(models, dict):
        raise UsageError(f"{where}: `models` must be an object", _HINT)
    return Lockfile(path, {name: _model(f"{where}: {name}", m) for name, m in models.items()})


def _model(where: str, data: Any) -> LockedModel:
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be an object", _HINT)
    repo, revision, commit = data.get("repo"), data.get("revision"), data.get("commit")
    files = data.get("files")
    if not (isinstance(repo, str) and isinstance(revision, str) and isinstance(files, list)):
        raise UsageError(f"{where}: needs `repo`, `revision` and `files`", _HINT)
    if commit is not None and not (isinstance(commit, str) and COMMIT_HEX.match(commit)):
        raise UsageError(f"{where}: `commit` must be 40 hex digits or null", _HINT)
    return LockedModel(repo, revision, commit, tuple(_file(where, f) for f in files))


def _file(where: str, data: Any) -> LockedFile:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: every file must be an object", _HINT)
    path, size, sha256 = _pinned(where, data)
    contents = data.get("contents", [])
    if not isinstance(contents, list):
        raise UsageError(f"{where}: `contents` must be a list", _HINT)
    return LockedFile(path, size, sha256, tuple(_member(where, m) for m in contents))


def _member(where: str, data: Any) -> ArchiveMember:
    path, size, sha256 = _pinned(where, data)
    if problem := member_path_problem(path):
        raise UsageError(f"{where}: archive member {path!r}: {problem}", _HINT)
    return ArchiveMember(path, size, sha256)


def _pinned(where: str, data: Any) -> tuple[str, int, str]:
    path = data.get("path") if isinstance(data, dict) else None
    size = data.get("size") if isinstance(data, dict) else None
    sha256 = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(path, str) or not path:
        raise UsageError(f"{where}: a file needs its `path`", _HINT)
    if type(size) is not int or size < 0:
        raise UsageError(f"{where}: {path}: `size` must be a whole number of bytes", _HINT)
    if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
        raise UsageError(f"{where}: {path}: `sha256` must be 64 lower-case hex digits", _HINT)
    return path, size, sha256


def _model_json(model: LockedModel) -> dict[str, Any]:
    return {
        "repo": model.repo,
        "revision": model.revision,
        "commit": model.commit,
        "files": [_file_json(f) for f in model.files],
    }


def _file_json(file: LockedFile) -> dict[str, Any]:
    document: dict[str, Any] = {"path": file.path, "size": file.size, "sha256": file.sha256}
    if file.contents:
        document["contents"] = [
            {"path": m.path, "size": m.size, "sha256": m.sha256} for m in file.contents
        ]
    return document
