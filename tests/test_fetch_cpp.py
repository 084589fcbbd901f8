"""fetch-cpp for real: the pinned llama.cpp sdist, verified and built with CMake + Ninja.

The sdist comes from PyPI through pip (a registry client) once per session and is then
served by the local nginx, so the code under test downloads only from 127.0.0.1.
The build takes minutes on 2 cores; it runs once per session and the tests share it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Xtask
from servers.nginx import NginxServer

from bitnet_xtask.cpp.build import (
    BuildError,
    BuildRequest,
    BuildResult,
    build_reference,
    resolve_pin,
)
from bitnet_xtask.cpp.nar import nar_hash
from bitnet_xtask.cpp.pins import SdistPin, load_pins
from bitnet_xtask.errors import HashMismatchError, UsageError


def _packaged_pin() -> SdistPin:
    pin = load_pins()["llama.cpp"]
    assert isinstance(pin, SdistPin)
    return pin


PIN = _packaged_pin()
SDIST = PIN.url.rsplit("/", 1)[1]


@pytest.fixture(scope="session")
def local_pin(nginx: NginxServer, tmp_path_factory: pytest.TempPathFactory) -> SdistPin:
    """The real pin, with its URL moved to nginx after pip fetched the exact file."""
    cached = os.environ.get("XTASK_TEST_LLAMA_SDIST")
    served = Path(nginx.root) / "sdists" / SDIST
    served.parent.mkdir(exist_ok=True)
    if cached and Path(cached).is_file():
        shutil.copyfile(cached, served)
    else:
        fetched = tmp_path_factory.mktemp("pip")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PIN.package,
             "-q", "-d", str(fetched), f"{PIN.package}=={PIN.version}"],
            check=True, timeout=900,
        )  # fmt: skip
        shutil.copyfile(fetched / SDIST, served)
    return replace(PIN, url=f"{nginx.url}/sdists/{SDIST}")


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("xdg")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def built(local_pin: SdistPin, cache_home: Path) -> BuildResult:
    return build_reference(BuildRequest(), pins={"llama.cpp": local_pin})


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_llama_cpp_build_from_the_pinned_sdist(built: BuildResult) -> None:
    assert built.built is True
    names = {p.name for p in built.bin_dir.iterdir()}
    assert "llama-cli" in names and any(n.startswith("libllama.so") for n in names)
    receipt = json.loads((built.directory / "receipt.json").read_text())
    assert receipt["inputs"]["source"] == f"sha256:{PIN.sha256}"
    assert "-DGGML_NATIVE=OFF" in receipt["inputs"]["cmake_flags"]
    assert receipt["cli_target"] in ("llama-cli", "llama-completion", "llama-simple")
    harness = next(b for b in receipt["binaries"] if b["path"].endswith("/xtask-logits"))
    assert any(lib.startswith("libllama.so") for lib in harness["needed"])
    # bin/ works on its own: libraries are found next to the binaries ($ORIGIN).
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run(
        [str(built.bin_dir / "llama-cli"), "--version"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "version" in (run.stdout + run.stderr).lower()
    assert (built.directory / "build.log").stat().st_size > 0
    # The harness, built against the same libllama, runs standalone from bin/.
    harness = subprocess.run(
        [str(built.bin_dir / "xtask-logits"), "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert harness.returncode == 0 and "--model" in harness.stdout + harness.stderr
    missing = subprocess.run(
        [str(built.bin_dir / "xtask-logits"), "--model", "/nonexistent.gguf",
         "--prompt", "hi", "--out", str(built.directory / "harness-out")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_second_run_does_nothing_and_says_so(
    built: BuildResult, local_pin: SdistPin, xtask: Xtask, cache_home: Path
) -> None:
    again = build_reference(BuildRequest(), pins={"llama.cpp": local_pin})
    assert again.built is False and again.receipt == built.receipt
    # Through the CLI too (the packaged pin has the same inputs as the local one: only
    # the URL differs, which is not a build input).
    started = time.monotonic()
    run = xtask.run("fetch-cpp", "--json", env=xtask.env(XDG_CACHE_HOME=str(cache_home)))
    elapsed = time.monotonic() - started
    assert run.code == 0, run.stderr
    done = json.loads(run.stdout.splitlines()[-1])
    assert done["built"] is False and done["cached"] is True
    assert "nothing to do" in run.stderr
    print(f"no-op fetch-cpp took {elapsed:.2f} s")  # measured in bench/, not asserted


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_force_rebuilds_incrementally_from_the_verified_source(
    built: BuildResult, local_pin: SdistPin
) -> None:
    again = build_reference(BuildRequest(force=True), pins={"llama.cpp": local_pin})
    assert again.built is True
    log = (again.directory / "build.log").read_text()
    assert "reusing the verified source" not in log  # said to the reporter, not the log
    assert "ninja: no work to do." in log


def test_a_wrong_sdist_hash_exits_13_and_writes_no_receipt(
    local_pin: SdistPin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bad = replace(local_pin, sha256="0" * 64)
    with pytest.raises(HashMismatchError) as err:
        build_reference(BuildRequest(), pins={"llama.cpp": bad})
    assert "0" * 64 in err.value.message and PIN.sha256 in err.value.message
    assert not list(tmp_path.glob("bitnet_cpp/*/receipt.json"))


def test_a_missing_compiler_is_named_before_anything_runs(
    local_pin: SdistPin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with pytest.raises(UsageError, match="a C\\+\\+ compiler"):
        build_reference(BuildRequest(), pins={"llama.cpp": local_pin})
    assert not list(tmp_path.glob("bitnet_cpp/*/downloads/*"))


def test_a_broken_build_points_at_the_log_and_leaves_no_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "broken"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(broken C)\n"
        "add_library(llama SHARED broken.c)\nadd_executable(llama-simple broken.c)\n"
    )
    (source / "broken.c").write_text("this is not C;\n")
    with pytest.raises(BuildError) as err:
        build_reference(BuildRequest(source=source))
    log = tmp_path / "cache" / "bitnet_cpp" / "llama.cpp-local-cpu" / "build.log"
    assert str(log) in (err.value.hint or "")
    assert "broken" in log.read_text()
    assert not log.with_name("receipt.json").exists()


TAG_HASH_PLACEHOLDER = "sha256-" + "A" * 43 + "="


@pytest.fixture
def tagged(nginx: NginxServer, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """upstream `ggml-org/llama.cpp` at tag `b9999`, served as GitHub would: a tiny tree
    whose configure fails at once, so the fetch and verify run for real but no build."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text('message(FATAL_ERROR "tag b9999 configured")\n')
    area = Path(nginx.root) / f"gh-{os.getpid()}-{tmp_path.name}"
    archive = area / "ggml-org" / "llama.cpp" / "archive" / "b9999.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="llama.cpp-b9999")
    try:
        yield f"{nginx.url}/{area.name}", nar_hash(tree)
    finally:
        shutil.rmtree(area, ignore_errors=True)


