"""The Nix side, checked as far as a machine without nixpkgs can, and the pin updater.

nixpkgs cannot be fetched here, so nothing that evaluates or builds a nixpkgs package is
tried (that is `scripts/ci-local.sh nix-full`). What is checked, with the real Nix
(Debian's nix-bin; those tests skip without it): every .nix file parses (which also
catches undefined variables), flake.lock is well formed, holds SRI hashes and matches
flake.nix, the parts of nix/ that need no nixpkgs evaluate to exactly what Python reads
from the same pins.json and pyproject.toml, and both reject a bad pin with the same words.
With the real nixpkgs lib (nix-community/nixpkgs.lib), flake.nix and nix/ are evaluated
against a recording stand-in for the package set: what nix/ decides and hands nixpkgs.
The README's Nix claims and every scripts/ci-local.sh mode are checked too (fetch-cpp's
CUDA build of the pinned llama.cpp: tests/test_cuda_build.py).
`python -m bitnet_xtask.cpp.update_pins` runs against real local servers: a PEP 503 index
over https and a GitHub-like archive server.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from references import MIRRORS, export_git_tree
from test_nar import NIX_CONFIG

from bitnet_xtask.cli import cli
from bitnet_xtask.cpp import update_pins
from bitnet_xtask.cpp.nar import nar_hash
from bitnet_xtask.cpp.pins import GithubPin, Pin, SdistPin, is_sri, load_pins, parse_pins
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
    # A backport for older Pythons (tomli below 3.11) is not needed by nixpkgs' Python.
    needed = [Requirement(d) for d in project["dependencies"]]
    minor = re.search(r'python = "python3(\d+)";', (ROOT / "nix" / "project.nix").read_text())
    assert minor, "nix/project.nix names its Python"
    nix_python = {"python_version": f"3.{minor[1]}", "python_full_version": f"3.{minor[1]}.0"}
    wanted = {r.name.lower() for r in needed if r.marker is None or r.marker.evaluate(nix_python)}
    text = (ROOT / "nix" / "package.nix").read_text(encoding="utf-8")
    block = text.split("dependencies = [", 1)[1].split("];", 1)[0]
    listed = set(re.findall(r"python\.pkgs\.([\w-]+)", block)) | set(
        re.findall(r"^\s*(gguf)$", block, re.M)
    )
    assert listed == wanted - {"cmake", "ninja"}  # those two come from nixpkgs on PATH


def test_the_nix_shell_has_the_hf_extra() -> None:
    """The `hf` extra (transformers, torch: crossval's ground truth) is listed by nixpkgs
    name as `hfDependencies`, which the default shell includes."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = project["optional-dependencies"]["hf"]
    wanted = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in extra}
    text = (ROOT / "nix" / "package.nix").read_text(encoding="utf-8")
    block = text.split("hfDependencies = [", 1)[1].split("];", 1)[0]
    assert set(re.findall(r"python\.pkgs\.([\w-]+)", block)) == wanted
    shells = (ROOT / "nix" / "devshells.nix").read_text(encoding="utf-8")
    assert "xtask.hfDependencies" in shells


def test_every_command_is_a_flake_app(nix: NixRunner) -> None:
    commands = evaluate(nix, "--expr", "(import ./nix/project.nix).commands")
    assert sorted(commands) == sorted(cli.commands), "nix/project.nix lists one app per command"


def test_the_nix_apps_name_the_variables_crossval_reads(nix: NixRunner) -> None:
    # The apps hand the Nix-built references to crossval through these variables; the
    # names must be the ones crossval.backends.find_build looks up.
    variables = evaluate(nix, "--expr", "(import ./nix/project.nix).prebuilt")
    assert variables == {ref: prefix_variable(ref) for ref in load_pins()}


# --- flake.nix and nix/ evaluated with the real nixpkgs lib ---------------------------
#
# nixpkgs cannot be fetched here, but its lib can: nix-community/nixpkgs.lib mirrors
# nixpkgs' lib/. The flake is evaluated with that lib and nix/recording-nixpkgs.nix in
# place of the package set (packages are named stand-ins; builders return their
# arguments), so what nix/ decides is evaluated for real; whether nixpkgs 25.11 accepts
# what it is handed is `scripts/ci-local.sh nix-full`'s to check.

