"""Nix Archive (NAR) serialization and hashing in pure Python.

Why: the pins file names each source tree by its NAR hash, the same value Nix's
`fetchFromGitHub` / `fetchzip` check. Computing it here, byte for byte what
`nix hash path` prints, lets Python prove that the tree it unpacked is the tree Nix
would build, without needing Nix installed.

The format (Eelco Dolstra's thesis, section 5.2.1; Nix's `src/libutil/archive.cc`):
every token is a *string*, a u64 little-endian length, the bytes, then zero bytes up
to a multiple of 8. An archive is `nix-archive-1` followed by one node:

    ( type regular [executable ""] contents <data> )
    ( type symlink target <target> )
    ( type directory { entry ( name <name> node <node> ) }* )

Directory entries are sorted by the raw bytes of their names (C++ `std::string`
order, not locale or case order). Only the owner's execute bit (`S_IXUSR`) is kept of
a file's mode; owners, times and other permission bits are dropped. Symlinks are
recorded, never followed, including when the root itself is one. Anything else
(fifos, sockets, devices) has no NAR form and is refused.

The hash is the SHA-256 of the archive in SRI form (`sha256-<base64>`), the spelling
pins.json, nixpkgs' `hash =` attributes and `nix hash path` use.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from bitnet_xtask.fs import file_kind

__all__ = ["NarError", "nar_hash", "nar_serialize"]

CHUNK_SIZE = 1 << 20
"""Bytes read from a regular file at a time: large enough to keep hashing fast,
small enough that a 200 MB tree is never held in memory."""

_FLUSH_AT = 1 << 16
"""Small tokens are batched into one buffer up to this size, so a tree of many small
files costs few `hashlib` calls rather than one per 8-byte token."""


class NarError(ValueError):
    """A path that cannot be put into a NAR (special file, bad name, file changing)."""


def _token(data: bytes) -> bytes:
    """One NAR string: u64 LE length, the bytes, zero padding to a multiple of 8."""
    return len(data).to_bytes(8, "little") + data + _padding(len(data))


def _padding(size: int) -> bytes:
    """The zero bytes that follow `size` bytes of data to reach a multiple of 8."""
    return b"\0" * (-size % 8)


_MAGIC = _token(b"nix-archive-1")
_OPEN = _token(b"(")
_CLOSE = _token(b")")
_REGULAR = _OPEN + _token(b"type") + _token(b"regular")
_EXECUTABLE = _token(b"executable") + _token(b"")
_CONTENTS = _token(b"contents")
_SYMLINK = _OPEN + _token(b"type") + _token(b"symlink") + _token(b"target")
_DIRECTORY = _OPEN + _token(b"type") + _token(b"directory")
_ENTRY = _token(b"entry") + _OPEN + _token(b"name")
_NODE = _token(b"node")


def _check_name(name: bytes, parent: bytes) -> None:
    """Refuse names Nix refuses: they would make an archive that unpacks elsewhere."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        shown = os.fsdecode(parent)
        raise NarError(f"{shown}: entry name {name!r} is not allowed in a Nix archive")


@dataclass(frozen=True)
class _Contents:
    """Where a regular file's bytes go in the archive: read then, in chunks."""

    path: bytes
    size: int


def nar_serialize(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the NAR serialization of `path` (a file, symlink or directory) in pieces.

    Streaming, so a large tree is hashed or written with bounded memory; file contents
    come in `chunk_size` reads, the tokens between them batched. Raises `NarError` for
    special files and for a file whose size changes while it is read (the hash of a
    tree that is being modified would describe no real tree). `OSError` from the file
    system (missing path, no permission) propagates unchanged.
    """
    buf = bytearray()
    for piece in _archive(os.fsencode(path)):
        if isinstance(piece, _Contents):
            if buf:
                yield bytes(buf)
                buf.clear()
            yield from _read_contents(piece.path, piece.size, chunk_size)
            continue
        buf += piece
        if len(buf) >= _FLUSH_AT:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _archive(root: bytes) -> Iterator[bytes | _Contents]:
    """The archive's tokens, depth first, with a `_Contents` where each file's bytes go.
    The walk keeps its own stack instead of recursing, so a deeply nested tree cannot hit
    Python's recursion limit."""
    yield _MAGIC
    # One frame per open directory: its path and its remaining names, sorted by bytes.
    stack: list[tuple[bytes, Iterator[bytes]]] = []
    yield from _node(root, stack)
    while stack:
        directory, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            yield _CLOSE  # the directory node
            if stack:
                yield _CLOSE  # the `entry (` it sits in
        else:
            yield _ENTRY + _token(name) + _NODE
            yield from _node(directory + b"/" + name, stack)


def _node(path: bytes, stack: list[tuple[bytes, Iterator[bytes]]]) -> Iterator[bytes | _Contents]:
    """One node: a file or symlink whole (and the `entry (` it sits in closed), or a
    directory opened, its frame pushed on `stack` for `_archive` to walk."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(path) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            _check_name(name, path)
        stack.append((path, iter(names)))
        yield _DIRECTORY
        return
    if stat.S_ISREG(st.st_mode):
        executable = _EXECUTABLE if st.st_mode & stat.S_IXUSR else b""
        yield _REGULAR + executable + _CONTENTS + st.st_size.to_bytes(8, "little")
        if st.st_size:
            yield _Contents(path, st.st_size)
            yield _padding(st.st_size)
        yield _CLOSE
    elif stat.S_ISLNK(st.st_mode):
        # Bytes in, bytes out: a target need not be valid UTF-8 (Path can't).
        yield _SYMLINK + _token(os.readlink(path)) + _CLOSE  # noqa: PTH115
    else:
        raise NarError(
            f"{os.fsdecode(path)}: {file_kind(st.st_mode)} cannot be put in a "
            "Nix archive (only regular files, directories and symlinks)"
        )
    if stack:
        yield _CLOSE  # the `entry (` this node sits in


def _read_contents(path: bytes, size: int, chunk_size: int) -> Iterator[bytes]:
    """Yield exactly `size` bytes of a regular file, refusing one that changed size.

    `O_NOFOLLOW` makes sure the file read is the one `lstat` saw as regular, not a
    symlink swapped in between.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        left = size
        while left:
            chunk = f.read(min(chunk_size, left))
            if not chunk:
                raise NarError(
                    f"{os.fsdecode(path)}: file shrank while being archived "
                    f"({size - left} of {size} bytes read)"
                )
            left -= len(chunk)
            yield chunk
        if f.read(1):
            raise NarError(f"{os.fsdecode(path)}: file grew while being archived")


def nar_hash(path: str | os.PathLike[str]) -> str:
    """The SRI NAR hash of `path`, exactly what `nix hash path <path>` prints.

    That is `sha256-` and the standard base64 (with padding) of the SHA-256 of the
    NAR serialization; the form nixpkgs' `hash = ...` attributes take.
    """
    digest = hashlib.sha256()
    for piece in nar_serialize(path):
        digest.update(piece)
    return "sha256-" + base64.b64encode(digest.digest()).decode("ascii")
