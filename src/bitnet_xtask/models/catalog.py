"""The model catalog: named models, each pinned to a repository, a revision and files.

Two layers, read in order: the catalog shipped in the package (`catalog.toml`, only
entries whose every fact is public and checkable: a commit, and each file's size and
sha256), then the project's own (`models.toml` in the working directory, or
`--catalog PATH`). A project entry with a shipped entry's name replaces it whole; any
other name extends the catalog. A project entry may leave the revision (`main`), a
size or a sha256 out: `models fetch` resolves them and the lockfile records what it
resolved, so a second machine fetches the same bytes (`models.lock`).

The schema, one table per model:

```toml
[models."bitnet-b1.58-2b-4t-i2s"]
repo = "microsoft/bitnet-b1.58-2B-4T-gguf"
revision = "a1f2f1c765812aa8af3f6eda4a313707064bba15"   # a commit (optional: "main")
license = "mit"                                         # optional
description = "what it is for"                          # optional
backends = ["cpp:bitnet.cpp", "numpy"]                  # optional: which crossval runs it
files = [
  { path = "ggml-model-i2_s.gguf", size = 1187801280, sha256 = "4221b2..." },
  { path = "weights.tar.zst", sha256 = "...", contents = [       # an archive: unpacked
      { path = "model.gguf", size = 123, sha256 = "..." } ] },  # and each member verified
]
```

Files land where download-model puts them, `<models>/<repo-with-dashes>/<leaf name>`;
an archive is unpacked into the folder named after it without its suffix.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from bitnet_xtask.archive import ArchiveKind, archive_kind, archive_stem
from bitnet_xtask.download.store import leaf_name, model_dir
from bitnet_xtask.download.urls import validate_repo_id, validate_revision
from bitnet_xtask.errors import UsageError, XtaskError
from bitnet_xtask.inputs import read_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The project catalog's name, looked for in the working directory.
PROJECT_CATALOG = Path("models.toml")
#: A catalog is a few KB of text; anything much larger is not one.
CATALOG_LIMIT = 1 << 20

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
#: A sha256 and a git commit as the catalog and the lock write them: lower-case hex.
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
COMMIT_HEX = re.compile(r"^[0-9a-f]{40}$")
_ENTRY_KEYS = {"repo", "revision", "license", "description", "backends", "files"}
_FILE_KEYS = {"path", "size", "sha256", "archive", "contents"}
_MEMBER_KEYS = {"path", "size", "sha256"}
_HINT = "see README.md, `xtask models`: the catalog format"


@dataclass(frozen=True)
class ArchiveMember:
    """A file inside an archive, checked after unpacking."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CatalogFile:
    """One file of a model, as the catalog pins it (size and sha256 may be unknown)."""

    path: str
    size: int | None
    sha256: str | None
    archive: ArchiveKind | None = None
    contents: tuple[ArchiveMember, ...] = ()

    @property
    def name(self) -> str:
        """The local file name (download-model's rule: the last path component)."""
        return leaf_name(self.path)

    @property
    def pinned(self) -> bool:
        """Size and sha256 are both known: the bytes are fixed before any download."""
        return self.size is not None and self.sha256 is not None

    @property
    def unpacked_name(self) -> str:
        """The folder an archive unpacks into: its name without the archive suffix."""
        return archive_stem(self.name) or f"{self.name}.d"


@dataclass(frozen=True)
class ModelEntry:
    """A named model: where its files come from, and what they must be."""

    name: str
    repo: str
    revision: str
    files: tuple[CatalogFile, ...]
    source: str  # the catalog that defined it: "package" or a path
    license: str | None = None
    description: str = ""
    backends: tuple[str, ...] = ()

    @property
    def commit(self) -> str | None:
        """The revision, when it is a commit (40 hex digits) rather than a branch or tag."""
        return self.revision if COMMIT_HEX.match(self.revision) else None

    @property
    def pinned(self) -> bool:
        """A commit and every file's size and sha256: what the package may ship."""
        return self.commit is not None and all(f.pinned for f in self.files)

    def directory(self, models_dir: Path) -> Path:
        """Where its files land: download-model's folder for the repository."""
        return model_dir(models_dir, self.repo)

    def local_path(self, models_dir: Path, file: CatalogFile) -> Path:
        """The downloaded file on disk."""
        return self.directory(models_dir) / file.name

    def unpacked_dir(self, models_dir: Path, file: CatalogFile) -> Path:
        """The folder an archive file is unpacked into."""
        return self.directory(models_dir) / file.unpacked_name

    def gguf(self) -> CatalogFile | None:
        """The model's GGUF, when it has exactly one (what full-crossval --model runs)."""
        ggufs = [f for f in self.files if f.name.endswith(".gguf")]
        return ggufs[0] if len(ggufs) == 1 else None


