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

Hashes are shown in two spellings nixpkgs uses: SRI (`sha256-<base64>`) and Nix's own
base-32 (`0123456789abcdfghijklmnpqrsvwxyz`, least significant bits last), so both
conversions live here too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterator

__all__ = [
    "HASH_SIZES",
    "NIX32_ALPHABET",
    "NarError",
    "from_nix32",
    "nar_digest",
    "nar_hash",
    "nar_serialize",
    "nix32_to_sri",
    "sri_to_nix32",
    "to_nix32",
    "to_sri",
]

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
"""Nix's base-32 digits: 0-9 and a-z without e, o, u, t (to avoid spelling words)."""

HASH_SIZES: dict[str, int] = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
"""Digest size in bytes of each algorithm Nix accepts in a hash string."""

CHUNK_SIZE = 1 << 20
"""Bytes read from a regular file at a time: large enough to keep hashing fast,
small enough that a 200 MB tree is never held in memory."""

_FLUSH_AT = 1 << 16
"""Small tokens are batched into one buffer up to this size, so a tree of many small
files costs few `hashlib` calls rather than one per 8-byte token."""

_NIX32_INDEX = {c: i for i, c in enumerate(NIX32_ALPHABET)}


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


def _special_kind(mode: int) -> str:
    """A readable name for a file type that has no NAR form, for error messages."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"file of unknown type (mode {mode:o})"


def _check_name(name: bytes, parent: bytes) -> None:
    """Refuse names Nix refuses: they would make an archive that unpacks elsewhere."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        shown = os.fsdecode(parent)
        raise NarError(f"{shown}: entry name {name!r} is not allowed in a Nix archive")


