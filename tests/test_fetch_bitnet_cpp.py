"""fetch-cpp for bitnet.cpp: kernel code generation, Clang, and a real build.

The real build (`bitnet_build` in conftest) needs microsoft/BitNet at the pinned
revision with its llama.cpp fork; without local sources (tests/references.py) it is
skipped and says why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from references import run_cli_and_harness

from bitnet_xtask.cpp import bitnet_kernels
from bitnet_xtask.cpp.build import BuildRequest, BuildResult, build_reference, cmake_flags
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures import generate_fixture


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_bitnet_cpp_build_with_the_i2_s_kernel(
    bitnet_build: BuildResult, bitnet_source: Path
) -> None:
    names = {p.name for p in bitnet_build.bin_dir.iterdir()}
    assert {"bitnet-llama-cli", "xtask-logits", "libllama.so", "libggml.so"} <= names
    latest = bitnet_build.directory.parent / "bitnet-llama-cli"  # the reference guide's path
    assert latest.resolve() == bitnet_build.bin_dir / "bitnet-llama-cli"
    receipt = bitnet_build.receipt
    assert receipt["inputs"]["kernel"] == "i2_s"
    assert "-DBITNET_X86_TL2=OFF" in receipt["inputs"]["cmake_flags"]
    assert "clang" in receipt["compilers"]["cxx"].lower()
    header = bitnet_source / bitnet_kernels.LUT_HEADER
    assert "i2_s" in header.read_text()
    harness = subprocess.run(
        [str(bitnet_build.bin_dir / "xtask-logits"), "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert harness.returncode == 0, harness.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_bitnet_llama_cli_and_the_harness_run_an_i2_s_model(
    bitnet_build: BuildResult, tmp_path: Path
) -> None:
    model = generate_fixture("tiny", "bitnet", "i2_s", 0, tmp_path).model
    run_cli_and_harness(bitnet_build.bin_dir, "bitnet-llama-cli", model, tmp_path / "out")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_second_bitnet_run_is_a_no_op(
    bitnet_build: BuildResult, bitnet_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated header is part of the hashed --source tree, written before hashing,
    so the second run sees the same inputs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(bitnet_build.directory.parents[1]))
    again = build_reference(BuildRequest(ref="bitnet.cpp", source=bitnet_source))
    assert again.built is False and again.receipt == bitnet_build.receipt


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