@dataclass(frozen=True)
class Catalog:
    """Every known model by name, the project's over the package's."""

    entries: Mapping[str, ModelEntry]

    def get(self, name: str) -> ModelEntry:
        """The entry called `name`; a usage error (exit 2) naming the known ones if none."""
        if (entry := self.entries.get(name)) is None:
            known = ", ".join(sorted(self.entries)) or "none"
            raise UsageError(
                f"no model called {name!r} in the catalog",
                f"known models: {known}; add it to {PROJECT_CATALOG} (`xtask models list`)",
            )
        return entry

    def select(self, names: Iterable[str]) -> list[ModelEntry]:
        """The named entries in the order given, each once; all of them when none is named."""
        chosen = list(dict.fromkeys(names))
        return [self.get(n) for n in chosen] if chosen else list(self.entries.values())

    def by_sha256(self) -> dict[str, tuple[ModelEntry, CatalogFile]]:
        """Each pinned file (and archive member) by its sha256: what the inventory matches."""
        found: dict[str, tuple[ModelEntry, CatalogFile]] = {}
        for entry in self.entries.values():
            for file in entry.files:
                if file.sha256 is not None:
                    found.setdefault(file.sha256, (entry, file))
                for member in file.contents:
                    found.setdefault(member.sha256, (entry, file))
        return found


def package_catalog_text() -> str:
    """The shipped catalog's TOML."""
    return resources.files("bitnet_xtask.models").joinpath("catalog.toml").read_text("utf-8")


def load_catalog(project: Path | None = None) -> Catalog:
    """The package's catalog, extended or overridden by `project` (default: `models.toml`
    in the working directory when there is one; an explicit path must exist)."""
    shipped = parse_catalog(package_catalog_text(), "package")
    entries = dict(shipped)
    path = project if project is not None else PROJECT_CATALOG
    if project is not None or path.is_file():
        text = read_text(path, what="model catalog", limit=CATALOG_LIMIT)
        entries.update(parse_catalog(text, str(path)))
    _check_destinations(entries.values())
    return Catalog(entries)