def test_a_tag_is_fetched_from_upstream_and_verified_by_nar_hash(
    tagged: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    github, real = tagged
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wrong = BuildRequest(rev="b9999", hash=TAG_HASH_PLACEHOLDER)
    with pytest.raises(HashMismatchError) as err:
        build_reference(wrong, github=github)
    assert TAG_HASH_PLACEHOLDER in err.value.message and real in err.value.message
    # With the hash the error showed, the tree is verified and handed to CMake.
    with pytest.raises(BuildError, match="cmake") as failed:
        build_reference(replace(wrong, hash=real), github=github)
    directory = tmp_path / "cache" / "bitnet_cpp" / "llama.cpp-b9999-cpu"
    assert "tag b9999 configured" in (directory / "build.log").read_text()
    assert (directory / "src.verified").read_text() == real
    assert str(directory / "build.log") in (failed.value.hint or "")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (BuildRequest(hash=TAG_HASH_PLACEHOLDER), "--hash goes with --rev/--tag"),
        (BuildRequest(rev="b1"), "needs --hash"),
        (BuildRequest(rev="../x", hash=TAG_HASH_PLACEHOLDER), "not a commit or tag"),
        (BuildRequest(ref="bitnet.cpp", rev="b1", hash=TAG_HASH_PLACEHOLDER), "submodules"),
        (BuildRequest(ref="whisper.cpp"), "unknown reference"),
    ],
)
def test_bad_revision_requests_are_refused(request_: BuildRequest, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_pin(request_, load_pins())


def test_a_tag_and_a_rev_together_exit_2(xtask: Xtask) -> None:
    run = xtask.run("fetch-cpp", "--rev", "abc", "--tag", "b1")
    assert run.code == 2 and "not both" in run.stderr


def test_auto_picks_cuda_from_preflight_and_names_a_missing_nvcc(
    xtask: Xtask, tmp_path: Path
) -> None:
    """`--backend auto` asks the preflight API; without nvcc the CUDA build stops before
    any download, naming what is missing (a real CUDA build needs a GPU machine)."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("cc", "c++", "gcc", "g++"):
        if found := shutil.which(tool):
            (bare / tool).symlink_to(found)
    env = xtask.env(BITNET_GPU_FAKE="cuda", PATH=str(bare), XDG_CACHE_HOME=str(tmp_path))
    run = xtask.run("fetch-cpp", "--backend", "auto", env=env)
    assert run.code == 2, run.stderr
    assert "nvcc (the CUDA toolkit)" in run.stderr
    assert not list(tmp_path.glob("bitnet_cpp/*/downloads/*"))
