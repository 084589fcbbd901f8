"""The Nix side, checked as far as a machine without nixpkgs can, and the pin updater.

nixpkgs cannot be fetched here, so nothing that evaluates or builds a nixpkgs package is
tried (that is `scripts/ci-local.sh nix-full`). What is checked, with the real Nix
(Debian's nix-bin; those tests skip without it): every .nix file parses (which also
catches undefined variables), flake.lock is well formed, holds SRI hashes and matches
flake.nix, the parts of nix/ that need no nixpkgs evaluate to exactly what Python reads
from the same pins.json and pyproject.toml, and both reject a bad pin with the same words.
`python -m bitnet_xtask.cpp.update_pins` runs against real local servers: a PEP 503 index
over https and a GitHub-like archive server.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from test_nar import NIX_CONFIG

from bitnet_xtask.cli import cli
from bitnet_xtask.cpp import update_pins
from bitnet_xtask.cpp.nar import nar_hash
from bitnet_xtask.cpp.pins import GithubPin, Pin, is_sri, load_pins, parse_pins
from bitnet_xtask.crossval.backends import prefix_variable
from bitnet_xtask.errors import ExitCode, UsageError

ROOT = Path(__file__).resolve().parent.parent
PINS_JSON = ROOT / "src" / "bitnet_xtask" / "cpp" / "pins.json"
NIX_FILES = sorted([ROOT / "flake.nix", *(ROOT / "nix").rglob("*.nix")])

NixRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def nix(tmp_path_factory: pytest.TempPathFactory) -> NixRunner:
    """Run a Nix command in the repository; skip when Nix cannot evaluate here."""
    if shutil.which("nix-instantiate") is None or shutil.which("nix") is None:
        pytest.skip("nix is not installed (scripts/ci-local.sh nix installs Debian's nix-bin)")
    home = tmp_path_factory.mktemp("nix-home")
    env = {
        **os.environ,
        "NIX_CONFIG": NIX_CONFIG,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
    }

    def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(a) for a in args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(map(str, args))} failed:\n{proc.stderr}")
        return proc

    probe = run("nix-instantiate", "--eval", "--expr", "1 + 1", check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "2":
        pytest.skip(f"nix is installed but cannot evaluate here: {probe.stderr.strip()}")
    return run


def evaluate(nix: NixRunner, *target: str) -> Any:
    """`nix-instantiate --eval --strict --json` of a file (or `--expr`), as Python data."""
    return json.loads(nix("nix-instantiate", "--eval", "--strict", "--json", *target).stdout)


# --- every file ----------------------------------------------------------------------


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_nix_file_parses(nix: NixRunner, path: Path) -> None:
    # Nix resolves variables while parsing: an undefined name fails here, not on a
    # machine with network. (So nix/ uses no `with`, which would hide them.)
    nix("nix-instantiate", "--parse", path)


def test_no_pin_is_written_twice() -> None:
    document = json.loads(PINS_JSON.read_text(encoding="utf-8"))
    values: list[str] = []

    def collect(pin: dict[str, Any]) -> None:
        values.extend(str(pin[key]) for key in ("url", "sha256", "rev", "hash") if key in pin)
        for submodule in pin.get("submodules", {}).values():
            collect(submodule)

    for pin in document["references"].values():
        collect(pin)
    for path in NIX_FILES:
        text = path.read_text(encoding="utf-8")
        assert not [v for v in values if v in text], f"{path} repeats a value of pins.json"


def test_nix_files_are_formatted(nix: NixRunner) -> None:
    if shutil.which("nixfmt") is None:
        pytest.skip(
            "no nixfmt (RFC style) here: none is installable from PyPI, npm or Debian; "
            "`nix fmt` (the flake's formatter) checks it where nixpkgs can be fetched"
        )
    nix("nixfmt", "--check", *NIX_FILES)


# --- flake.lock ----------------------------------------------------------------------


def test_flake_lock_is_well_formed_with_sri_hashes() -> None:
    lock = json.loads((ROOT / "flake.lock").read_text(encoding="utf-8"))
    assert lock["version"] == 7 and lock["root"] == "root"
    assert lock["nodes"]["root"] == {"inputs": {"nixpkgs": "nixpkgs"}}, "nixpkgs is the only input"
    node = lock["nodes"]["nixpkgs"]
    locked, original = node["locked"], node["original"]
    assert locked["type"] == original["type"] == "github"
    assert (locked["owner"], locked["repo"]) == ("NixOS", "nixpkgs")
    assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"])
    assert is_sri(locked["narHash"]), locked["narHash"]
    assert isinstance(locked["lastModified"], int)
    url = re.search(r'inputs\.nixpkgs\.url = "([^"]+)"', (ROOT / "flake.nix").read_text())
    assert url is not None
    assert url.group(1) == f"github:{original['owner']}/{original['repo']}/{original['ref']}"


@pytest.fixture
def flake_copy(tmp_path: Path) -> Path:
    """flake.nix, flake.lock and nix/ alone: a `path:` flake is copied into the store."""
    if os.geteuid() != 0 and not os.access("/nix/store", os.W_OK):
        pytest.skip("`nix flake metadata` copies the flake into /nix/store, not writable here")
    copy_dir = tmp_path / "flake"
    copy_dir.mkdir()
    for name in ("flake.nix", "flake.lock"):
        shutil.copy(ROOT / name, copy_dir / name)
    shutil.copytree(ROOT / "nix", copy_dir / "nix")
    return copy_dir


def test_flake_lock_matches_flake_nix(nix: NixRunner, flake_copy: Path) -> None:
    metadata = json.loads(
        nix(
            "nix", "flake", "metadata", "--offline", "--no-update-lock-file", "--json",
            f"path:{flake_copy}",
        ).stdout
    )  # fmt: skip
    assert metadata["locks"] == json.loads((ROOT / "flake.lock").read_text(encoding="utf-8"))


def test_a_lock_that_does_not_match_flake_nix_is_refused(nix: NixRunner, flake_copy: Path) -> None:
    flake = flake_copy / "flake.nix"
    flake.write_text(re.sub(r"nixos-\d\d\.\d\d", "nixos-24.05", flake.read_text()))
    proc = nix(
        "nix", "flake", "metadata", "--offline", "--no-update-lock-file", f"path:{flake_copy}",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0


# --- the parts of nix/ that need no nixpkgs ------------------------------------------


def nix_reading(pin: Pin) -> dict[str, Any]:
    """What nix/read-pins.nix must make of a pin: the fetcher and its arguments."""
    if isinstance(pin, GithubPin):
        return {
            "kind": "github",
            "fetcher": "fetchFromGitHub",
            "args": {"owner": pin.owner, "repo": pin.repo, "rev": pin.rev, "hash": pin.hash},
            "submodules": {path: nix_reading(sub) for path, sub in pin.submodules.items()},
        }
    return {
        "kind": "pypi-sdist",
        "fetcher": "fetchurl",
        "args": {"url": pin.url, "sha256": pin.sha256},
        "package": pin.package,
        "version": pin.version,
        "subdir": pin.subdir,
        "upstream": pin.upstream,
    }


def test_pins_nix_reads_what_python_reads(nix: NixRunner) -> None:
    assert evaluate(nix, "nix/pins.nix") == {
        name: nix_reading(pin) for name, pin in load_pins().items()
    }


def _broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(PINS_JSON.read_text(encoding="utf-8"))
    change(document)
    return document


_BITNET = ("references", "bitnet.cpp")
_LLAMA = ("references", "llama.cpp")


def _set(path: tuple[str, ...], key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node = document
        for part in path:
            node = node[part]
        node[key] = value

    return change


def _delete(path: tuple[str, ...], key: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node = document
        for part in path:
            node = node[part]
        del node[key]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(_BITNET, "rev", "c82b5e66"), "bitnet.cpp: rev must be a full 40-hex commit"),
        (_set(_BITNET, "hash", "sha256-abc"), "bitnet.cpp: hash must be an SRI sha256"),
        (
            _set((*_BITNET, "submodules", "3rdparty/llama.cpp"), "rev", "HEAD"),
            "bitnet.cpp/3rdparty/llama.cpp: rev must be a full 40-hex commit",
        ),
        (_delete(_BITNET, "owner"), "bitnet.cpp: missing field 'owner'"),
        (_set(_LLAMA, "sha256", "A" * 64), "llama.cpp: sha256 must be 64 lowercase hex digits"),
        (_set(_LLAMA, "url", "http://example.org/x.tar.gz"), "llama.cpp: url must be https"),
        (_delete(_LLAMA, "package"), "llama.cpp: missing field 'package'"),
        (_set(_LLAMA, "kind", "svn"), "llama.cpp: unknown kind"),
        (_set((), "version", 2), "pins.json version 2 is not supported"),
    ],
    ids=["short-rev", "bad-hash", "submodule-rev", "no-owner", "upper-sha", "http", "no-package",
         "kind", "version"],
)  # fmt: skip
def test_nix_rejects_a_bad_pin_as_python_does(
    nix: NixRunner, tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    text = json.dumps(_broken(change))
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_pins(text)
    bad = tmp_path / "pins.json"
    bad.write_text(text)
    proc = nix(
        "nix-instantiate", "--eval", "--strict", "--json", "--expr",
        f"import {ROOT / 'nix' / 'read-pins.nix'} {bad}",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_project_nix_reads_pyproject(nix: NixRunner) -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    facts = evaluate(nix, "nix/project.nix")
    assert (facts["pname"], facts["version"]) == (project["name"], project["version"])
    assert facts["requiresPython"] == project["requires-python"]
    minimum = re.match(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert minimum is not None
    assert facts["minPython"] == f"python{minimum.group(1)}{minimum.group(2)}"
    assert facts["mainProgram"] in project["scripts"]


def test_the_nix_package_has_every_runtime_dependency() -> None:
    """nix/package.nix lists pyproject.toml's dependencies by nixpkgs name; a dependency
    added to one and not the other would break only the Nix build."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    text = (ROOT / "nix" / "package.nix").read_text(encoding="utf-8")
    block = text.split("dependencies = [", 1)[1].split("];", 1)[0]
    listed = set(re.findall(r"python\.pkgs\.([\w-]+)", block)) | set(
        re.findall(r"^\s*(gguf)$", block, re.M)
    )
    assert listed == wanted - {"cmake", "ninja"}  # those two come from nixpkgs on PATH