def parse_catalog(text: str, source: str) -> dict[str, ModelEntry]:
    """A catalog's entries; any mistake is a usage error that names the entry and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}", _HINT) from None
    if unknown := sorted(set(data) - {"models"}):
        raise UsageError(f"{source}: unknown top-level keys {unknown}", _HINT)
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise UsageError(f"{source}: `models` must be a table of model tables", _HINT)
    return {name: _entry(source, name, table) for name, table in models.items()}


def _table(where: str, value: Any, keys: set[str]) -> dict[str, Any]:
    """`value` as a table of only the `keys` this place allows."""
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a table", _HINT)
    if unknown := sorted(set(value) - keys):
        raise UsageError(f"{where}: unknown keys {unknown}", _HINT)
    return value


def _entry(source: str, name: str, value: Any) -> ModelEntry:
    where = f"{source}: model {name!r}"
    if not _NAME.match(name):
        raise UsageError(
            f"{where}: a name is lower-case letters, digits, '.', '_' and '-' "
            "(at most 96, starting with a letter or digit)",
            _HINT,
        )
    table = _table(where, value, _ENTRY_KEYS)
    repo = _string(table, "repo", where, required=True)
    revision = _string(table, "revision", where) or "main"
    try:
        validate_repo_id(repo)
        validate_revision(revision)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", exc.hint) from None
    backends = table.get("backends", [])
    if not isinstance(backends, list) or not all(isinstance(b, str) and b for b in backends):
        raise UsageError(f"{where}: `backends` must be a list of backend names", _HINT)
    files = table.get("files")
    if not isinstance(files, list) or not files:
        raise UsageError(f"{where}: `files` must be a non-empty list of file tables", _HINT)
    parsed = tuple(_file(f"{where} file {i}", item) for i, item in enumerate(files))
    names = [f.name for f in parsed]
    if len(set(names)) != len(names):
        raise UsageError(f"{where}: two files land on the same local name", _HINT)
    return ModelEntry(
        name=name,
        repo=repo,
        revision=revision,
        files=parsed,
        source=source,
        license=_string(table, "license", where),
        description=_string(table, "description", where) or "",
        backends=tuple(backends),
    )


def _file(where: str, value: Any) -> CatalogFile:
    table = _table(where, value, _FILE_KEYS)
    path = _string(table, "path", where, required=True)
    try:
        leaf_name(path)
    except XtaskError as exc:
        raise UsageError(f"{where}: {exc.message}", exc.hint) from None
    archive = table.get("archive")
    if archive is None:
        archive = archive_kind(path)
    elif archive not in get_args(ArchiveKind):
        kinds = " or ".join(map(repr, get_args(ArchiveKind)))
        raise UsageError(f"{where}: `archive` is {kinds}, not {archive!r}", _HINT)
    contents = table.get("contents", [])
    if not isinstance(contents, list) or (contents and archive is None):
        raise UsageError(f"{where}: `contents` is a list of members, for an archive", _HINT)
    return CatalogFile(
        path=path,
        size=_size(table, where),
        sha256=_sha256(table, where),
        archive=archive,
        contents=tuple(_member(f"{where} member {i}", m) for i, m in enumerate(contents)),
    )


def _member(where: str, value: Any) -> ArchiveMember:
    table = _table(where, value, _MEMBER_KEYS)
    path = _string(table, "path", where, required=True)
    if problem := member_path_problem(path):
        raise UsageError(f"{where}: {path!r}: {problem}", _HINT)
    size, sha256 = _size(table, where), _sha256(table, where)
    if size is None or sha256 is None:
        raise UsageError(f"{where}: an archive member needs its size and sha256", _HINT)
    return ArchiveMember(path, size, sha256)


def member_path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside an unpacked archive (None: it can): what the
    catalog and the lock say about members is joined to the unpack folder, so it must
    stay inside it."""
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        return "not a relative path inside the archive"
    return None


def _string(table: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> Any:
    value = table.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: `{key}` must be a non-empty string", _HINT)
    return value


def _size(table: Mapping[str, Any], where: str) -> int | None:
    value = table.get("size")
    if value is not None and (type(value) is not int or value < 0):
        raise UsageError(f"{where}: `size` must be a whole number of bytes", _HINT)
    return value


def _sha256(table: Mapping[str, Any], where: str) -> str | None:
    value = table.get("sha256")
    if value is None:
        return None
    if not isinstance(value, str) or not SHA256_HEX.match(value.lower()):
        raise UsageError(f"{where}: `sha256` must be 64 hex digits", _HINT)
    return value.lower()


def _check_destinations(entries: Iterable[ModelEntry]) -> None:
    """Two entries may share a file (one repository, one local folder) only when they
    pin the same bytes; otherwise fetching one would overwrite the other. An archive's
    unpack folder is claimed too: no file may land at its name."""
    claimed: dict[Path, tuple[ModelEntry, CatalogFile]] = {}
    for entry in entries:
        for file in entry.files:
            places = [entry.local_path(Path(), file)]
            if file.archive is not None:
                places.append(entry.unpacked_dir(Path(), file))
            for place in places:
                if place not in claimed:
                    claimed[place] = (entry, file)
                    continue
                first, first_file = claimed[place]
                if first_file.sha256 is not None and first_file.sha256 == file.sha256:
                    continue
                raise UsageError(
                    f"models {first.name!r} ({first.source}) and {entry.name!r} "
                    f"({entry.source}) both put {place.name!r} in the folder of "
                    f"{entry.repo}, with different or unknown sha256",
                    "pin both to the same sha256, or drop one of them",
                )
