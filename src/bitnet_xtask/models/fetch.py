"""`models fetch`: every file of the named models, through download-model's machinery.

A file whose bytes are pinned (its size and sha256, by the catalog or, with `--locked`,
by the lock) and already on disk with those bytes is not asked for at all: the fetch of
a pinned model is idempotent offline. Every other file goes to `download.download_many`,
which fetches them concurrently within one bound on connections, resumes each `.part`,
and verifies each file; a file it finds current (by its ETag) or adopts is then checked
by its bytes too, and one that is damaged is downloaded again. An archive is then
unpacked beside itself (`bitnet_xtask.archive`, fetch-cpp's safe extraction) and its
members checked against the pins. Only when every file of every named model is in place
is the lock rewritten (`lock.update_lock`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from bitnet_xtask.download import DownloadOptions, DownloadResult, FileSpec
from bitnet_xtask.download.options import Mismatch, contradiction
from bitnet_xtask.errors import HashMismatchError, NetworkError, UsageError
from bitnet_xtask.events import NullReporter, Reporter

from .catalog import ArchiveMember, Catalog, CatalogFile, ModelEntry
from .hash_cache import HashCache
from .lock import LockedFile, LockedModel, Lockfile, read_lock, update_lock

#: Where a file's bytes came from this time: download-model's sources, or already here.
FetchSource = Literal["present", "network", "up-to-date", "hf-cache"]


@dataclass(frozen=True)
class FetchRequest:
    """What to fetch, and how; `download` carries the transfer options (its repository,
    revision and folder are each file's own)."""

    names: tuple[str, ...]
    models_dir: Path
    lock_path: Path
    locked: bool = False
    connections: int = 4
    download: DownloadOptions = field(default_factory=DownloadOptions)


@dataclass(frozen=True)
class FetchedFile:
    """One file in place and verified."""

    path: Path
    size: int
    sha256: str
    source: FetchSource
    unpacked: Path | None = None  # the folder an archive was unpacked into
    contents: tuple[ArchiveMember, ...] = ()


@dataclass(frozen=True)
class FetchedModel:
    name: str
    commit: str | None
    files: tuple[FetchedFile, ...]


@dataclass(frozen=True)
class FetchResult:
    models: tuple[FetchedModel, ...]
    lock: Path | None  # the lockfile written (None with --locked: it is only read)


@dataclass(frozen=True)
class _Pin:
    """What one file must be this time, and the revision to ask for."""

    entry: ModelEntry
    file: CatalogFile
    revision: str
    size: int | None
    sha256: str | None
    pinned_by: str  # where the pin comes from, for messages
    locked: LockedFile | None  # the lock's record of this file, while it matches the catalog
    members: tuple[ArchiveMember, ...]  # an archive's pinned members

    def contradiction(self, sha256: str | None, size: int | None) -> Mismatch | None:
        """download-model's one rule for "is this the pinned file", on this pin."""
        return contradiction(self.sha256, self.size, sha256, size)


def fetch_models(
    request: FetchRequest,
    catalog: Catalog,
    cache: HashCache,
    reporter: Reporter | None = None,
) -> FetchResult:
    """Fetch the named models; the lock is rewritten only when all of them are in place."""
    reporter = reporter or NullReporter()
    if not request.names:
        raise UsageError("name at least one model to fetch", "see `xtask models list`")
    entries = catalog.select(request.names)
    lock = read_lock(request.lock_path)
    pins = [pin for entry in entries for pin in _pins(entry, lock, locked=request.locked)]
    local = [pin.entry.local_path(request.models_dir, pin.file) for pin in pins]
    here = [_here(pin, path, cache) for pin, path in zip(pins, local, strict=True)]
    # One download per local file: two models may share a file (the catalog allows it
    # only when they pin the same bytes). A file here that contradicts its pin is
    # downloaded afresh (`force`): it is replaced only once the new bytes verify.
    wanted: dict[Path, tuple[_Pin, bool]] = {}
    for pin, path, state in zip(pins, local, here, strict=True):
        if not isinstance(state, FetchedFile):
            wanted.setdefault(path, (pin, state == "damaged"))
    downloaded = _download(wanted, request, cache, reporter)
    fetched: dict[str, list[FetchedFile]] = {entry.name: [] for entry in entries}
    commits: dict[str, set[str]] = {entry.name: set() for entry in entries}
    for pin, path, state in zip(pins, local, here, strict=True):
        file, commit = (state, None) if isinstance(state, FetchedFile) else downloaded[path]
        if commit:
            commits[pin.entry.name].add(commit)
        if pin.file.archive is not None:
            file = _unpacked(pin, file, request.models_dir, cache, reporter)
        fetched[pin.entry.name].append(file)
    models = tuple(
        FetchedModel(e.name, _commit(e, commits[e.name], lock), tuple(fetched[e.name]))
        for e in entries
    )
    if request.locked:
        return FetchResult(models, None)
    update_lock(request.lock_path, {m.name: _locked(catalog.get(m.name), m) for m in models})
    return FetchResult(models, request.lock_path)


def _pins(entry: ModelEntry, lock: Lockfile, *, locked: bool) -> list[_Pin]:
    """The catalog's pins, or with --locked the lock's, refused when the two disagree."""
    held = lock.models.get(entry.name)
    if not locked:
        current = held if held is not None and held.drift(entry) is None else None
        source = f"the catalog ({entry.source})"
        return [
            _Pin(entry, f, entry.revision, f.size, f.sha256, source,
                 current.file(f.path) if current else None, f.contents)
            for f in entry.files
        ]  # fmt: skip
    if held is None:
        raise UsageError(
            f"--locked: model {entry.name!r} is not in {lock.path}",
            f"run `xtask models fetch {entry.name}` without --locked to lock it, and commit "
            f"{lock.path.name}",
        )
    if (drift := held.drift(entry)) is not None:
        raise UsageError(
            f"--locked: {lock.path} no longer matches the catalog's {entry.name!r}: {drift}",
            f"run `xtask models fetch {entry.name}` without --locked to lock it again",
        )
    revision = held.commit or held.revision
    pins = []
    for wanted in entry.files:
        got = held.file(wanted.path)
        assert got is not None  # drift() checked every path
        pin = _Pin(entry, wanted, revision, got.size, got.sha256, str(lock.path), got, got.contents)
        pins.append(pin)
    return pins


def _here(pin: _Pin, path: Path, cache: HashCache) -> FetchedFile | Literal["damaged"] | None:
    """The file at `path` when its pinned bytes are already there (no request needed);
    "damaged" when it contradicts its pin; None when it is absent or only the server can
    say whether it is current (no complete pin)."""
    try:
        if not path.is_file() or (pin.sha256 is None and pin.size is None):
            return None
        size = path.stat().st_size
        sha256 = cache.sha256(path) if pin.sha256 is not None and size == pin.size else None
    except OSError:
        return None
    if pin.contradiction(sha256, size) is not None:
        return "damaged"
    if sha256 is None or pin.size is None:
        return None
    return FetchedFile(path, size, sha256, "present")


def _download(
    wanted: dict[Path, tuple[_Pin, bool]],
    request: FetchRequest,
    cache: HashCache,
    reporter: Reporter,
) -> dict[Path, tuple[FetchedFile, str | None]]:
    """Every wanted file through `download_many`, then each checked by its bytes whatever
    their source: a file found current by its ETag (or in the HF cache) that contradicts
    its pin, or is not the sha256 the hub advertises, is damaged and fetched again."""
    from bitnet_xtask.download.many import FileRequest, download_many

    checked: dict[Path, tuple[FetchedFile, str | None]] = {}
    for forced in (False, True):
        requests = [
            FileRequest(
                FileSpec(pin.file.path, pin.sha256, size=pin.size, pinned_by=pin.pinned_by),
                _options(request, pin, force=force or forced),
            )
            for pin, force in wanted.values()
        ]
        results = download_many(requests, connections=request.connections, reporter=reporter)
        damaged: dict[Path, tuple[_Pin, bool]] = {}
        for (path, (pin, _)), result in zip(wanted.items(), results, strict=True):
            if (file := _checked(pin, result, cache)) is not None:
                checked[path] = (file, result.commit)
            elif forced:
                raise HashMismatchError(
                    f"{path} is still not the file {pin.pinned_by} pins after a fresh download",
                    "check the pin against the file's page on the hub",
                )
            else:
                reporter.info(f"{path} is not the file the hub serves: downloading it again")
                damaged[path] = (pin, True)
        if not damaged:
            break
        wanted = damaged
    return checked


def _checked(pin: _Pin, result: DownloadResult, cache: HashCache) -> FetchedFile | None:
    """A downloaded file's bytes as they are on disk; None when a file that did not come
    over the network is not what it should be."""
    if result.source == "network":  # verified against the pin and the hub as it arrived
        sha256 = result.sha256 or cache.sha256(result.path)
        return FetchedFile(result.path, result.size, sha256, "network")
    # Current by its ETag, or adopted: the bytes must still be what the hub advertises
    # (an LFS file's sha256), else what the last fetch of the same request locked.
    sha256 = cache.sha256(result.path)
    known = result.sha256 or (pin.locked.sha256 if pin.locked is not None else None)
    if pin.contradiction(sha256, result.size) or known not in (None, sha256):
        return None
    return FetchedFile(result.path, result.size, sha256, result.source)


def _options(request: FetchRequest, pin: _Pin, *, force: bool) -> DownloadOptions:
    return replace(
        request.download,
        repo_id=pin.entry.repo,
        revision=pin.revision,
        out=request.models_dir,
        force=force,
    )


def _unpacked(
    pin: _Pin, file: FetchedFile, models_dir: Path, cache: HashCache, reporter: Reporter
) -> FetchedFile:
    """The archive unpacked (unless its pinned members are all in place) and checked."""
    from bitnet_xtask.archive import unpack

    destination = pin.entry.unpacked_dir(models_dir, pin.file)
    recorded = pin.locked.contents if pin.locked and pin.locked.sha256 == file.sha256 else ()
    known = pin.members or recorded
    if known and all(_is(destination / m.path, m.size, m.sha256, cache) for m in known):
        return replace(file, unpacked=destination, contents=known)
    reporter.info(f"unpacking {file.path.name} into {destination}")
    written = unpack(file.path, destination, pin.file.archive)
    members = tuple(_member(destination, path, cache) for path in sorted(written))
    found = {m.path: m for m in members}
    for wanted in pin.members:
        got = found.get(wanted.path)
        if got is None or (got.size, got.sha256) != (wanted.size, wanted.sha256):
            actual = f"{got.size:,} bytes with sha256 {got.sha256}" if got else "no such file"
            raise HashMismatchError(
                f"{pin.entry.name}: {file.path.name} member {wanted.path}: expected "
                f"{wanted.size:,} bytes with sha256 {wanted.sha256}, got {actual}",
                f"the archive is not the one pinned: check {pin.pinned_by}'s `contents`",
            )
    return replace(file, unpacked=destination, contents=members)


def _is(path: Path, size: int, sha256: str, cache: HashCache) -> bool:
    """The file at `path` is these bytes (the size first: no hashing a wrong one)."""
    try:
        return path.is_file() and path.stat().st_size == size and cache.sha256(path) == sha256
    except OSError:
        return False


def _member(destination: Path, relative: str, cache: HashCache) -> ArchiveMember:
    path = destination / relative
    return ArchiveMember(relative, path.stat().st_size, cache.sha256(path))


def _commit(entry: ModelEntry, seen: set[str], lock: Lockfile) -> str | None:
    """The commit the files came from: what the hub said (one commit: a branch that moved
    during the fetch is refused), else the lock's for the same request, else the
    revision itself when it is a commit."""
    if len(seen) > 1:
        raise NetworkError(
            f"{entry.name}: the hub served its files from {len(seen)} commits "
            f"({', '.join(sorted(seen))}): {entry.revision} moved during the fetch",
            "run the same command again",
        )
    if seen:
        return seen.pop()
    held = lock.models.get(entry.name)
    if held is not None and held.drift(entry) is None and held.commit:
        return held.commit
    return entry.commit


def _locked(entry: ModelEntry, model: FetchedModel) -> LockedModel:
    files = tuple(
        LockedFile(catalog_file.path, got.size, got.sha256, got.contents)
        for catalog_file, got in zip(entry.files, model.files, strict=True)
    )
    return LockedModel(entry.repo, entry.revision, model.commit, files)
