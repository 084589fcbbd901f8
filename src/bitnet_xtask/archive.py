"""Unpacking tar archives (plain, .tar.gz, .tar.zst) that we do not trust.

fetch-cpp unpacks source tarballs and the models layer unpacks model archives; both
come from servers, so both go through this one reader. An archive is read as a stream
(`tarfile` mode "r|" over gzip or zstandard), and every member is checked against what
has already been unpacked *before* it is written, into a private staging directory
next to the destination that is renamed into place only when the whole archive was
good: a refused or broken archive leaves nothing new behind and an existing
destination untouched.

Refused (`UnsafeArchive`, exit 1, naming the member and why): absolute names and
`..`; devices, FIFOs and unknown member types; a symbolic link that climbs out of the
tree, or has `..` after a name (that name may itself be a link, so where it leads
cannot be judged from the text); a hard link to anything but a regular file an earlier
member made; a member whose path goes through a link, or that would replace what an
earlier member made (so a directory never turns into a link). Python's own
`filter="tar"` checks each member again as a second line. Read as a stream,
`tarfile` ends quietly at a broken or missing header, which would make a truncated
archive look whole: here only the end-of-archive marker ends it, and the compressed
stream is read to its end, so a truncated or corrupt file is a `UsageError` (exit 2).

Bounds (`Limits`): at most 100,000 members, at most 1 TiB of files, each regular
file no larger than the free space where it lands (exit 10), and at most 4 MiB of
header (pax or GNU long-name records, which `tarfile` reads into memory) before each
member and of padding after the end: a zip-bomb-ish archive fails cleanly, in bounded
memory. Modes are not taken from the archive: directories and executables are 0755,
other files 0644; no setuid, setgid, sticky or group-writable bit ever lands.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal, Protocol

import zstandard

from bitnet_xtask.errors import NoSpaceError, UsageError, XtaskError
from bitnet_xtask.fs import (
    NO_SPACE_HINT,
    check_can_create,
    file_kind,
    fs_error,
    fsync_dir,
    open_regular,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from typing_extensions import Self

ArchiveKind = Literal["tar.gz", "tar.zst"]
"""The compressed tar archives a catalog entry may name."""
_Kind = Literal["tar", "tar.gz", "tar.zst"]

_SUFFIXES: tuple[tuple[str, ArchiveKind], ...] = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar.zst", "tar.zst"),
)
_MAGIC: tuple[tuple[bytes, _Kind], ...] = (
    (b"\x1f\x8b", "tar.gz"),
    (b"\x28\xb5\x2f\xfd", "tar.zst"),
)
_WORDS: dict[_Kind, str] = {"tar": "neither gzip nor zstd", "tar.gz": "gzip", "tar.zst": "zstd"}
_HAS_FILTER = hasattr(tarfile, "tar_filter")
#: The zero block that ends an archive; every other header error means the stream broke.
_END_OF_ARCHIVE: type[tarfile.HeaderError] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_SPECIAL = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}
_REFUSED_HINT = "nothing was unpacked; tell whoever publishes the archive"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """How much an archive may hold before it is refused as a bomb rather than unpacked."""

    members: int = 100_000  # a llama.cpp source tree has ~4,000; a model archive a handful
    file_bytes: int = 1 << 40  # the regular files' declared sizes, summed (1 TiB)
    header_bytes: int = 4 << 20  # header records before a member; padding after the end


LIMITS = Limits()


class UnsafeArchive(XtaskError):
    """An archive member that could write outside the destination, or a bomb (exit 1)."""


def archive_kind(name: str) -> ArchiveKind | None:
    """The kind a file name declares (.tar.gz, .tgz, .tar.zst), or None."""
    lower = name.lower()
    return next((kind for suffix, kind in _SUFFIXES if lower.endswith(suffix)), None)


def archive_stem(name: str) -> str | None:
    """The name without its archive suffix (`weights.tar.zst` -> `weights`), or None
    when it has none (or nothing before it)."""
    lower = name.lower()
    for suffix, _ in _SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def safe_extract(archive: Path, destination: Path, *, limits: Limits = LIMITS) -> Path:
    """Unpack `archive` (plain, gzip or zstd tar, told by its bytes) so that its single
    top-level directory becomes `destination`, replacing a directory there."""
    with _staging(destination) as staging:
        _unpack_into(archive, None, _Tree(staging, archive.name, destination, limits, floor=1))
        _install(_single_top(archive, staging), destination)
    return destination


def unpack(
    archive: Path,
    destination: Path,
    kind: ArchiveKind | None = None,
    *,
    limits: Limits = LIMITS,
) -> list[str]:
    """Unpack every member of `archive` under `destination` (replacing a directory
    there), durably; returns the relative paths of the regular files written, sorted.

    `kind` defaults to what the file name declares; the bytes must agree with it.
    """
    declared = kind or archive_kind(archive.name)
    if declared is None:
        raise UsageError(
            f"cannot tell what kind of archive {archive} is",
            "its name must end in " + ", ".join(suffix for suffix, _ in _SUFFIXES),
        )
    with _staging(destination) as staging:
        tree = _Tree(staging, archive.name, destination, limits, floor=0)
        _unpack_into(archive, declared, tree)
        _sync(tree)
        staging.chmod(0o755)
        _install(staging, destination)
    return sorted(str(path) for path in tree.files)


@dataclass
class _Tree:
    """What has been unpacked into `root` so far: each member is judged against it."""

    root: Path
    name: str  # the archive's file name, for messages
    destination: Path
    limits: Limits
    floor: int  # leading path components a link may not climb out of (1: the single top)
    dirs: set[PurePosixPath] = field(default_factory=set)  # real directories, checked
    files: list[PurePosixPath] = field(default_factory=list)  # regular files written
    members: int = 0
    size: int = 0


class _Member(tarfile.TarInfo):
    """A member header; only the end-of-archive marker ends the archive. `tarfile` stops
    quietly at an empty, truncated or invalid header after the first, which makes an
    archive cut at a member boundary look complete."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            if isinstance(exc, _END_OF_ARCHIVE):
                raise
            raise tarfile.ReadError(
                f"it ends before its end-of-archive marker ({exc}): truncated or corrupt"
            ) from None


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Budget(io.RawIOBase):
    """The decompressed stream, cut off at `limit`: `tarfile` reads a pax or GNU
    long-name header into memory whole, so a header claiming gigabytes of zeros (a few
    kilobytes compressed) would exhaust memory before any member could be checked. The
    loop moves the limit past each member it has checked."""

    def __init__(self, source: _Readable, header: int, archive: str) -> None:
        super().__init__()
        self._source, self._header, self._archive = source, header, archive
        self.position, self.limit, self.what = 0, header, "its first header"

    def allow(self, limit: int, what: str) -> None:
        self.limit, self.what = limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        room = self.limit - self.position
        if room <= 0:
            raise UnsafeArchive(
                f"{self._archive}: {self.what} is larger than {self._header:,} bytes (the limit)",
                _REFUSED_HINT,
            )
        data = self._source.read(min(len(view), room))
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


