"""Shared fixtures: real servers on 127.0.0.1 and a way to run the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mounts import Mounts
from references import bitnet_source_tree, cache_home, serve_sdist
from servers.hf_server import HFTestServer
from servers.nginx import NginxServer, nginx_available

from bitnet_xtask.cpp.build import BuildRequest, BuildResult, build_reference
from bitnet_xtask.cpp.pins import SdistPin

REPO = "org/model"
BIG_SIZE = 64 << 20
GPU_FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
STANDINS = Path(__file__).parent / "standins"

# Every event any test makes the CLI (or a ConsoleReporter) emit is checked against
# events.schema.json before it is written (README "JSON events"); the CLI's subprocesses
# inherit the switch through clean_env.
os.environ["XTASK_VALIDATE_EVENTS"] = "1"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: no token, proxy or HF settings leak in from the machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HF_", "HUGGING", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"))
        and k.upper() not in ("ALL_PROXY", "XDG_CACHE_HOME")
    }
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Run:
    """A finished CLI run."""

    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The JSON events on stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def phases(self) -> list[str]:
        """The events' phases, progress collapsed."""
        out: list[str] = []
        for event in self.events():
            if not (out and out[-1] == event["phase"] == "progress"):
                out.append(event["phase"])
        return out


def build_nvml_standin(tmp_path: Path, *defines: str) -> Path:
    """tests/standins/nvml.c compiled as a `libnvidia-ml.so.1` whose answers are the -D
    values (a recording's); returns its folder, for LD_LIBRARY_PATH."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build the NVML stand-in")
    libdir = tmp_path / "nvml"
    libdir.mkdir()
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(libdir / "libnvidia-ml.so.1"),
         str(STANDINS / "nvml.c"), *(f"-D{d}" for d in defines)],
        check=True, timeout=60,
    )  # fmt: skip
    return libdir


@dataclass
class Xtask:
    """Runs `python -m bitnet_xtask` as a user would, in a private HOME."""

    home: Path
    out: Path

    def argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "bitnet_xtask", *args]

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.home, **extra)

    @property
    def workdir(self) -> Path:
        """A private working directory, for commands that use relative defaults."""
        path = self.home.parent / "work"
        path.mkdir(exist_ok=True)
        return path

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> Run:
        proc = subprocess.run(
            self.argv(args),
            env=env or self.env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def download_args(self, base_url: str, *args: str) -> list[str]:
        """`download-model --json` for REPO from `base_url` into `out`, plus `args`."""
        return [
            "download-model",
            "--base-url",
            base_url,
            "--id",
            REPO,
            "--out",
            str(self.out),
            "--json",
            *args,
        ]

    def download(self, base_url: str, *args: str, **kwargs: Any) -> Run:
        """Run `download_args(...)` to completion."""
        return self.run(*self.download_args(base_url, *args), **kwargs)

    def target(self, name: str) -> Path:
        return self.out / REPO.replace("/", "-") / name

    def standin_env(self, **recordings: str) -> dict[str, str]:
        """PATH with tests/standins first, replaying the named recordings."""
        return self.env(PATH=f"{STANDINS}{os.pathsep}{os.environ['PATH']}", **recordings)


@pytest.fixture
def xtask(tmp_path: Path) -> Xtask:
    home = tmp_path / "home"
    home.mkdir()
    return Xtask(home=home, out=tmp_path / "models")


@pytest.fixture
def hf(tmp_path: Path) -> Iterator[HFTestServer]:
    with HFTestServer(tmp_path / "hub-root") as server:
        yield server


@pytest.fixture(scope="session")
def big_payload() -> bytes:
    """A 64 MiB file, generated, never committed."""
    return payload(BIG_SIZE, seed=64)


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, big_payload: bytes) -> Iterator[NginxServer]:
    if nginx_available() is None:
        pytest.skip("nginx is not installed (scripts/ci-local.sh deps installs nginx-light)")
    root = tmp_path_factory.mktemp("nginx-root")
    files = root / REPO / "resolve" / "main"
    files.mkdir(parents=True)
    (files / "big.bin").write_bytes(big_payload)
    (files / "small.bin").write_bytes(payload(300_000, seed=3))
    with NginxServer(
        root=root, workdir=tmp_path_factory.mktemp("nginx"), rate_limit="8m"
    ) as server:
        yield server


@pytest.fixture
def sandbox(tmp_path: Path, xtask: Xtask) -> dict[str, Path]:
    """For clean-cache: a working directory with models and fixtures, and a cache home
    with one fetch-cpp build under the name fetch-cpp gives it (`build`)."""
    from bitnet_xtask.cpp.layout import pin_revision
    from bitnet_xtask.cpp.pins import load_pins

    work, xdg = tmp_path / "work", tmp_path / "xdg"
    (work / "models" / "org-model").mkdir(parents=True)
    (work / "models" / "org-model" / "m.gguf").write_bytes(os.urandom(20_000))
    (work / "crossval" / "fixtures").mkdir(parents=True)
    (work / "crossval" / "fixtures" / "tiny.gguf").write_bytes(os.urandom(5_000))
    build = xdg / "bitnet_cpp" / f"llama.cpp-{pin_revision(load_pins()['llama.cpp'])}-cpu"
    (build / "bin").mkdir(parents=True)
    (build / "bin" / "llama-cli").write_bytes(b"x")
    return {"work": work, "xdg": xdg, "home": xtask.home, "build": build, "tmp": tmp_path}


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    """tmpfs mounts (full or read-only disks) for one test, unmounted after it."""
    made = Mounts()
    try:
        yield made
    finally:
        made.unmount_all()


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll until `predicate()` is truthy."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- the real C++ references, built once per session ------------------------------------

BUILD_FIXTURES = frozenset(
    {"local_pin", "llama_build", "llama_native_build", "llama_bin", "bitnet_build", "bitnet_bin"}
)
BUILD_TIMEOUT = 1800  # seconds: a cold llama.cpp build takes ~8 minutes on 2 cores


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The per-test timeout counts fixture setup, and whichever test first needs a
    session build pays for it: give every such test the build's time, not the default."""
    for item in items:
        if BUILD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))


