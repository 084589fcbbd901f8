"""fetch_source(): pinned sources downloaded from a real nginx, verified, unpacked safely."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.nginx import NginxServer

from bitnet_xtask.cpp.nar import nar_hash
from bitnet_xtask.cpp.pins import GithubPin, SdistPin
from bitnet_xtask.cpp.source import UnsafeArchive, fetch_source, safe_extract
from bitnet_xtask.errors import HashMismatchError

REV = "a" * 40


def make_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(x)\n")
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "build.sh").write_text("#!/bin/sh\n")
    (root / "build.sh").chmod(0o755)
    (root / "link").symlink_to("src/main.c")
    (root / "empty").mkdir()
    return root


def tarball(tree: Path, archive: Path, top: str) -> bytes:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=top)
    return archive.read_bytes()


@pytest.fixture
def served(nginx: NginxServer, tmp_path: Path) -> Iterator[tuple[NginxServer, Path, str]]:
    """A tree, its NAR hash, and a place under nginx's root for this test's files."""
    tree = make_tree(tmp_path / "tree")
    area = Path(nginx.root) / f"src-{os.getpid()}-{tmp_path.name}"
    tarball(tree, area / "gh" / "org" / "lib" / "archive" / f"{REV}.tar.gz", f"lib-{REV}")
    tarball(tree, area / "pkg" / "lib-1.0.tar.gz", "lib-1.0")
    try:
        yield nginx, area, nar_hash(tree)
    finally:
        shutil.rmtree(area, ignore_errors=True)


def test_github_pin_is_verified_by_nar_hash(
    served: tuple[NginxServer, Path, str], tmp_path: Path
) -> None:
    nginx, area, expected = served
    pin = GithubPin("lib", "org", "lib", REV, expected)
    tree = fetch_source(
        pin, tmp_path / "out" / "src", downloads=tmp_path / "dl",
        github=f"{nginx.url}/{area.name}/gh",
    )  # fmt: skip
    assert tree.verified == expected and nar_hash(tree.root) == expected
    assert os.access(tree.root / "build.sh", os.X_OK)
    assert (tree.root / "link").is_symlink() and (tree.root / "empty").is_dir()


def test_github_pin_with_a_wrong_hash_exits_13_and_leaves_nothing(
    served: tuple[NginxServer, Path, str], tmp_path: Path
) -> None:
    nginx, area, expected = served
    wrong = "sha256-" + "A" * 43 + "="
    with pytest.raises(HashMismatchError) as err:
        fetch_source(
            GithubPin("lib", "org", "lib", REV, wrong), tmp_path / "src",
            downloads=tmp_path / "dl", github=f"{nginx.url}/{area.name}/gh",
        )  # fmt: skip
    assert wrong in err.value.message and expected in err.value.message
    assert not (tmp_path / "src").exists()


def test_sdist_pin_is_verified_by_sha256(
    served: tuple[NginxServer, Path, str], tmp_path: Path
) -> None:
    nginx, area, _ = served
    data = (area / "pkg" / "lib-1.0.tar.gz").read_bytes()
    url = f"{nginx.url}/{area.name}/pkg/lib-1.0.tar.gz"
    pin = SdistPin("lib", "lib", "1.0", url, hashlib.sha256(data).hexdigest(), "src", {})
    tree = fetch_source(pin, tmp_path / "sdist", downloads=tmp_path / "dl")
    assert tree.root == tmp_path / "sdist" / "src" and (tree.root / "main.c").is_file()
    bad = SdistPin("lib", "lib", "1.0", url, "0" * 64, "src", {})
    with pytest.raises(HashMismatchError):
        fetch_source(bad, tmp_path / "sdist2", downloads=tmp_path / "dl2")
    assert not (tmp_path / "sdist2").exists()


def _evil(archive: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    with tarfile.open(archive, "w") as tar:
        good = tarfile.TarInfo("top/ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        member = tarfile.TarInfo(name)
        member.type = kind
        member.linkname = link
        tar.addfile(member, io.BytesIO(b""))
    return archive


@pytest.mark.parametrize(
    ("name", "kind", "link"),
    [
        ("top/../../evil", tarfile.REGTYPE, ""),
        ("/etc/evil", tarfile.REGTYPE, ""),
        ("top/escape", tarfile.SYMTYPE, "../../etc/passwd"),
        ("top/abs", tarfile.SYMTYPE, "/etc/passwd"),
        ("top/dev", tarfile.CHRTYPE, ""),
        ("other/file", tarfile.REGTYPE, ""),
    ],
)
def test_hostile_archives_are_refused_and_leave_nothing(
    tmp_path: Path, name: str, kind: bytes, link: str
) -> None:
    archive = _evil(tmp_path / "evil.tar", name, kind, link)
    with pytest.raises(UnsafeArchive):
        safe_extract(archive, tmp_path / "out" / "tree")
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "evil").exists()