def _refuse(tree: _Tree, member: tarfile.TarInfo, why: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"{tree.name}: refusing archive member {member.name!r}: {why}", _REFUSED_HINT
    )


def _member_path(tree: _Tree, member: tarfile.TarInfo) -> PurePosixPath | None:
    """The member's normalized path; None for the root itself (`./`)."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise _refuse(tree, member, "it leaves the tree")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        what = _SPECIAL.get(member.type, f"of type {member.type!r}")
        raise _refuse(tree, member, f"it is {what}, not a file, dir or link")
    if not path.parts:
        if member.isdir():
            return None
        raise _refuse(tree, member, "it has no name inside the tree")
    return path


def _check_parents(tree: _Tree, member: tarfile.TarInfo, path: PurePosixPath) -> None:
    """Every directory on the way to `path` is a real directory (or not made yet)."""
    for parent in reversed(path.parents[:-1]):
        if parent in tree.dirs:
            continue
        try:
            mode = (tree.root / parent).lstat().st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise _refuse(tree, member, f"its path goes through {parent}, a link the archive made")
        if not stat.S_ISDIR(mode):
            raise _refuse(tree, member, f"its path goes through {parent}, {file_kind(mode)}")
        tree.dirs.add(parent)


def _check_new(tree: _Tree, member: tarfile.TarInfo, path: PurePosixPath) -> None:
    """Nothing an earlier member made is replaced; a directory may be named again."""
    try:
        mode = (tree.root / path).lstat().st_mode
    except FileNotFoundError:
        return
    if not (member.isdir() and stat.S_ISDIR(mode)):
        raise _refuse(tree, member, f"it would replace {file_kind(mode)} an earlier member made")


def _check_symlink(tree: _Tree, member: tarfile.TarInfo, path: PurePosixPath) -> None:
    """A link may climb (leading `..`) no higher than the tree's root, then descend."""
    link = member.linkname
    if not link:
        raise _refuse(tree, member, "it is a link to nothing")
    parts = [part for part in link.split("/") if part not in ("", ".")]
    climb = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
    if link.startswith("/") or climb > len(path.parts) - 1 - tree.floor:
        raise _refuse(tree, member, f"its link to {link!r} leaves the tree")
    if ".." in parts[climb:]:
        raise _refuse(
            tree, member, f"its link to {link!r} has '..' after a name, which a link could "
            "send out of the tree",
        )  # fmt: skip