def test_every_command_is_a_flake_app(nix: NixRunner) -> None:
    commands = evaluate(nix, "--expr", "(import ./nix/project.nix).commands")
    assert sorted(commands) == sorted(cli.commands), "nix/project.nix lists one app per command"


def test_the_nix_apps_name_the_variables_crossval_reads(nix: NixRunner) -> None:
    # The apps hand the Nix-built references to crossval through these variables; the
    # names must be the ones crossval.backends.find_build looks up.
    variables = evaluate(nix, "--expr", "(import ./nix/project.nix).prebuilt")
    assert variables == {ref: prefix_variable(ref) for ref in load_pins()}


# --- python -m bitnet_xtask.cpp.update_pins ------------------------------------------


CHANGELOG = """# Changelog

## [Unreleased]

## [0.4.1]

- fix: something else

## [0.4.0]

- feat: update llama.cpp to ggml-org/llama.cpp@abcdef123
- feat: update llama.cpp to ggml-org/llama.cpp@0123456aa

## [0.3.9]

- feat: update llama.cpp to someone/llama.cpp@fedcba987
"""


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.4.0", ("ggml-org", "llama.cpp", "abcdef123")),
        ("0.4.1", ("ggml-org", "llama.cpp", "abcdef123")),  # no move: vendors the last one
        ("0.3.9", ("someone", "llama.cpp", "fedcba987")),
        ("0.4", None),
    ],
)
def test_the_vendored_llama_cpp_is_read_from_the_changelog(
    version: str, expected: tuple[str, str, str] | None
) -> None:
    assert update_pins.upstream_from_changelog(CHANGELOG, version) == expected


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not test output."""


@contextmanager
def serving(directory: Path, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """A real HTTP(S) server for `directory` on 127.0.0.1; yields its base URL."""
    handler = partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made with the openssl CLI (pins are https-only)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _tar_gz(files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> bytes:
    """A tar.gz of `files` (a str value is a symlink target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), (modes or {}).get(name, 0o644)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def pins_copy(tmp_path: Path) -> Path:
    path = tmp_path / "pins.json"
    shutil.copy(PINS_JSON, path)
    return path


