"""What models are on this machine: every GGUF in the models folder and the Hugging Face
cache, with its sha256, what its header says, and which catalog entry it is.

A file is named by its bytes, not its path: the catalog match is by sha256, so a model
renamed, moved or fetched by another tool is still recognised. Hashing is what costs
(every byte read) and after it parsing the header (gguf-py builds a NumPy view of every
metadata value: ~40 ms for a 300-token fixture, seconds for a 128k vocabulary), so both
come from the `HashCache`: the header facts are attached to the file's cache entry and
a rerun over unchanged files opens none of them. gguf-py and NumPy are imported only
when a header has to be read.

The walk: every `*.gguf` under the models folder, symbolic links to files included but
symbolic links to folders never followed (so the walk cannot leave the tree or loop),
and the HF cache's `models--org--name/snapshots/<commit>/<path>` links, each blob listed
once however many snapshots point at it. A file that is not a readable GGUF (cut short,
not GGUF at all, unreadable, a link to nothing) is a row with an `error`, not a failure.
"""

from __future__ import annotations

import math
import os
import stat
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bitnet_xtask.errors import XtaskError
from bitnet_xtask.fs import file_kind
from bitnet_xtask.models.catalog import Catalog, CatalogFile, ModelEntry
from bitnet_xtask.models.hash_cache import HashCache

Location = Literal["models", "hf-cache"]

#: The name the header facts are attached under in the hash cache, and their format's
#: version: facts of another version are read again (a rule of `quantization()` changed).
FACTS_KEY = "gguf"
FACTS_VERSION = 1