def _check_hardlink(tree: _Tree, member: tarfile.TarInfo) -> None:
    """A hard link names a regular file an earlier member made, by a path without links."""
    target = PurePosixPath(member.linkname)
    if target.is_absolute() or ".." in target.parts or not target.parts:
        raise _refuse(tree, member, f"its link to {member.linkname!r} leaves the tree")
    _check_parents(tree, member, target)
    try:
        mode = (tree.root / target).lstat().st_mode
    except FileNotFoundError:
        mode = 0
    if not stat.S_ISREG(mode):
        what = file_kind(mode) if mode else "nothing"
        raise _refuse(
            tree, member, f"its hard link to {member.linkname!r} names {what}, not a "
            "regular file an earlier member made",
        )  # fmt: skip
    member.linkname = str(target)


def _check_size(tree: _Tree, member: tarfile.TarInfo) -> None:
    tree.members += 1
    if tree.members > tree.limits.members:
        why = f"the archive has more than {tree.limits.members:,} members (the limit)"
        raise _refuse(tree, member, why)
    if not member.isfile():
        return
    tree.size += member.size
    if tree.size > tree.limits.file_bytes:
        why = (
            f"the archive's files add up to more than {tree.limits.file_bytes:,} bytes (the limit)"
        )
        raise _refuse(tree, member, why)
    free = shutil.disk_usage(tree.root).free
    if member.size > free:
        raise NoSpaceError(
            f"not enough disk space to unpack {tree.name} into {tree.destination}: member "
            f"{member.name!r} is {member.size:,} bytes, {free:,} free",
            NO_SPACE_HINT,
        )


def _admit(tree: _Tree, member: tarfile.TarInfo) -> PurePosixPath | None:
    """Check one member before anything of it is written; None: nothing to write."""
    _check_size(tree, member)
    path = _member_path(tree, member)
    if path is None:
        return None
    _check_parents(tree, member, path)
    _check_new(tree, member, path)
    if member.issym():
        _check_symlink(tree, member, path)
    elif member.islnk():
        _check_hardlink(tree, member)
    member.name = str(path)  # what was checked is what is unpacked
    return path