def _index(root: Path, sdists: dict[str, str]) -> None:
    """A PEP 503 page for llama-cpp-python linking `filename -> sha256` (relative hrefs)."""
    page = root / "simple" / "llama-cpp-python"
    page.mkdir(parents=True)
    links = "".join(
        f'<a href="../../files/{name}#sha256={sha}" data-requires-python="&gt;=3.8">{name}</a>\n'
        for name, sha in sdists.items()
    )
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


def test_update_sdist_takes_url_and_hash_from_the_simple_index(
    tmp_path: Path, tls: tuple[Path, Path], pins_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdist = _tar_gz(
        {
            "llama_cpp_python-0.4.0/CHANGELOG.md": CHANGELOG.encode(),
            "llama_cpp_python-0.4.0/vendor/llama.cpp/CMakeLists.txt": b"project(llama)\n",
        }
    )
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "llama_cpp_python-0.4.0.tar.gz").write_bytes(sdist)
    sha = hashlib.sha256(sdist).hexdigest()
    _index(
        tmp_path,
        {
            "llama_cpp_python-0.3.9.tar.gz": "0" * 64,
            "llama_cpp_python-0.4.0-cp311-cp311-linux_x86_64.whl": "1" * 64,
            "llama_cpp_python-0.4.0.tar.gz": sha,
        },
    )
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))
    with serving(tmp_path, tls) as url:
        code = update_pins.main(
            [
                "--pins",
                str(pins_copy),
                "sdist",
                "--version",
                "0.4.0",
                "--index-url",
                f"{url}/simple",
            ]
        )
    assert code == ExitCode.OK
    pin = load_pins(pins_copy)["llama.cpp"]
    assert not isinstance(pin, GithubPin)
    assert (pin.version, pin.sha256) == ("0.4.0", sha)
    assert pin.url == f"{url}/files/llama_cpp_python-0.4.0.tar.gz"
    assert pin.upstream == {"owner": "ggml-org", "repo": "llama.cpp", "rev": "abcdef123"}
    assert load_pins(pins_copy)["bitnet.cpp"] == load_pins()["bitnet.cpp"]


