"""The pure-Python NAR hasher against the real Nix (`nix hash path`, `nix-store --dump`).

Nix is the reference: every tree is built in tmp_path and its hash and archive bytes
are compared with what the installed `nix` produces. Tests that need Nix skip when it
is missing (`apt-get install nix-bin`); a few fixed vectors taken from Nix 2.8 keep the
format checked even then.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bitnet_xtask.cpp.nar import NarError, _check_name, nar_hash, nar_serialize

# Nix as root with no daemon, no store writes, no network: enough for `nix hash` and
# `nix-store --dump`, which only read the given path.
NIX_CONFIG = "\n".join(
    [
        "experimental-features = nix-command flakes",
        "build-users-group =",
        "sandbox = false",
        "substituters =",
        "flake-registry =",
    ]
)

NixRunner = Callable[..., bytes]


@pytest.fixture(scope="module")
def nix(tmp_path_factory: pytest.TempPathFactory) -> NixRunner:
    """Run the real `nix` / `nix-store` and return stdout; skip when Nix is unusable."""
    if shutil.which("nix") is None or shutil.which("nix-store") is None:
        pytest.skip("nix is not installed (apt-get install nix-bin)")
    home = tmp_path_factory.mktemp("nix-home")
    env = {**os.environ, "NIX_CONFIG": NIX_CONFIG, "XDG_CACHE_HOME": str(home / "cache")}

    def run(*args: str | Path) -> bytes:
        proc = subprocess.run(
            [str(a) for a in args], env=env, capture_output=True, check=False, timeout=60
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(map(str, args))} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout

    probe = tmp_path_factory.mktemp("nix-probe") / "f"
    probe.write_bytes(b"x")
    try:
        run("nix", "hash", "path", probe)
    except AssertionError as e:
        pytest.skip(f"nix is installed but `nix hash path` does not work here: {e}")
    return run


def nix_hash_path(nix: NixRunner, path: Path) -> str:
    return nix("nix", "hash", "path", path).decode().strip()


def nix_dump(nix: NixRunner, path: Path) -> bytes:
    return nix("nix-store", "--dump", path)


def rand(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- trees -------------------------------------------------------------------------


def tree_regular(root: Path) -> Path:
    return write(root / "f.txt", b"hello, nix\n")


def tree_executable(root: Path) -> Path:
    return write(root / "run.sh", b"#!/bin/sh\necho hi\n", 0o755)


def tree_empty_file(root: Path) -> Path:
    return write(root / "empty", b"")


def tree_exactly_8(root: Path) -> Path:
    return write(root / "eight", b"12345678")


def tree_exactly_9(root: Path) -> Path:
    return write(root / "nine", b"123456789")


def tree_big_file(root: Path) -> Path:
    return write(root / "big.bin", rand((3 << 20) + 5, seed=1))


def tree_empty_dir(root: Path) -> Path:
    d = root / "empty-dir"
    d.mkdir()
    return d


def tree_symlink_root(root: Path) -> Path:
    """The root itself a symlink: archived as a symlink, not followed."""
    write(root / "target.txt", b"not me")
    link = root / "link"
    link.symlink_to("target.txt")
    return link


def tree_dangling_root(root: Path) -> Path:
    link = root / "dangling"
    link.symlink_to("nowhere/at/all")
    return link


def tree_nested(root: Path) -> Path:
    """Files, executables, symlinks of every kind, and names whose byte order differs
    from case or locale order (and one name that is not UTF-8)."""
    top = root / "src"
    names = ["B", "a", "_x", "é", "e\u0301", "Z", "a.txt", "a-b", "a b", "10", "9", ".hidden"]
    for i, name in enumerate(names):
        write(top / name, f"{name} {i}\n".encode())
    write(top / os.fsdecode(b"\xff\xfe-raw"), b"not utf-8 name\n")
    write(top / "bin" / "tool", b"\x7fELF pretend\n", 0o755)
    write(top / "bin" / "owner-x-only", b"x", 0o700)
    write(top / "bin" / "group-x-only", b"x", 0o654)
    write(top / "lib" / "deep" / "er" / "est" / "file.c", rand(1000, seed=2))
    write(top / "lib" / "eight", b"abcdefgh")
    write(top / "lib" / "nine", b"abcdefghi")
    write(top / "lib" / "empty", b"")
    (top / "lib" / "empty-subdir").mkdir()
    (top / "link-rel").symlink_to("lib/eight")
    (top / "link-up").symlink_to("../src/a")
    (top / "link-dangling").symlink_to("does/not/exist")
    (top / "link-abs").symlink_to("/etc/hostname")
    (top / "link-dir").symlink_to("lib")  # a symlink to a directory: not followed
    (top / "lib" / "deep" / "loop").symlink_to("..")
    return top


def tree_deep(root: Path) -> Path:
    """Deeper than Python's default recursion limit: the walk must not recurse."""
    top = root / "deep"
    top.mkdir()
    d = top
    for _ in range(1100):
        d = d / "d"
        d.mkdir()  # one level at a time: mkdir(parents=True) itself recurses
    (d / "leaf").write_bytes(b"bottom\n")
    return top