def _extract(tar: tarfile.TarFile, tree: _Tree, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if _HAS_FILTER:  # our checks first, Python's own "tar" filter second
        try:
            tar.extract(member, tree.root, set_attrs=False, filter="tar")
        except tarfile.FilterError as exc:
            raise _refuse(tree, member, str(exc)) from None
    else:  # pragma: no cover - Python before 3.10.12
        tar.extract(member, tree.root, set_attrs=False)
    for parent in reversed(path.parents[:-1]):
        if parent not in tree.dirs:  # made on the way by tarfile
            (tree.root / parent).chmod(0o755)
            tree.dirs.add(parent)
    if member.isdir():
        (tree.root / path).chmod(0o755)
        tree.dirs.add(path)
    elif member.isfile():
        (tree.root / path).chmod(0o755 if member.mode & 0o100 else 0o644)
        tree.files.append(path)
    elif member.islnk():
        tree.files.append(path)


def _open(stack: contextlib.ExitStack, archive: Path, declared: _Kind | None) -> _Readable:
    """The decompressed bytes of `archive`, whose first bytes must match `declared`."""
    try:
        fd = open_regular(archive, follow_links=True)  # a FIFO would block, a device feed
    except FileNotFoundError:
        raise UsageError(f"cannot read {archive}: no such file") from None
    raw = stack.enter_context(os.fdopen(fd, "rb"))
    head = raw.peek(4)[:4]
    kind: _Kind = next((k for magic, k in _MAGIC if head.startswith(magic)), "tar")
    if not head:
        raise UsageError(f"{archive} is not a readable tar archive: it is empty")
    if declared is not None and kind != declared:
        raise UsageError(
            f"{archive} is not a readable tar archive: it is named {declared}, "
            f"but its bytes are {_WORDS[kind]}"
        )
    if kind == "tar.gz":
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "tar.zst":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return stack.enter_context(reader)
    return raw


def _unpack_into(archive: Path, declared: ArchiveKind | None, tree: _Tree) -> None:
    """Unpack every member of `archive` into `tree.root`, checking each first."""
    try:
        with contextlib.ExitStack() as stack:
            budget = _Budget(_open(stack, archive, declared), tree.limits.header_bytes, tree.name)
            stream = stack.enter_context(io.BufferedReader(budget, _CHUNK))
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|", tarinfo=_Member))
            for member in tar:
                path = _admit(tree, member)
                budget.allow(
                    tar.offset + tree.limits.header_bytes, f"the header after {member.name!r}"
                )
                if path is not None:
                    _extract(tar, tree, member)
            budget.allow(
                tar.offset + tree.limits.header_bytes, "what follows its end-of-archive marker"
            )
            while stream.read(_CHUNK):  # to the end: gzip's CRC, zstd's frames
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise UsageError(f"{archive} is not a readable tar archive: {exc}") from None
    except OSError as exc:
        raise fs_error(exc, tree.destination) from exc


def _single_top(archive: Path, staging: Path) -> Path:
    entries = list(staging.iterdir())
    if len(entries) != 1:
        raise UnsafeArchive(f"{archive.name} has {len(entries)} top-level entries, not one")
    mode = entries[0].lstat().st_mode
    if not stat.S_ISDIR(mode):
        raise UnsafeArchive(
            f"{archive.name}'s only top-level entry {entries[0].name!r} is "
            f"{file_kind(mode)}, not a directory"
        )
    return entries[0]


def _sync(tree: _Tree) -> None:
    """Make what was unpacked durable before it is renamed into place: the models layer
    trusts a verified folder after a crash."""
    for path in tree.files:
        fd = os.open(tree.root / path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in tree.dirs:
        fsync_dir(tree.root / directory)
    fsync_dir(tree.root)


def _refuse_unless_directory(destination: Path) -> None:
    try:
        mode = destination.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise fs_error(exc, destination) from exc
    if not stat.S_ISDIR(mode):
        raise UsageError(
            f"refusing to replace {destination}: it is {file_kind(mode)}, not a directory",
            "remove it (or choose another place) and run again",
        )


@contextlib.contextmanager
def _staging(destination: Path) -> Iterator[Path]:
    """A private directory next to `destination` (same file system: the rename is
    atomic), removed with whatever is left in it."""
    _refuse_unless_directory(destination)
    check_can_create(
        destination.parent, what="the folder to unpack into", hint="choose a writable folder"
    )
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    except OSError as exc:
        raise fs_error(exc, destination.parent) from exc
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(staged: Path, destination: Path) -> None:
    """Rename `staged` to `destination`; a directory there is moved aside first and
    removed after, so a failed rename puts it back."""
    _refuse_unless_directory(destination)
    try:
        old = None
        if os.path.lexists(destination):
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
            destination.replace(old)
        try:
            staged.rename(destination)
        except OSError:
            if old is not None:
                old.rename(destination)
            raise
        fsync_dir(destination.parent)
    except OSError as exc:
        raise fs_error(exc, destination) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