def test_update_sdist_refuses_a_file_that_is_not_the_indexed_one(
    tmp_path: Path,
    tls: tuple[Path, Path],
    pins_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "llama_cpp_python-0.4.0.tar.gz").write_bytes(b"not what was indexed")
    _index(tmp_path, {"llama_cpp_python-0.4.0.tar.gz": "2" * 64})
    before = pins_copy.read_bytes()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))
    with serving(tmp_path, tls) as url:
        code = update_pins.main(
            [
                "--pins",
                str(pins_copy),
                "sdist",
                "--version",
                "0.4.0",
                "--index-url",
                f"{url}/simple",
            ]
        )
    assert code == ExitCode.HASH_MISMATCH, capsys.readouterr().err
    assert pins_copy.read_bytes() == before


def test_update_github_computes_the_nar_hash_of_the_tree(tmp_path: Path, pins_copy: Path) -> None:
    rev = "1234567890abcdef1234567890abcdef12345678"
    top = f"llama.cpp-{rev}"
    files: dict[str, bytes | str] = {
        "CMakeLists.txt": b"project(llama)\n",
        "scripts/build.sh": b"#!/bin/sh\n",
        "include/llama.h": b"// header\n",
        "LICENSE.link": "CMakeLists.txt",
    }
    archive = tmp_path / "srv" / "someone" / "llama.cpp" / "archive" / f"{rev}.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(
        _tar_gz({f"{top}/{name}": content for name, content in files.items()},
                modes={f"{top}/scripts/build.sh": 0o755})
    )  # fmt: skip
    # The same tree written directly (test_nar checks nar_hash against `nix hash path`).
    tree = tmp_path / "tree"
    for name, content in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            (tree / name).symlink_to(content)
        else:
            (tree / name).write_bytes(content)
    (tree / "scripts" / "build.sh").chmod(0o755)
    expected = nar_hash(tree)
    with serving(tmp_path / "srv") as url:
        code = update_pins.main(
            ["--pins", str(pins_copy), "github", "bitnet.cpp/3rdparty/llama.cpp", "--rev", rev,
             "--owner", "someone", "--github-url", url]
        )  # fmt: skip
    assert code == ExitCode.OK
    bitnet = load_pins(pins_copy)["bitnet.cpp"]
    assert isinstance(bitnet, GithubPin)
    fork = bitnet.submodules["3rdparty/llama.cpp"]
    assert (fork.owner, fork.repo, fork.rev, fork.hash) == ("someone", "llama.cpp", rev, expected)
    packaged = load_pins()["bitnet.cpp"]
    assert isinstance(packaged, GithubPin)
    assert (bitnet.rev, bitnet.hash) == (packaged.rev, packaged.hash)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["github", "bitnet.cpp", "--rev", "c82b5e66"], "--rev must be a full 40-hex commit"),
        (["github", "whisper.cpp", "--rev", "0" * 40], "pins.json has no pin 'whisper.cpp'"),
        (["github", "llama.cpp", "--rev", "0" * 40], "llama.cpp is a pypi-sdist pin"),
        (["sdist", "bitnet.cpp", "--version", "1.0"], "bitnet.cpp is a github pin"),
    ],
)
def test_update_pins_refuses_what_it_cannot_pin(
    pins_copy: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = pins_copy.read_bytes()
    assert update_pins.main(["--pins", str(pins_copy), *args]) == ExitCode.USAGE
    assert message in capsys.readouterr().err
    assert pins_copy.read_bytes() == before
