"""fetch-cpp for bitnet.cpp: kernel code generation, Clang, and a real build.

The real build needs microsoft/BitNet at the pinned revision with its llama.cpp fork in
3rdparty/llama.cpp. GitHub is not reachable from the test machine, so the sources come
from `XTASK_TEST_BITNET_SOURCE` (a recursive checkout) or from local git mirrors of the
two repositories; without either the build test is skipped and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bitnet_xtask.cpp import bitnet_kernels
from bitnet_xtask.cpp.build import BuildRequest, BuildResult, build_reference, cmake_flags
from bitnet_xtask.cpp.pins import GithubPin, load_pins
from bitnet_xtask.errors import UsageError

MIRRORS = Path(os.environ.get("XTASK_TEST_GIT_MIRRORS", "/work/.mirror"))


def _export(git_dir: Path, rev: str, destination: Path) -> None:
    """Write `rev`'s tree like `git archive` would; blobs a partial mirror lacks (the
    fork's multi-MiB vocab files, which no build step reads) are left out."""
    git = ["git", f"--git-dir={git_dir}"]
    listing = subprocess.run(
        [*git, "ls-tree", "-r", "-z", "--full-tree", rev], capture_output=True, check=True
    ).stdout
    for entry in filter(None, listing.split(b"\0")):
        meta, name = entry.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        target = destination / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "commit":  # a submodule: an empty directory, as in GitHub's tarball
            target.mkdir(exist_ok=True)
            continue
        blob = subprocess.run([*git, "cat-file", "blob", sha], capture_output=True, check=False)
        if blob.returncode != 0:
            continue
        if mode == "120000":
            target.symlink_to(blob.stdout.decode())
        else:
            target.write_bytes(blob.stdout)
            target.chmod(0o755 if mode == "100755" else 0o644)


@pytest.fixture(scope="session")
def bitnet_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if given := os.environ.get("XTASK_TEST_BITNET_SOURCE"):
        return Path(given)
    pin = load_pins()["bitnet.cpp"]
    assert isinstance(pin, GithubPin)
    fork = pin.submodules["3rdparty/llama.cpp"]
    bitnet_git = MIRRORS / "microsoft+BitNet" / "repo"
    fork_git = MIRRORS / "Eddie-Wang1120+llama.cpp" / "repo"
    for git_dir, rev in ((bitnet_git, pin.rev), (fork_git, fork.rev)):
        found = subprocess.run(
            ["git", f"--git-dir={git_dir}", "cat-file", "-e", f"{rev}^{{commit}}"],
            capture_output=True, check=False,
        )  # fmt: skip
        if found.returncode != 0:
            pytest.skip(
                "bitnet.cpp sources are not available locally (GitHub is unreachable): set "
                "XTASK_TEST_BITNET_SOURCE to a recursive checkout of microsoft/BitNet at "
                f"{pin.rev}, or provide git mirrors under {MIRRORS}"
            )
    tree = tmp_path_factory.mktemp("bitnet") / "BitNet"
    _export(bitnet_git, pin.rev, tree)
    _export(fork_git, fork.rev, tree / "3rdparty" / "llama.cpp")
    return tree


@pytest.fixture(scope="session")
def bitnet_built(bitnet_source: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    cache = tmp_path_factory.mktemp("bitnet-cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        return build_reference(BuildRequest(ref="bitnet.cpp", source=bitnet_source))
    finally:
        if previous is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = previous


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_bitnet_cpp_build_with_the_i2_s_kernel(
    bitnet_built: BuildResult, bitnet_source: Path
) -> None:
    names = {p.name for p in bitnet_built.bin_dir.iterdir()}
    assert {"bitnet-llama-cli", "xtask-logits", "libllama.so", "libggml.so"} <= names
    receipt = bitnet_built.receipt
    assert receipt["inputs"]["kernel"] == "i2_s"
    assert "-DBITNET_X86_TL2=OFF" in receipt["inputs"]["cmake_flags"]
    assert "clang" in receipt["compilers"]["cxx"].lower()
    header = bitnet_source / bitnet_kernels.LUT_HEADER
    assert "i2_s" in header.read_text()
    harness = subprocess.run(
        [str(bitnet_built.bin_dir / "xtask-logits"), "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert harness.returncode == 0, harness.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_second_bitnet_run_is_a_no_op(
    bitnet_built: BuildResult, bitnet_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated header is part of the hashed --source tree, written before hashing,
    so the second run sees the same inputs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(bitnet_built.directory.parents[1]))
    again = build_reference(BuildRequest(ref="bitnet.cpp", source=bitnet_source))
    assert again.built is False and again.receipt == bitnet_built.receipt


def test_kernel_generation_writes_the_header_once(tmp_path: Path) -> None:
    (tmp_path / "include").mkdir()
    header = bitnet_kernels.generate_kernels(tmp_path, "i2_s")
    first = header.stat().st_mtime_ns
    assert "#pragma once" in header.read_text()
    bitnet_kernels.generate_kernels(tmp_path, "i2_s")
    assert header.stat().st_mtime_ns == first  # unchanged: nothing recompiles


def test_kernel_generation_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a microsoft/BitNet checkout"):
        bitnet_kernels.generate_kernels(tmp_path, "i2_s")
    with pytest.raises(ValueError, match="supported: i2_s"):
        bitnet_kernels.generate_kernels(tmp_path, "tl2")


def test_bitnet_flags_keep_the_lut_kernels_out() -> None:
    flags = cmake_flags(BuildRequest(ref="bitnet.cpp"))
    assert "-DBITNET_ARM_TL1=OFF" in flags and "-DBITNET_X86_TL2=OFF" in flags
    assert not any("BITNET" in f for f in cmake_flags(BuildRequest()))


def test_bitnet_cpp_without_clang_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-clang")
    source = tmp_path / "BitNet"
    (source / "include").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"bitnet\.cpp needs Clang"):
        build_reference(BuildRequest(ref="bitnet.cpp", source=source))
    assert not (tmp_path / "bitnet_cpp" / "bitnet.cpp-local-cpu" / "build").exists()
    shutil.rmtree(source)