# The lib of nixos-25.11: nix-community/nixpkgs.lib's last commit before its
# lib/.version became 26.05 ("26.05 is Yarara", 9f46ba37).
NIXPKGS_LIB_REV = "d7885204d4be98b3718bad1a47b80c2058d696aa"
NIXPKGS_LIB_MIRROR = MIRRORS / "nix-community+nixpkgs.lib" / "repo"
# What the pinned nixpkgs most likely lacks (nix/ packages it, used only then).
NOT_IN_PINNED_NIXPKGS = frozenset({"types-jsonschema"})
SYSTEMS = ("x86_64-linux", "aarch64-linux", "aarch64-darwin")

FlakeEval = Callable[..., Any]


def pinned_release() -> str:
    """'25.11': the release of the branch flake.lock pins (nixos-25.11)."""
    lock = json.loads((ROOT / "flake.lock").read_text(encoding="utf-8"))
    return str(lock["nodes"]["nixpkgs"]["original"]["ref"]).removeprefix("nixos-")


@pytest.fixture(scope="module")
def nixpkgs_lib(nix: NixRunner, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Nix expression for the real lib of the pinned nixpkgs release: the checkout that
    XTASK_TEST_NIXPKGS_LIB names, or NIXPKGS_LIB_REV exported from a git mirror."""
    if given := os.environ.get("XTASK_TEST_NIXPKGS_LIB"):
        root = Path(given)
    else:
        found = shutil.which("git") is not None and subprocess.run(
            ["git", f"--git-dir={NIXPKGS_LIB_MIRROR}", "cat-file", "-e",
             f"{NIXPKGS_LIB_REV}^{{commit}}"],
            capture_output=True, check=False,
        ).returncode == 0  # fmt: skip
        if not found:
            pytest.skip(
                "no nixpkgs lib here: set XTASK_TEST_NIXPKGS_LIB to a checkout of "
                f"nix-community/nixpkgs.lib at {NIXPKGS_LIB_REV} (nixos-{pinned_release()}), "
                f"or provide its git mirror at {NIXPKGS_LIB_MIRROR}"
            )
        root = tmp_path_factory.mktemp("nixpkgs-lib")
        export_git_tree(NIXPKGS_LIB_MIRROR, NIXPKGS_LIB_REV, root)
    version = (root / "lib" / ".version").read_text(encoding="utf-8").strip()
    assert version == pinned_release(), f"{root} holds nixpkgs lib {version}, not the pinned one"
    # Nix < 2.14 has no builtins.readFileType, which lib.fileset needs (Debian's nix-bin is
    # 2.8): there, the readDir-based definition that older lib releases had.
    return (
        f"((import {root / 'lib'}).extend (final: prev: {{ filesystem = prev.filesystem // {{ "
        "pathType = builtins.readFileType or "
        "(path: (builtins.readDir (dirOf path)).${baseNameOf path}); }; }))"
    )


def nix_names(pattern: str) -> set[str]:
    """The names nix/ selects with `pattern`: what the recording nixpkgs must hold."""
    return {
        name
        for path in (ROOT / "nix").glob("*.nix")
        if path.name != "recording-nixpkgs.nix"
        for name in re.findall(pattern, path.read_text(encoding="utf-8"))
    }


def nix_list(names: set[str]) -> str:
    return "[ " + " ".join(json.dumps(name) for name in sorted(names)) + " ]"


@pytest.fixture(scope="module")
def flake_eval(
    nix: NixRunner, nixpkgs_lib: str, tmp_path_factory: pytest.TempPathFactory
) -> FlakeEval:
    """`flake_eval(expression)`: `expression` over `outputs` (flake.nix's, with the real
    lib and the recording nixpkgs) as JSON data. `extra` adds attributes to the package
    set (a Nix expression with `pkgs` in scope), `python` names to nixpkgs' Python
    packages; with check=False the process is returned."""

    def run(
        expression: str, *, extra: str = "{ }", python: tuple[str, ...] = (), check: bool = True
    ) -> Any:
        directory = tmp_path_factory.mktemp("nixpkgs")
        names = nix_names(r"(?<![\w.])pkgs\.([A-Za-z][\w-]*)")
        pythons = nix_names(r"python\.pkgs\.([A-Za-z][\w-]*)") - NOT_IN_PINNED_NIXPKGS
        cudas = nix_names(r"cudaPackages\.([A-Za-z][\w-]*)")
        (directory / "input.nix").write_text(
            f"import {ROOT / 'nix' / 'recording-nixpkgs.nix'} {{\n"
            f"  lib = {nixpkgs_lib};\n"
            f"  names = {nix_list(names)};\n"
            f"  pythonNames = {nix_list(pythons | set(python))};\n"
            f"  cudaNames = {nix_list(cudas)};\n"
            f"  extra = system: pkgs: {extra};\n"
            f"  outPath = {directory};\n"
            "}\n"
        )
        (directory / "default.nix").write_text(
            "{ system, ... }: (import ./input.nix).legacyPackages.${system}\n"
        )
        proc = nix(
            "nix-instantiate", "--eval", "--strict", "--json", "--expr",
            f"let outputs = (import {ROOT / 'flake.nix'}).outputs {{ self = {{ }}; "
            f"nixpkgs = import {directory / 'input.nix'}; }}; in {expression}",
            check=check,
        )  # fmt: skip
        return json.loads(proc.stdout) if check else proc

    return run


def test_the_flake_offers_only_packages_apps_shells_and_checks(flake_eval: FlakeEval) -> None:
    # pkgs.callPackage makes any set it returns overridable: `override` and
    # `overrideDerivation` would be an app, a shell and a check, which `nix flake check`
    # stops at and Nix >= 2.25 rejects.
    outputs = flake_eval(
        "builtins.mapAttrs (_: builtins.mapAttrs (_: builtins.attrNames))"
        " { inherit (outputs) packages apps devShells checks; }"
    )
    apps = sorted([*cli.commands, "default", "xtask"])
    linux = {
        "packages": ["bitnet-cpp", "default", "llama-cpp", "xtask"],
        "devShells": ["default", "min-python"],
        "checks": ["lint", "receipts", "tests"],
    }
    assert outputs == {
        "packages": {
            "x86_64-linux": ["bitnet-cpp", "default", "llama-cpp", "llama-cpp-cuda", "xtask"],
            "aarch64-linux": linux["packages"],
            "aarch64-darwin": ["default", "xtask"],
        },
        "apps": dict.fromkeys(SYSTEMS, apps),
        "devShells": {
            "x86_64-linux": ["cuda", "default", "min-python"],
            "aarch64-linux": linux["devShells"],
            "aarch64-darwin": linux["devShells"],
        },
        "checks": {
            "x86_64-linux": linux["checks"],
            "aarch64-linux": linux["checks"],
            "aarch64-darwin": ["lint"],
        },
    }
    formatter = flake_eval("builtins.mapAttrs (_: formatter: formatter.name) outputs.formatter")
    # treefmt with nixfmt: plain nixfmt waits on stdin under `nix fmt` since Nix 2.25.
    assert formatter == dict.fromkeys(SYSTEMS, "nixfmt-tree")
    assert re.search(r"^run nix fmt -- --ci$", (ROOT / "checks" / "nix-full.sh").read_text(), re.M)


@pytest.mark.parametrize(
    ("interpreter", "refused"),
    [(None, True), ('throw "it has been removed"', True), ("pkgs.python313", False)],
    ids=["absent", "an-alias-that-throws", "present"],
)
def test_min_python_says_when_nixpkgs_no_longer_has_the_interpreter(
    nix: NixRunner, flake_eval: FlakeEval, interpreter: str | None, refused: bool
) -> None:
    name = evaluate(nix, "--expr", "(import ./nix/project.nix).minPython")
    extra = "{ }" if interpreter is None else f"{{ {name} = {interpreter}; }}"
    proc = flake_eval("outputs.devShells.x86_64-linux.min-python.name", extra=extra, check=False)
    message = f"names {name}, which this nixpkgs no longer has"
    if refused:
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    else:
        assert json.loads(proc.stdout) == "shell", proc.stderr


@pytest.mark.parametrize("in_nixpkgs", [False, True], ids=["packaged-here", "from-nixpkgs"])
def test_mypy_gets_the_jsonschema_stubs_from_nixpkgs_or_from_nix_dir(
    flake_eval: FlakeEval, in_nixpkgs: bool
) -> None:
    packages = flake_eval(
        "map (p: { inherit (p) name; builtWith = p.builtWith or null; })"
        " (builtins.head outputs.checks.x86_64-linux.lint.report.nativeBuildInputs).packages",
        python=("types-jsonschema",) if in_nixpkgs else (),
    )
    stubs = [p for p in packages if p["name"].startswith("types-jsonschema")]
    if in_nixpkgs:
        assert stubs == [{"name": "types-jsonschema", "builtWith": None}]
    else:
        pin = types_jsonschema_pin()
        assert stubs == [
            {"name": f"types-jsonschema-{pin['version']}", "builtWith": "buildPythonPackage"}
        ]


def types_jsonschema_pin() -> dict[str, str]:
    """What nix/types-jsonschema.nix asks fetchPypi for (builders that return their
    arguments: the file needs nothing else)."""
    expression = (
        f"let p = import {ROOT / 'nix' / 'types-jsonschema.nix'} {{ buildPythonPackage = a: a;"
        " fetchPypi = a: a; setuptools = null; referencing = null; };"
        " in { inherit (p) version; inherit (p.src) pname hash; }"
    )
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expression],
        capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "NIX_CONFIG": NIX_CONFIG},
    )  # fmt: skip
    pin: dict[str, str] = json.loads(proc.stdout)
    return pin


def test_the_types_jsonschema_pin_is_pypis_sdist(nix: NixRunner, tmp_path: Path) -> None:
    pin = types_jsonschema_pin()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--retries", "1", "--timeout", "20", "-q", "-d", str(tmp_path),
         f"types-jsonschema=={pin['version']}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        if "(from versions: none)" in proc.stderr:
            pytest.skip(f"PyPI is not reachable from here: {proc.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"PyPI has no sdist types-jsonschema=={pin['version']}:\n{proc.stderr}")
    (sdist,) = tmp_path.iterdir()
    assert sdist.name == f"{pin['pname']}-{pin['version']}.tar.gz"  # fetchPypi's file name
    digest = hashlib.sha256(sdist.read_bytes()).digest()
    assert pin["hash"] == "sha256-" + base64.b64encode(digest).decode()


def test_the_checks_read_every_file_git_tracks_but_ci(nix: NixRunner, nixpkgs_lib: str) -> None:
    # tests/test_nix.py reads flake.nix, flake.lock and nix/ in every run, the sandbox too.
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files to compare with")
    listed = evaluate(
        nix, "--expr",
        f"let lib = {nixpkgs_lib}; files = import ./nix/files.nix {{ inherit lib; }}; in"
        " builtins.mapAttrs (_: set: map toString (lib.fileset.toList set)) files",
    )  # fmt: skip
    checks = {Path(path).relative_to(ROOT).as_posix() for path in listed["checks"]}
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    left_out = {
        name
        for name in tracked
        if (ROOT / name).is_file() and not name.startswith(".ci/") and name != ".gitignore"
    } - checks
    assert not left_out, f"the checks' source (nix/files.nix) leaves out {sorted(left_out)}"
    assert set(listed["package"]) <= set(listed["checks"])
    assert not [p for p in listed["package"] if "/tests/" in p], "tests would rebuild the wheel"


@pytest.fixture(scope="module")
def tests_check(flake_eval: FlakeEval) -> dict[str, Any]:
    """checks.x86_64-linux.tests: the check's script and its report's arguments."""
    facts: dict[str, Any] = flake_eval(
        "let check = outputs.checks.x86_64-linux.tests; report = check.report; in {"
        " inherit (check) script; report = {"
        " inherit (report) postPatch preBuild buildPhase installPhase env; path = report.outPath;"
        " nativeBuildInputs = map (p: p.name) report.nativeBuildInputs; }; }"
    )
    return facts


def test_the_tests_check_patches_every_env_shebang(tests_check: dict[str, Any]) -> None:
    # The sandbox has no /usr/bin/env.
    post_patch = tests_check["report"]["postPatch"]
    patched = [
        Path(directory)
        for line in re.findall(r"patchShebangs --build ([^\n]+)", post_patch)
        for directory in line.split()
    ]
    scripts = []
    for path in (ROOT / "tests").rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                if handle.read(15) == b"#!/usr/bin/env ":
                    scripts.append(path.relative_to(ROOT))
    assert scripts, "the GPU stand-ins are such scripts"
    assert not [s for s in scripts if not any(s.is_relative_to(d) for d in patched)]


# Every command the suite runs: the nixpkgs package the `tests` check puts on PATH, or
# why the sandbox has none (the tests that need it skip there, saying so).
SANDBOX_TOOLS = {
    "git": "git",
    "nginx": "nginx",
    "openssl": "openssl",
    "pgrep": "procps",
    "tinyproxy": "tinyproxy",
}
STDENV_TOOLS = frozenset({"bash", "gcc", "sleep"})
NOT_IN_SANDBOX = {
    "nvcc": "CUDA is unfree, and there is no GPU",
    "mount": "a real full disk needs a tmpfs mount: root only",
    "umount": "a real full disk needs a tmpfs mount: root only",
    "unshare": "a private mount namespace (a files-only resolver): root only",
    "capsh": "dropping root's capabilities: used only when the suite runs as root",
    "nix": "Nix in Nix",
    "nix-instantiate": "Nix in Nix",
    "nix-store": "Nix in Nix",
    "nixfmt": "its test needs Nix in Nix",
}


def commands_the_suite_runs() -> set[str]:
    calls = re.compile(
        r'subprocess\.(?:run|Popen|check_call|check_output)\(\s*\[\s*"([\w.+-]+)"'
        r'|shutil\.which\("([\w.+-]+)"\)'
    )
    return {
        found
        for folder in ("tests", "testing")  # the suite and the servers it starts
        for path in (ROOT / folder).rglob("*.py")
        for match in calls.finditer(path.read_text(encoding="utf-8"))
        for found in match.groups()
        if found
    }


def test_the_tests_check_has_every_tool_the_suite_runs(tests_check: dict[str, Any]) -> None:
    used = commands_the_suite_runs()
    unknown = used - SANDBOX_TOOLS.keys() - STDENV_TOOLS - NOT_IN_SANDBOX.keys()
    assert not unknown, f"say where {sorted(unknown)} come from in the sandbox (nix/checks.nix)"
    wanted = {SANDBOX_TOOLS[command] for command in used & SANDBOX_TOOLS.keys()}
    assert wanted <= set(tests_check["report"]["nativeBuildInputs"])


@pytest.mark.parametrize("status", [0, 3])
def test_a_check_keeps_its_log_when_it_fails(
    tests_check: dict[str, Any], tmp_path: Path, status: int
) -> None:
    """The report's phases and the check's script, run by bash as stdenv runs them."""
    build, report, result = tmp_path / "build", tmp_path / "report", tmp_path / "result"
    (build / "checks").mkdir(parents=True)
    (build / "checks" / "tests.sh").write_text(f"echo 'the suite ran'\nexit {status}\n")
    prelude = "set -eu -o pipefail\nrunHook() { :; }\n"
    phases = tests_check["report"]["buildPhase"] + tests_check["report"]["installPhase"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "out": str(report)}
    subprocess.run(["bash", "-c", prelude + phases], cwd=build, env=env, check=True, timeout=60)
    assert (report / "tests.log").read_text() == "the suite ran\n"
    assert (report / "status").read_text() == f"{status}\n"
    script = tests_check["script"].replace(tests_check["report"]["path"], str(report))
    checked = subprocess.run(
        ["bash", "-c", prelude + script], env={**env, "out": str(result)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == status
    if status:
        assert "the suite ran" in checked.stderr and str(report) in checked.stderr
        assert not result.exists()
    else:
        assert result.resolve() == report.resolve()


def test_the_tests_check_builds_bitnet_cpp_from_a_writable_copy(
    tests_check: dict[str, Any], tmp_path: Path
) -> None:
    pre_build = tests_check["report"]["preBuild"]
    (store_path,) = set(re.findall(r"/stub/[\w.-]+", pre_build))
    source = tmp_path / "source"
    (source / "3rdparty" / "llama.cpp").mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("project(bitnet)\n")
    for path in [source, *source.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # as in the store
    (tmp_path / "tmp").mkdir()
    try:
        shown = subprocess.run(
            ["bash", "-c", "set -eu\n" + pre_build.replace(store_path, str(source))
             + 'printf %s "$XTASK_TEST_BITNET_SOURCE"'],
            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    finally:
        for path in [source, *source.rglob("*")]:
            path.chmod(0o755)
    copy = Path(shown)
    assert (copy / "CMakeLists.txt").read_text() == "project(bitnet)\n"
    assert all(path.stat().st_mode & 0o200 for path in [copy, *copy.rglob("*")])
    # The variables are the ones the suite reads.
    references_py = (ROOT / "tests" / "references.py").read_text(encoding="utf-8")
    assert 'os.environ.get("XTASK_TEST_BITNET_SOURCE")' in references_py
    assert 'os.environ.get("XTASK_TEST_LLAMA_SDIST")' in references_py
    assert "XTASK_TEST_LLAMA_SDIST" in tests_check["report"]["env"]


def test_the_tests_check_has_the_vulkan_loader_and_lavapipe(flake_eval: FlakeEval) -> None:
    env = flake_eval(
        "builtins.mapAttrs (_: checks: checks.tests.report.env)"
        " { inherit (outputs.checks) x86_64-linux aarch64-linux; }"
    )
    for system, manifest in (("x86_64-linux", "x86_64"), ("aarch64-linux", "aarch64")):
        # Mesa's name for lavapipe's manifest, as Debian's mesa-vulkan-drivers installs it.
        assert env[system]["VK_DRIVER_FILES"] == (
            f"/stub/mesa/share/vulkan/icd.d/lvp_icd.{manifest}.json"
        )
        assert env[system]["LD_LIBRARY_PATH"] == "/stub/vulkan-loader/lib"


def test_llama_cpp_cuda_and_the_cuda_shell_share_the_split_cuda_packages(
    flake_eval: FlakeEval,
) -> None:
    facts = flake_eval(
        "let package = outputs.packages.x86_64-linux.llama-cpp-cuda;"
        " shell = outputs.devShells.x86_64-linux.cuda; names = map (p: p.name); in {"
        " package = { inherit (package) builtWith buildPhase;"
        "  nativeBuildInputs = names package.nativeBuildInputs;"
        "  buildInputs = names package.buildInputs; configures = !(package ? dontConfigure); };"
        " shell = { inherit (shell) builtWith; packages = names shell.packages;"
        "  buildInputs = names shell.buildInputs; }; }"
    )
    package, shell = facts["package"], facts["shell"]
    # Not the merged cudatoolkit (no libcudart_static.a); nvcc's host compiler's stdenv.
    assert package["builtWith"] == shell["builtWith"] == "cudaPackages.backendStdenv"
    assert package["nativeBuildInputs"][1:] == ["cuda_nvcc", "autoAddDriverRunpath"]
    assert shell["packages"] == ["cuda_nvcc"]
    linked = ["cuda_cudart", "cuda_cccl", "libcublas"]
    assert package["buildInputs"] == shell["buildInputs"] == linked
    assert package["configures"], "the CUDA packages' setup hooks run in configurePhase"
    # cudaCapabilities 8.9 and 9.0, in fetch-cpp's spelling.
    assert "--backend cuda --cuda-arch 89 --cuda-arch 90 " in package["buildPhase"]


def test_the_reference_packages_say_what_they_build(flake_eval: FlakeEval) -> None:
    facts = flake_eval(
        "builtins.mapAttrs (_: p: { inherit (p) version builtWith; })"
        " { inherit (outputs.packages.x86_64-linux) llama-cpp bitnet-cpp; }"
    )
    llama, bitnet = load_pins()["llama.cpp"], load_pins()["bitnet.cpp"]
    assert isinstance(llama, SdistPin) and isinstance(bitnet, GithubPin)
    # llama.cpp's commit, not the version of the llama-cpp-python sdist that vendors it.
    assert facts["llama-cpp"] == {
        "version": f"0-unstable-{llama.upstream['rev']}",
        "builtWith": "stdenv",
    }
    assert facts["bitnet-cpp"] == {
        "version": f"0-unstable-{bitnet.rev[:12]}",
        "builtWith": "clangStdenv",  # its CMakeLists accepts only Clang
    }


def test_native_builds_in_the_dev_shell_are_native(flake_eval: FlakeEval) -> None:
    hook = flake_eval("outputs.devShells.x86_64-linux.default.shellHook")
    # stdenv's compiler wrappers drop -march=native unless this is 0.
    assert re.search(r"^export NIX_ENFORCE_NO_NATIVE=0$", hook, re.M)


# --- what the README tells users ------------------------------------------------------


def readme_nix_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("\n## Nix\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_runs_each_app_with_options_the_command_has() -> None:
    runs = re.findall(r"nix run \.#([\w-]+) -- ([^\n#]*)", readme_nix_section())
    assert runs
    for app, args in runs:
        command = cli if app == "xtask" else cli.commands[app]
        options = {"--help"} | {
            option for param in command.params for option in (*param.opts, *param.secondary_opts)
        }
        used = set(re.findall(r"(?<!\S)(--[\w-]+)", args))
        assert used <= options, f"`xtask {app}` has no {sorted(used - options)}"


def test_the_docs_say_which_nix_checks_apps() -> None:
    # Nix checks `apps` (type and program) in `nix flake check` from 2.25 on.
    for path in (ROOT / "README.md", ROOT / "nix" / "README.md", ROOT / "checks" / "nix-full.sh"):
        text = path.read_text(encoding="utf-8")
        claims = re.findall(r"Nix before (2\.\d+)\s+does\s+not\s+check\s+apps", text)
        assert claims and set(claims) == {"2.25"}, (path, claims)


def test_the_readme_says_which_cmake_each_way_in_uses() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (cmake,) = [d for d in project["dependencies"] if d.startswith("cmake")]
    section = readme_nix_section()
    assert f"`{cmake}`" in section and "CMake 4" in section
    assert "NIX_ENFORCE_NO_NATIVE" in section


# --- scripts/ci-local.sh --------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "scripts"),
    [
        ("deps", ["deps"]),
        ("lint", ["deps", "lint"]),
        ("tests", ["deps", "tests"]),
        ("nix", ["deps", "nix"]),
        ("receipts", ["deps", "receipts"]),
        ("nix-full", ["nix-full"]),  # Nix and python3's json module only
        ("all", ["deps", "lint", "tests", "nix"]),
    ],
)
def test_every_ci_mode_installs_what_it_needs_first(
    tmp_path: Path, mode: str, scripts: list[str]
) -> None:
    """On a fresh checkout each mode alone works: the ones that run this package's Python
    install it (checks/deps.sh) first. A `bash` on PATH records what the mode runs."""
    real_bash = shutil.which("bash")
    assert real_bash is not None
    (tmp_path / "bin").mkdir()
    recorder = tmp_path / "bin" / "bash"
    recorder.write_text(f'#!/bin/sh\necho "$1" >>{tmp_path / "ran"}\n')
    recorder.chmod(0o755)
    subprocess.run(
        [real_bash, str(ROOT / "scripts" / "ci-local.sh"), mode],
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
        check=True, timeout=60,
    )  # fmt: skip
    ran = (tmp_path / "ran").read_text().split()
    assert ran == [f"checks/{script}.sh" for script in scripts]


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