@pytest.fixture(scope="session")
def local_pin(nginx: NginxServer, tmp_path_factory: pytest.TempPathFactory) -> SdistPin:
    """The packaged llama.cpp pin, served by the local nginx."""
    return serve_sdist(Path(nginx.root), nginx.url, tmp_path_factory.mktemp("pip"))


@pytest.fixture(scope="session")
def cpp_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg")


@pytest.fixture(scope="session")
def llama_build(local_pin: SdistPin, cpp_cache_home: Path) -> BuildResult:
    """The pinned llama.cpp, really built (minutes on 2 cores; once per session)."""
    with cache_home(cpp_cache_home):
        return build_reference(BuildRequest(), pins={"llama.cpp": local_pin})


def _bin_dir(request: pytest.FixtureRequest, variable: str, build_fixture: str) -> Path:
    """A bin/ named by `variable` (to iterate without rebuilding), else the build's; the
    build fixture is only requested (and built) when the variable is unset."""
    if given := os.environ.get(variable):
        return Path(given)
    build: BuildResult = request.getfixturevalue(build_fixture)
    return build.bin_dir


@pytest.fixture(scope="session")
def llama_native_build(local_pin: SdistPin, cpp_cache_home: Path) -> BuildResult:
    """The same source with GGML_NATIVE=ON (tuned for this CPU), in its own directory."""
    with cache_home(cpp_cache_home):
        return build_reference(BuildRequest(native=True), pins={"llama.cpp": local_pin})


@pytest.fixture(scope="session")
def llama_bin(request: pytest.FixtureRequest) -> Path:
    """A llama.cpp bin/ with xtask-logits: `XTASK_TEST_LLAMA_BIN`, or the session build."""
    return _bin_dir(request, "XTASK_TEST_LLAMA_BIN", "llama_build")


@pytest.fixture(scope="session")
def bitnet_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = bitnet_source_tree(tmp_path_factory.mktemp("bitnet"))
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def bitnet_build(bitnet_source: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """bitnet.cpp (Clang, the i2_s kernel), really built from the local sources."""
    with cache_home(tmp_path_factory.mktemp("bitnet-cache")):
        return build_reference(BuildRequest(ref="bitnet.cpp", source=bitnet_source))


@pytest.fixture(scope="session")
def bitnet_bin(request: pytest.FixtureRequest) -> Path:
    """A bitnet.cpp bin/ with xtask-logits: `XTASK_TEST_BITNET_BIN`, or the session build."""
    return _bin_dir(request, "XTASK_TEST_BITNET_BIN", "bitnet_build")