TREES: dict[str, Callable[[Path], Path]] = {
    "regular": tree_regular,
    "executable": tree_executable,
    "empty-file": tree_empty_file,
    "exactly-8-bytes": tree_exactly_8,
    "exactly-9-bytes": tree_exactly_9,
    "big-file": tree_big_file,
    "empty-dir": tree_empty_dir,
    "symlink-root": tree_symlink_root,
    "dangling-symlink-root": tree_dangling_root,
    "nested": tree_nested,
    "deep": tree_deep,
}


def remove_chain(top: Path) -> None:
    """Remove tree_deep's chain bottom-up: pytest's rmtree of old temp dirs recurses."""
    dirs = [top]
    while (dirs[-1] / "d").is_dir():
        dirs.append(dirs[-1] / "d")
    (dirs[-1] / "leaf").unlink()
    for directory in reversed(dirs):
        directory.rmdir()


@pytest.mark.parametrize("name", list(TREES))
def test_matches_nix(nix: NixRunner, tmp_path: Path, name: str) -> None:
    path = TREES[name](tmp_path)
    try:
        assert nar_hash(path) == nix_hash_path(nix, path)
        expected = nix_dump(nix, path)
        assert b"".join(nar_serialize(path)) == expected
        # Tiny reads change only how the stream is cut, never its bytes.
        assert b"".join(nar_serialize(path, chunk_size=7)) == expected
    finally:
        if name == "deep":
            remove_chain(path)


@pytest.mark.parametrize(
    "mode", [0o644, 0o755, 0o700, 0o100, 0o744, 0o654, 0o611, 0o444, 0o4755, 0o2644, 0o1644]
)
def test_executable_bit_is_owner_x_only(nix: NixRunner, tmp_path: Path, mode: int) -> None:
    """Nix keeps `st_mode & S_IXUSR` and drops every other mode bit."""
    path = write(tmp_path / "f", b"mode test\n", mode)
    assert nar_hash(path) == nix_hash_path(nix, path)
    assert (b"executable" in b"".join(nar_serialize(path))) == bool(mode & 0o100)


def test_stream_is_bounded(tmp_path: Path) -> None:
    """A big file arrives in chunk-sized pieces, not as one blob."""
    path = write(tmp_path / "big", rand(5 << 20, seed=3))
    pieces = list(nar_serialize(path, chunk_size=1 << 20))
    assert max(map(len, pieces)) <= 1 << 20
    assert sum(map(len, pieces)) == 96 + (5 << 20) + 16


# --- fixed vectors from Nix 2.8 (run without Nix) ------------------------------------


def test_known_vectors(tmp_path: Path) -> None:
    """Values printed by Nix 2.8, so the format stays checked where Nix is absent."""
    assert nar_hash(write(tmp_path / "hi", b"hi\n")) == (
        "sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY="
    )
    assert nar_hash(write(tmp_path / "e", b"")) == (
        "sha256-d6xi4mKdjkX2JFicDIv5niSzpyI0m/Hnm8GGAIU04kY="
    )


def test_nar_layout_of_a_small_file(tmp_path: Path) -> None:
    """The exact bytes for one 9-byte file: tokens, lengths and padding."""
    path = write(tmp_path / "nine", b"123456789")

    def tok(s: bytes) -> bytes:
        return len(s).to_bytes(8, "little") + s + b"\0" * (-len(s) % 8)

    expected = b"".join(
        tok(t) for t in [b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"123456789"]
    ) + tok(b")")
    assert b"".join(nar_serialize(path)) == expected


# --- refusals ------------------------------------------------------------------------


def test_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe: a FIFO cannot be put in a Nix archive"):
        nar_hash(fifo)
    tree = tmp_path / "tree"
    write(tree / "ok", b"fine")
    os.mkfifo(tree / "zz-pipe")
    with pytest.raises(NarError, match=r"zz-pipe: a FIFO"):
        nar_hash(tree)


def test_socket_is_refused(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(NarError, match="a socket cannot be put"):
            nar_hash(path)


@pytest.mark.parametrize("bad", [b"", b".", b"..", b"a/b", b"nul\0"])
def test_bad_names_are_refused(bad: bytes) -> None:
    with pytest.raises(NarError, match="is not allowed in a Nix archive"):
        _check_name(bad, b"/some/dir")


def test_missing_path_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        nar_hash(tmp_path / "absent")


def test_file_changing_while_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "f", rand(3 << 20, seed=4))
    stream = nar_serialize(path, chunk_size=1 << 20)
    next(stream)  # header
    next(stream)  # first MiB of contents
    with path.open("r+b") as f:
        f.truncate(1 << 20)
    with pytest.raises(NarError, match="shrank while being archived"):
        list(stream)

    write(path, rand(3 << 20, seed=4))
    stream = nar_serialize(path, chunk_size=1 << 20)
    next(stream)
    with path.open("ab") as f:
        f.write(b"more")
    with pytest.raises(NarError, match="grew while being archived"):
        list(stream)