def nar_serialize(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the NAR serialization of `path` (a file, symlink or directory) in pieces.

    Streaming, so a large tree is hashed or written with bounded memory; file contents
    come in `chunk_size` reads. The walk keeps its own stack instead of recursing, so a
    deeply nested tree cannot hit Python's recursion limit. Raises `NarError` for
    special files and for a file whose size changes while it is read (the hash of a
    tree that is being modified would describe no real tree). `OSError` from the file
    system (missing path, no permission) propagates unchanged.
    """
    root = os.fsencode(path)
    buf = bytearray(_MAGIC)
    # One frame per open directory: its path and its remaining names, sorted by bytes.
    stack: list[tuple[bytes, Iterator[bytes]]] = []
    current: bytes | None = root
    while True:
        if current is not None:
            st = os.lstat(current)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                buf += _REGULAR
                if mode & stat.S_IXUSR:
                    buf += _EXECUTABLE
                buf += _CONTENTS
                buf += st.st_size.to_bytes(8, "little")
                if st.st_size:
                    yield bytes(buf)
                    buf.clear()
                    yield from _read_contents(current, st.st_size, chunk_size)
                    buf += _padding(st.st_size)
                buf += _CLOSE
                if stack:
                    buf += _CLOSE  # the `entry (` this node sits in
            elif stat.S_ISLNK(mode):
                buf += _SYMLINK
                # Bytes in, bytes out: a target need not be valid UTF-8 (Path can't).
                buf += _token(os.readlink(current))  # noqa: PTH115
                buf += _CLOSE
                if stack:
                    buf += _CLOSE
            elif stat.S_ISDIR(mode):
                buf += _DIRECTORY
                with os.scandir(current) as it:
                    names = sorted(entry.name for entry in it)
                for name in names:
                    _check_name(name, current)
                stack.append((current, iter(names)))
            else:
                raise NarError(
                    f"{os.fsdecode(current)}: a {_special_kind(mode)} cannot be put in a "
                    "Nix archive (only regular files, directories and symlinks)"
                )
            current = None
        if not stack:
            break
        dir_path, names_left = stack[-1]
        next_name = next(names_left, None)
        if next_name is None:
            stack.pop()
            buf += _CLOSE  # the directory node
            if stack:
                buf += _CLOSE  # the `entry (` it sits in
        else:
            buf += _ENTRY
            buf += _token(next_name)
            buf += _NODE
            current = dir_path + b"/" + next_name
        if len(buf) >= _FLUSH_AT:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


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


def nar_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> bytes:
    """The raw digest of the NAR serialization of `path` (see `nar_serialize`)."""
    if algorithm not in HASH_SIZES:
        raise ValueError(f"unknown hash algorithm {algorithm!r}; Nix knows {sorted(HASH_SIZES)}")
    h = hashlib.new(algorithm)
    for piece in nar_serialize(path):
        h.update(piece)
    return h.digest()


def nar_hash(path: str | os.PathLike[str]) -> str:
    """The SRI NAR hash of `path`, exactly what `nix hash path <path>` prints.

    That is `sha256-` and the standard base64 (with padding) of the SHA-256 of the
    NAR serialization; the form nixpkgs' `hash = ...` attributes take.
    """
    return _sri("sha256", nar_digest(path, "sha256"))


def _sri(algorithm: str, digest: bytes) -> str:
    return f"{algorithm}-{base64.b64encode(digest).decode('ascii')}"


def to_nix32(digest: bytes) -> str:
    """Nix's base-32 spelling of a digest (what `nix hash to-base32` prints).

    Nix reads the digest as one little-endian number and writes its base-32 digits
    most significant first, `ceil(8 * len / 5)` of them: not RFC 4648 base32, whose
    bit order and alphabet both differ.
    """
    n = int.from_bytes(digest, "little")
    length = (len(digest) * 8 + 4) // 5
    out = []
    for _ in range(length):
        out.append(NIX32_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def from_nix32(text: str, size: int) -> bytes:
    """Decode Nix base-32 into a digest of `size` bytes, refusing any bad input.

    Checks the length, every character, and that no bits are set beyond `size`
    bytes (a 52-digit string holds 260 bits; a sha256 uses 256), as Nix does.
    """
    length = (size * 8 + 4) // 5
    if len(text) != length:
        raise ValueError(
            f"Nix base-32 hash {text!r} has {len(text)} characters; "
            f"a {size}-byte digest needs {length}"
        )
    n = 0
    for c in text:
        digit = _NIX32_INDEX.get(c)
        if digit is None:
            raise ValueError(f"Nix base-32 hash {text!r} contains invalid character {c!r}")
        n = (n << 5) | digit
    if n >> (size * 8):
        raise ValueError(f"Nix base-32 hash {text!r} does not fit in {size} bytes")
    return n.to_bytes(size, "little")


def _parse_sri(sri: str) -> tuple[str, bytes]:
    """Split and check an SRI hash `<algo>-<base64>`: known algorithm, right length."""
    algorithm, sep, b64 = sri.partition("-")
    if not sep or algorithm not in HASH_SIZES:
        raise ValueError(f"{sri!r} is not an SRI hash like 'sha256-<base64>'")
    try:
        digest = base64.b64decode(b64, validate=True)
    except binascii.Error as e:
        raise ValueError(f"SRI hash {sri!r} has invalid base64: {e}") from None
    if len(digest) != HASH_SIZES[algorithm]:
        raise ValueError(
            f"SRI hash {sri!r} decodes to {len(digest)} bytes; {algorithm} has "
            f"{HASH_SIZES[algorithm]}"
        )
    return algorithm, digest


def sri_to_nix32(sri: str) -> str:
    """`sha256-<base64>` to the bare Nix base-32 digits (`nix hash to-base32`)."""
    return to_nix32(_parse_sri(sri)[1])


def nix32_to_sri(text: str, algorithm: str | None = None) -> str:
    """Nix base-32 (bare, or `sha256:`-prefixed) to SRI (`nix hash to-sri`).

    Without a prefix or `algorithm`, the algorithm follows from the length, which is
    different for each one Nix knows (md5 26, sha1 32, sha256 52, sha512 103).
    """
    prefix, sep, rest = text.partition(":")
    if sep:
        if algorithm is not None and algorithm != prefix:
            raise ValueError(f"hash {text!r} is {prefix}, not {algorithm}")
        algorithm, text = prefix, rest
    if algorithm is None:
        by_length = {(size * 8 + 4) // 5: name for name, size in HASH_SIZES.items()}
        algorithm = by_length.get(len(text))
        if algorithm is None:
            raise ValueError(f"{text!r} has the length of no Nix base-32 hash")
    if algorithm not in HASH_SIZES:
        raise ValueError(f"unknown hash algorithm {algorithm!r}; Nix knows {sorted(HASH_SIZES)}")
    return _sri(algorithm, from_nix32(text, HASH_SIZES[algorithm]))


def to_sri(text: str, algorithm: str | None = None) -> str:
    """Any hash spelling nixpkgs uses, normalized to SRI, for comparing pins.

    Accepts SRI (`sha256-<base64>`), and `<algo>:<digits>` or bare digits (with
    `algorithm`) in base-16, Nix base-32 or base64, told apart by length as Nix does.
    """
    prefix, sep, rest = text.partition(":")
    if not sep and "-" in text:
        algorithm_sri, digest = _parse_sri(text)
        if algorithm is not None and algorithm != algorithm_sri:
            raise ValueError(f"hash {text!r} is {algorithm_sri}, not {algorithm}")
        return _sri(algorithm_sri, digest)
    if sep:
        if algorithm is not None and algorithm != prefix:
            raise ValueError(f"hash {text!r} is {prefix}, not {algorithm}")
        algorithm, text = prefix, rest
    if algorithm is None:
        raise ValueError(f"hash {text!r} names no algorithm (use SRI or '<algo>:<hash>')")
    size = HASH_SIZES.get(algorithm)
    if size is None:
        raise ValueError(f"unknown hash algorithm {algorithm!r}; Nix knows {sorted(HASH_SIZES)}")
    if len(text) == size * 2:
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{algorithm} hash {text!r} is not valid base-16") from None
    elif len(text) == (size * 8 + 4) // 5:
        digest = from_nix32(text, size)
    elif len(text) == (size + 2) // 3 * 4:
        try:
            digest = base64.b64decode(text, validate=True)
        except binascii.Error as e:
            raise ValueError(f"{algorithm} hash {text!r} has invalid base64: {e}") from None
    else:
        raise ValueError(f"{algorithm} hash {text!r} has the length of no known encoding")
    return _sri(algorithm, digest)
