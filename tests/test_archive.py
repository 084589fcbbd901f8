"""bitnet_xtask.archive: real hostile archives, built with tarfile (gzip, zstandard),
refused member by member with nothing written anywhere; good ones unpacked whole."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from mounts import Mounts

from bitnet_xtask.archive import LIMITS, ArchiveKind, Limits, UnsafeArchive, safe_extract, unpack
from bitnet_xtask.errors import ExitCode, NoSpaceError, UsageError

Member = tuple[tarfile.TarInfo, bytes]
KINDS: list[ArchiveKind] = ["tar.gz", "tar.zst"]


def member(
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    mode: int = 0o644,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_bytes(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def compress(raw: bytes, kind: str) -> bytes:
    if kind == "tar.gz":
        return gzip.compress(raw)
    if kind == "tar.zst":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def write(path: Path, raw: bytes, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(raw, kind))
    return path


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under `root` (links not followed) with its bytes or what it is."""
    seen: dict[str, bytes | str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISREG(info.st_mode):
                seen[key] = path.read_bytes()
            else:
                seen[key] = stat.filemode(info.st_mode)
    return seen


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """`in/` for the archive, `out/` for the destination, `outside/victim` to aim at."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim").write_text("untouched\n")
    (tmp_path / "out").mkdir()
    return tmp_path


GOOD = [
    member("./", kind=tarfile.DIRTYPE, mode=0o2777),
    member("./README", b"hello\n", mode=0o4644),
    member("./bin/run.sh", b"#!/bin/sh\n", mode=0o4755),
    member("./weights/", kind=tarfile.DIRTYPE, mode=0o1777),
    member("./weights/model.gguf", b"GGUF" + bytes(1000)),
    member("./weights/deep/more/l", kind=tarfile.SYMTYPE, link="../../model.gguf"),
    member("./weights/same.gguf", kind=tarfile.LNKTYPE, link="weights/model.gguf"),
    member("./weights/", kind=tarfile.DIRTYPE),  # a directory may be named twice
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_good_archive_is_unpacked_whole_with_sane_modes(area: Path, kind: str) -> None:
    archive = write(area / "in" / f"model.{kind}", tar_bytes(GOOD), kind)
    dest = area / "out" / "model"
    files = unpack(archive, dest)
    assert files == ["README", "bin/run.sh", "weights/model.gguf", "weights/same.gguf"]
    assert (dest / "README").read_bytes() == b"hello\n"
    assert (dest / "weights" / "deep" / "more" / "l").read_bytes().startswith(b"GGUF")
    assert (dest / "weights" / "deep" / "more" / "l").readlink() == Path("../../model.gguf")
    same, model = (dest / "weights" / "same.gguf").stat(), (dest / "weights" / "model.gguf").stat()
    assert same.st_ino == model.st_ino
    modes = {
        path: stat.S_IMODE(path.lstat().st_mode)
        for path in [dest, *dest.rglob("*")]
        if not path.is_symlink()
    }
    assert modes[dest / "bin" / "run.sh"] == 0o755 and modes[dest / "README"] == 0o644
    assert all(mode in (0o755, 0o644) for mode in modes.values()), modes
    assert all(mode == 0o755 for path, mode in modes.items() if path.is_dir())
    assert sorted(p.name for p in (area / "out").iterdir()) == ["model"]  # no staging left


def test_the_kind_comes_from_the_argument_or_the_name(area: Path) -> None:
    raw = tar_bytes([member("a.txt", b"a")])
    assert unpack(write(area / "in" / "m.tgz", raw, "tar.gz"), area / "out" / "1") == ["a.txt"]
    blob = write(area / "in" / "blob.bin", raw, "tar.zst")
    assert unpack(blob, area / "out" / "2", "tar.zst") == ["a.txt"]
    with pytest.raises(UsageError, match="cannot tell what kind of archive") as err:
        unpack(blob, area / "out" / "3")
    assert err.value.hint is not None and ".tar.zst" in err.value.hint
    assert not (area / "out" / "3").exists()


def test_bytes_that_are_not_what_the_name_says_are_refused(area: Path) -> None:
    named = write(area / "in" / "m.tar.zst", tar_bytes([member("a", b"a")]), "tar.gz")
    with pytest.raises(UsageError, match=r"named tar\.zst, but its bytes are gzip") as err:
        unpack(named, area / "out" / "m")
    assert err.value.exit_code == ExitCode.USAGE
    assert list((area / "out").iterdir()) == []


def test_several_frames_and_gzip_members_are_one_stream(area: Path) -> None:
    raw = tar_bytes([member("a", b"a" * 5000), member("b", b"b" * 5000)])
    zst = zstandard.ZstdCompressor()
    frames = zst.compress(raw[:3000]) + zst.compress(raw[3000:])
    (area / "in").mkdir()
    (area / "in" / "m.tar.zst").write_bytes(frames)
    (area / "in" / "m.tar.gz").write_bytes(gzip.compress(raw[:3000]) + gzip.compress(raw[3000:]))
    for kind in KINDS:
        assert unpack(area / "in" / f"m.{kind}", area / "out" / kind) == ["a", "b"]
        assert (area / "out" / kind / "b").read_bytes() == b"b" * 5000


def test_an_existing_destination_is_replaced_only_by_a_good_archive(area: Path) -> None:
    dest = area / "out" / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old\n")
    raw = tar_bytes([member("new", b"x"), member("../x")])
    bad = write(area / "in" / "bad.tar.gz", raw, "tar.gz")
    with pytest.raises(UnsafeArchive):
        unpack(bad, dest)
    assert snapshot(area / "out") == {"model": "drwxr-xr-x", "model/old.txt": b"old\n"}
    good = write(area / "in" / "good.tar.gz", tar_bytes([member("new", b"x")]), "tar.gz")
    assert unpack(good, dest) == ["new"]
    assert snapshot(area / "out") == {"model": "drwxr-xr-x", "model/new": b"x"}


@pytest.mark.parametrize("make", ["file", "symlink"])
def test_a_destination_that_is_not_a_directory_is_refused(area: Path, make: str) -> None:
    dest = area / "out" / "model"
    if make == "file":
        dest.write_text("mine\n")
    else:
        dest.symlink_to(area / "outside")
    archive = write(area / "in" / "m.tar.gz", tar_bytes([member("a", b"a")]), "tar.gz")
    before = snapshot(area)
    with pytest.raises(UsageError, match=r"refusing to replace .* not a directory"):
        unpack(archive, dest)
    assert snapshot(area) == before


HOSTILE: list[tuple[str, list[Member], str, str]] = [
    ("traversal", [member("ok", b"1"), member("a/../../outside/victim", b"x")],
     "a/../../outside/victim", "it leaves the tree"),
    ("absolute", [member("/tmp/evil-archive-test", b"x")], "/tmp/evil-archive-test",
     "it leaves the tree"),
    ("symlink out", [member("l", kind=tarfile.SYMTYPE, link="../outside/victim")], "l",
     "leaves the tree"),
    ("absolute symlink", [member("dir", kind=tarfile.SYMTYPE, link="/tmp"),
                          member("dir/file", b"x")], "dir", "leaves the tree"),
    ("symlink with .. after a name", [member("s1", kind=tarfile.SYMTYPE, link="."),
                                      member("sub/s3", kind=tarfile.SYMTYPE, link="../s1/..")],
     "sub/s3", "has '..' after a name"),
    ("hardlink out", [member("h", kind=tarfile.LNKTYPE, link="../outside/victim")], "h",
     "leaves the tree"),
    ("absolute hardlink", [member("h", kind=tarfile.LNKTYPE, link="/etc/passwd")], "h",
     "leaves the tree"),
    ("hardlink to a link", [member("s", kind=tarfile.SYMTYPE, link="f"), member("f", b"f"),
                            member("h", kind=tarfile.LNKTYPE, link="s")], "h",
     "names a symbolic link, not a regular file"),
    ("hardlink to nothing", [member("h", kind=tarfile.LNKTYPE, link="later"),
                             member("later", b"x")], "h", "names nothing"),
    ("write through a link to .", [member("a", kind=tarfile.SYMTYPE, link="."),
                                   member("a/../x", b"x")], "a/../x", "it leaves the tree"),
    ("write through an inside link", [member("sub/", kind=tarfile.DIRTYPE),
                                      member("d", kind=tarfile.SYMTYPE, link="sub"),
                                      member("d/file", b"x")], "d/file",
     "goes through d, a link the archive made"),
    ("a directory turned into a link", [member("d/", kind=tarfile.DIRTYPE),
                                        member("d", kind=tarfile.SYMTYPE, link="sub")], "d",
     "would replace a directory"),
    ("an implied directory turned into a link", [member("d/f", b"x"),
                                                 member("d", kind=tarfile.SYMTYPE, link=".")],
     "d", "would replace a directory"),
    ("a file written twice", [member("f", b"1"), member("f", b"2")], "f",
     "would replace a regular file"),
    ("a file under a file", [member("f", b"1"), member("f/g", b"2")], "f/g",
     "goes through f, a regular file"),
    ("character device", [member("dev", kind=tarfile.CHRTYPE)], "dev",
     "it is a character device"),
    ("block device", [member("blk", kind=tarfile.BLKTYPE)], "blk", "it is a block device"),
    ("FIFO", [member("fifo", kind=tarfile.FIFOTYPE)], "fifo", "it is a FIFO"),
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("members", "name", "why"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_a_hostile_member_is_refused_by_name_and_nothing_is_written(
    area: Path, kind: str, members: list[Member], name: str, why: str
) -> None:
    archive = write(area / "in" / f"evil.{kind}", tar_bytes(members), kind)
    before = snapshot(area)
    with pytest.raises(UnsafeArchive) as err:
        unpack(archive, area / "out" / "model")
    assert f"evil.{kind}: refusing archive member {name!r}: " in err.value.message
    assert why in err.value.message
    assert err.value.exit_code == ExitCode.FAILURE and err.value.hint
    assert snapshot(area) == before
    assert not Path("/tmp/evil-archive-test").exists()


def test_too_many_members_is_refused(area: Path) -> None:
    raw = tar_bytes([member(f"f{i}", b"x") for i in range(11)])
    archive = write(area / "in" / "many.tar.zst", raw, "tar.zst")
    with pytest.raises(UnsafeArchive, match=r"'f10': the archive has more than 10 members"):
        unpack(archive, area / "out" / "m", limits=Limits(members=10))
    assert list((area / "out").iterdir()) == []


def test_files_adding_up_past_the_limit_are_refused(area: Path) -> None:
    raw = tar_bytes([member("a", b"a" * 600), member("b", b"b" * 600)])
    archive = write(area / "in" / "big.tar.gz", raw, "tar.gz")
    with pytest.raises(UnsafeArchive, match=r"'b': the archive's files add up to more than 1,000"):
        unpack(archive, area / "out" / "m", limits=Limits(file_bytes=1000))
    assert list((area / "out").iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_member_declaring_two_tebibytes_is_refused_before_a_byte_is_read(
    area: Path, kind: str
) -> None:
    """The default cap, on a header alone: the data it declares never has to exist."""
    info = tarfile.TarInfo("huge.gguf")
    info.size = 2 << 40
    archive = write(area / "in" / f"huge.{kind}", info.tobuf(tarfile.GNU_FORMAT), kind)
    assert archive.stat().st_size < 1000
    with pytest.raises(UnsafeArchive, match=f"more than {LIMITS.file_bytes:,} bytes"):
        unpack(archive, area / "out" / "m")
    assert list((area / "out").iterdir()) == []


def test_a_file_larger_than_the_free_disk_is_exit_10_before_it_is_written(
    area: Path, mounts: Mounts
) -> None:
    disk = mounts.tmpfs(area / "small", "1m")
    raw = tar_bytes([member("z", bytes(4 << 20))])
    archive = write(area / "in" / "zeros.tar.gz", raw, "tar.gz")
    with pytest.raises(NoSpaceError, match=r"member 'z' is 4,194,304 bytes") as err:
        unpack(archive, disk / "m")
    assert err.value.exit_code == ExitCode.NO_SPACE
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_header_bomb_is_refused_in_bounded_memory(area: Path, kind: str) -> None:
    """A GNU long name of 8 MiB: tarfile would read it into memory whole."""
    raw = tar_bytes([member("d/" + "a" * (8 << 20), b"x")])
    archive = write(area / "in" / f"bomb.{kind}", raw, kind)
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafeArchive, match=r"its first header is larger than 4,194,304 bytes"):
        unpack(archive, area / "out" / "m")
    assert list((area / "out").iterdir()) == []


def test_megabytes_after_the_end_of_the_archive_are_refused(area: Path) -> None:
    raw = tar_bytes([member("a", b"a")]) + bytes(8 << 20)
    archive = write(area / "in" / "tail.tar.zst", raw, "tar.zst")
    with pytest.raises(UnsafeArchive, match="what follows its end-of-archive marker"):
        unpack(archive, area / "out" / "m")
    assert list((area / "out").iterdir()) == []


def _cut(raw: bytes, kind: str) -> bytes:
    data = compress(raw, kind)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("tar.gz", lambda raw: _cut(raw, "tar.gz")),
        ("tar.zst", lambda raw: _cut(raw, "tar.zst")),
        # A whole compressed stream of a tar cut at a member boundary: tarfile alone
        # would take it for a shorter, complete archive.
        ("tar.gz", lambda raw: gzip.compress(raw[:1536])),
        ("tar.zst", lambda raw: zstandard.ZstdCompressor().compress(raw[:1536])),
        # A gzip stream whose CRC is wrong, and one whose last bytes are missing.
        ("tar.gz", lambda raw: gzip.compress(raw)[:-8] + b"\0\0\0\0" + gzip.compress(raw)[-4:]),
        ("tar.gz", lambda raw: gzip.compress(raw)[:-4]),
        ("tar.gz", lambda raw: b""),
    ],
    ids=["gz cut", "zst cut", "gz member boundary", "zst member boundary", "gz crc",
         "gz trailer", "empty"],
)  # fmt: skip
def test_a_truncated_or_corrupt_archive_is_a_usage_error_and_leaves_nothing(
    area: Path, kind: str, damage: Callable[[bytes], bytes]
) -> None:
    raw = tar_bytes([member("a", os.urandom(1000)), member("b", os.urandom(100_000))])
    archive = area / "in" / f"broken.{kind}"
    archive.parent.mkdir()
    archive.write_bytes(damage(raw))
    with pytest.raises(UsageError, match="is not a readable tar archive") as err:
        unpack(archive, area / "out" / "m")
    assert err.value.exit_code == ExitCode.USAGE
    assert list((area / "out").iterdir()) == []


def test_an_archive_that_is_missing_or_a_fifo_is_a_usage_error(area: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        unpack(area / "in" / "absent.tar.gz", area / "out" / "m")
    fifo = area / "fifo.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="it is a FIFO"):  # without blocking on the open
        unpack(fifo, area / "out" / "m")
    assert list((area / "out").iterdir()) == []


# --- safe_extract: fetch-cpp's single top-level directory ------------------------------


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tar.zst"])
def test_safe_extract_makes_the_single_top_the_destination(area: Path, kind: str) -> None:
    members = [
        member("src-1.0/", kind=tarfile.DIRTYPE),
        member("src-1.0/build.sh", b"#!/bin/sh\n", mode=0o755),
        member("src-1.0/sub/link", kind=tarfile.SYMTYPE, link="../build.sh"),
    ]
    archive = write(area / "in" / f"src.{kind}", tar_bytes(members), kind)
    dest = area / "out" / "tree"
    assert safe_extract(archive, dest) == dest
    assert os.access(dest / "build.sh", os.X_OK) and (dest / "sub" / "link").is_symlink()
    assert sorted(p.name for p in (area / "out").iterdir()) == ["tree"]


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([member("top/a", b"a"), member("other/b", b"b")], "has 2 top-level entries, not one"),
        ([member("top", b"a")], "only top-level entry 'top' is a regular file"),
        # Inside the archive's root but outside the top, which becomes the destination.
        ([member("top/l", kind=tarfile.SYMTYPE, link="../x")], "its link to '../x' leaves"),
    ],
)
def test_safe_extract_refuses_what_would_not_stay_in_the_top(
    area: Path, members: list[Member], message: str
) -> None:
    archive = write(area / "in" / "src.tar.gz", tar_bytes(members), "tar.gz")
    with pytest.raises(UnsafeArchive, match=message):
        safe_extract(archive, area / "out" / "tree")
    assert list((area / "out").iterdir()) == []