@dataclass(frozen=True)
class GGUFFacts:
    """What a GGUF header says about the model, as the table and the report show it."""

    architecture: str | None  # general.architecture
    quantization: str | None  # GGUFFile.quantization(): "q4_k_m", "i2_s", ...
    tokenizer: str | None  # tokenizer.ggml.model
    tensor_types: tuple[tuple[str, int], ...]  # ggml type name and count, by name
    n_tensors: int
    n_params: int  # elements over all tensors

    def to_json(self) -> dict[str, Any]:
        """The facts as written into the report and the cache."""
        return {
            "architecture": self.architecture,
            "quantization": self.quantization,
            "tokenizer": self.tokenizer,
            "tensor_types": dict(self.tensor_types),
            "n_tensors": self.n_tensors,
            "n_params": self.n_params,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> GGUFFacts | None:
        """Facts as `to_json` wrote them, or None for anything else (a cache edited or
        written by another version)."""
        names = [value.get(k) for k in ("architecture", "quantization", "tokenizer")]
        types, n_tensors, n_params = (value.get(k) for k in ("tensor_types", "n_tensors",
                                                              "n_params"))  # fmt: skip
        if not all(n is None or isinstance(n, str) for n in names):
            return None
        if not (type(n_tensors) is int and type(n_params) is int and isinstance(types, dict)):
            return None
        if not all(isinstance(k, str) and type(n) is int for k, n in types.items()):
            return None
        return cls(names[0], names[1], names[2], tuple(sorted(types.items())), n_tensors, n_params)


@dataclass(frozen=True)
class HFSource:
    """Where a blob of the Hugging Face cache comes from: the first snapshot (by commit,
    then path) that links to it."""

    repo: str
    commit: str
    path: str


@dataclass(frozen=True)
class CatalogMatch:
    """The catalog file whose pinned sha256 a file has (`member`: inside that archive)."""

    model: str
    file: str
    member: str | None = None


@dataclass(frozen=True)
class InventoryRow:
    """One GGUF on disk. `error` says why it is not a readable GGUF (its facts are None
    then; its sha256 too when it could not be read at all)."""

    path: Path
    location: Location
    size: int | None
    sha256: str | None
    facts: GGUFFacts | None
    match: CatalogMatch | None
    hf: HFSource | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as the report writes it."""
        facts = self.facts.to_json() if self.facts is not None else dict.fromkeys(_FACT_KEYS)
        return {
            "path": str(self.path),
            "location": self.location,
            "size": self.size,
            "sha256": self.sha256,
            **facts,
            "match": None if self.match is None else vars(self.match),
            "hf": None if self.hf is None else vars(self.hf),
            "error": self.error,
        }


_FACT_KEYS = ("architecture", "quantization", "tokenizer", "tensor_types", "n_tensors",
              "n_params")  # fmt: skip


@dataclass(frozen=True)
class Inventory:
    """Every GGUF found, models folder first, and what finding them cost: `hashed` files
    were read to hash and `parsed` headers read (both 0 on a rerun over unchanged files)."""

    models_dir: Path
    hf_cache: Path | None
    rows: tuple[InventoryRow, ...]
    hashed: int
    parsed: int

    @property
    def total_bytes(self) -> int:
        """The bytes of every file listed."""
        return sum(row.size or 0 for row in self.rows)

    def summary(self) -> dict[str, int]:
        """The counts: files and bytes, where, matched, unreadable, and the cost."""
        return {
            "files": len(self.rows),
            "bytes": self.total_bytes,
            "models": sum(row.location == "models" for row in self.rows),
            "hf_cache": sum(row.location == "hf-cache" for row in self.rows),
            "matched": sum(row.match is not None for row in self.rows),
            "errors": sum(row.error is not None for row in self.rows),
            "hashed": self.hashed,
            "parsed": self.parsed,
        }

    def to_dict(self) -> dict[str, Any]:
        """The `models inventory --json` report (events.schema.json: ModelsInventoryReport)."""
        return {
            "models_dir": str(self.models_dir),
            "hf_cache": None if self.hf_cache is None else str(self.hf_cache),
            "files": [row.to_dict() for row in self.rows],
            "summary": self.summary(),
        }


def build_inventory(
    models_dir: Path, catalog: Catalog, cache: HashCache, *, hf_cache: Path | None = None
) -> Inventory:
    """Every GGUF under `models_dir` (absent: none) and, when given, in the HF hub cache
    `hf_cache` (`download.hf_cache.hub_cache_dir()`), matched against `catalog`.

    Paths are absolute (links in them kept). Digests and header facts come from `cache`
    and new ones are recorded in it; saving it is the caller's (`cache.save()`)."""
    scan = _Scan(cache, catalog.by_sha256())
    hub = hf_cache.absolute() if hf_cache is not None and hf_cache.is_dir() else None
    root = models_dir.absolute()
    rows = [scan.row(path, "models", None) for path in gguf_paths(root, skip=hub)]
    if hub is not None:
        rows += [scan.row(path, "hf-cache", source) for path, source in hf_blobs(hub)]
    hashed = cache.hashed - scan.hashed_before
    searched = None if hf_cache is None else hf_cache.absolute()
    return Inventory(root, searched, tuple(rows), hashed, scan.parsed)


def gguf_paths(root: Path, *, skip: Path | None = None) -> list[Path]:
    """Every `*.gguf` under `root` (files, links to files, links to nothing), sorted;
    linked folders are not entered, nor the folder `skip` (an HF cache kept inside)."""
    skipped = os.path.realpath(skip) if skip is not None else None
    if skipped is not None and not skipped.startswith(os.path.realpath(root) + os.sep):
        skipped = None  # not inside: no folder of the walk can be it
    found: list[Path] = []
    for top, dirs, files in os.walk(root):  # followlinks=False: a linked folder is a name
        if skipped is not None:
            dirs[:] = [d for d in dirs if os.path.realpath(Path(top, d)) != skipped]
        found += (Path(top, name) for name in files if name.lower().endswith(".gguf"))
    return sorted(found)


def hf_blobs(hub: Path) -> Iterator[tuple[Path, HFSource]]:
    """Each blob a model repository's snapshot in the HF hub cache links a `*.gguf` to,
    once, with the first snapshot and path that name it (a dangling link: the blob path
    it names, which the row then reports missing)."""
    seen: set[Path] = set()
    for repo_dir in sorted(hub.glob("models--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/")
        for snapshot in _folders(repo_dir / "snapshots"):
            for link in gguf_paths(snapshot):
                blob = Path(os.path.realpath(link))  # Path.resolve raises on a link loop
                if blob not in seen:
                    seen.add(blob)
                    yield blob, HFSource(repo, snapshot.name, link.relative_to(snapshot).as_posix())


def _folders(directory: Path) -> list[Path]:
    """The real folders (not links) in `directory`, sorted; none when it cannot be listed."""
    try:
        return sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


class _Scan:
    """One inventory's rows: the cache, the catalog's files by sha256, what was parsed."""

    def __init__(self, cache: HashCache, by_sha256: dict[str, tuple[ModelEntry, CatalogFile]]):
        self.cache, self.by_sha256 = cache, by_sha256
        self.hashed_before, self.parsed = cache.hashed, 0

    def row(self, path: Path, location: Location, hf: HFSource | None) -> InventoryRow:
        def failed(error: str, size: int | None = None, sha256: str | None = None) -> InventoryRow:
            return InventoryRow(path, location, size, sha256, None, None, hf, error)

        try:
            info = path.stat()
        except FileNotFoundError:
            gone = "a symbolic link to nothing" if path.is_symlink() else "removed while listed"
            return failed(f"{path} is {gone}")
        except OSError as exc:
            return failed(f"cannot read {path}: {exc.strerror or exc}")
        if not stat.S_ISREG(info.st_mode):
            return failed(f"{path} is {file_kind(info.st_mode)}, not a regular file")
        try:
            sha256 = self.cache.sha256(path)
        except XtaskError as exc:
            return failed(exc.message, info.st_size)
        facts = self._facts(path)
        match = self._match(sha256)
        if isinstance(facts, str):
            return InventoryRow(path, location, info.st_size, sha256, None, match, hf, facts)
        return InventoryRow(path, location, info.st_size, sha256, facts, match, hf)

    def _facts(self, path: Path) -> GGUFFacts | str:
        """The header facts, or why the file is not a readable GGUF: cached, else read."""
        cached = self.cache.attached(path, FACTS_KEY)
        if isinstance(cached, dict) and cached.get("v") == FACTS_VERSION:
            if isinstance(error := cached.get("error"), str):
                return error
            if (facts := GGUFFacts.from_json(cached)) is not None:
                return facts
        self.parsed += 1
        try:
            read = read_facts(path)
        except XtaskError as exc:
            self.cache.attach(path, FACTS_KEY, {"v": FACTS_VERSION, "error": exc.message})
            return exc.message
        self.cache.attach(path, FACTS_KEY, {"v": FACTS_VERSION, **read.to_json()})
        return read

    def _match(self, sha256: str) -> CatalogMatch | None:
        if (found := self.by_sha256.get(sha256)) is None:
            return None
        entry, file = found
        member = next((m.path for m in file.contents if m.sha256 == sha256), None)
        return CatalogMatch(entry.name, file.path, member)


def read_facts(path: Path) -> GGUFFacts:
    """The header facts of the GGUF at `path`; `GGUFFormatError` (exit 2) when it is not
    one that can be read (`crossval.gguf_file`: bounded, hostile-safe)."""
    from bitnet_xtask.crossval.gguf_file import GGUFFile

    gguf = GGUFFile(path)
    infos = gguf.tensor_infos.values()
    types = Counter(tensor_type_name(info.type_id) for info in infos)
    architecture, tokenizer = (
        gguf.metadata("general.architecture"),
        gguf.metadata("tokenizer.ggml.model"),
    )
    return GGUFFacts(
        architecture=architecture if isinstance(architecture, str) else None,
        quantization=gguf.quantization(),
        tokenizer=tokenizer if isinstance(tokenizer, str) else None,
        tensor_types=tuple(sorted(types.items())),
        n_tensors=len(gguf.tensor_infos),
        n_params=sum(math.prod(info.shape) for info in infos),
    )


def tensor_type_name(type_id: int) -> str:
    """A ggml tensor type's name (`Q4_K`; bitnet.cpp's 36 is `I2_S`, which gguf-py lacks;
    an id neither knows is `type_<id>`)."""
    from gguf import GGMLQuantizationType

    from bitnet_xtask.crossval.gguf_file import I2_S_TYPE_ID

    if type_id == I2_S_TYPE_ID:
        return "I2_S"
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type_{type_id}"
