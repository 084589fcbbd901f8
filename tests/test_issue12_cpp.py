"""Issue 12, the cpp/nix share: one rule for a build directory's name, read by fetch-cpp,
crossval's `cpp:` specs and nix/; fetch-cpp's checks run once; no code only tests use;
bench/ and tests/ share the local servers without path tricks.

Build directories are made by the real `build_reference`, stopped where it finds no
compiler (after it has created the directory, before it fetches anything), so these
tests hold `find_build` to what fetch-cpp really does, not to a copy of its rule.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import test_nix
from conftest import Xtask
from test_nix import FlakeEval, NixRunner, evaluate

from bitnet_xtask.cli import main
from bitnet_xtask.cpp import build
from bitnet_xtask.cpp.build import BuildRequest, build_reference
from bitnet_xtask.cpp.layout import (
    LOCAL,
    BuildName,
    directory_name,
    parse_build_name,
    pin_revision,
)
from bitnet_xtask.cpp.pins import load_pins
from bitnet_xtask.crossval.backends import find_build, prefix_variable
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures import generate_fixture

ROOT = Path(__file__).resolve().parent.parent
PINS = load_pins()
SRI = "sha256-" + "A" * 43 + "="  # well formed; never checked, since nothing is fetched
# tests/test_nix.py's module-scoped fixtures: Nix with NIX_CONFIG, and the flake evaluated
# with the real nixpkgs lib and the recording stand-in for the package set.
nix, nixpkgs_lib, flake_eval = test_nix.nix, test_nix.nixpkgs_lib, test_nix.flake_eval


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty `$XDG_CACHE_HOME`, and an environment where fetch-cpp finds no compiler:
    PATH empty, no CC/CXX, and any HTTP(S) a regression would make sent to a closed port."""
    bare = tmp_path / "empty-path"
    bare.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", str(bare))
    for variable in ("CC", "CXX", prefix_variable("llama.cpp"), prefix_variable("bitnet.cpp")):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    return tmp_path / "xdg" / "bitnet_cpp"


def made_by_fetch_cpp(cache: Path, request: BuildRequest) -> Path:
    """The directory the real fetch-cpp builds `request` in, with a receipt as a finished
    build leaves one (build_reference runs until it finds no compiler)."""
    before = set(cache.iterdir()) if cache.is_dir() else set()
    with pytest.raises(UsageError, match="cannot build: missing"):
        build_reference(request)
    (made,) = set(cache.iterdir()) - before
    (made / "receipt.json").write_text(json.dumps({"version": 1, "inputs": {}}))
    return made


def source_tree(tmp_path: Path) -> Path:
    """A `--source` tree (fetch-cpp stops before configuring it); `include/` is where it
    writes bitnet.cpp's kernel header."""
    tree = tmp_path / "source"
    (tree / "include").mkdir(parents=True, exist_ok=True)
    return tree


# --- bug 4: every name fetch-cpp builds is a cpp: spec ---------------------------------

REQUESTS: dict[str, Callable[[Path], BuildRequest]] = {
    "pinned": lambda _: BuildRequest(),
    "native": lambda _: BuildRequest(native=True),
    "cuda": lambda _: BuildRequest(backend="cuda", cuda_archs=("90",)),
    "cuda-native": lambda _: BuildRequest(backend="cuda", native=True),
    "tag": lambda _: BuildRequest(rev="b6000", hash=SRI),
    "tag-with-dashes-cuda-native": lambda _: BuildRequest(
        rev="b6000-rc1", hash=SRI, backend="cuda", native=True
    ),
    "commit": lambda _: BuildRequest(rev="0123456789abcdef", hash=SRI),
    "source": lambda tmp: BuildRequest(source=source_tree(tmp)),
    "source-native": lambda tmp: BuildRequest(source=source_tree(tmp), native=True),
    "bitnet": lambda _: BuildRequest(ref="bitnet.cpp"),
    "bitnet-native": lambda _: BuildRequest(ref="bitnet.cpp", native=True),
}


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_every_build_fetch_cpp_makes_is_found_by_its_names(
    cache: Path, tmp_path: Path, kind: str
) -> None:
    request = REQUESTS[kind](tmp_path)
    made = made_by_fetch_cpp(cache, request)
    # By the directory's own name, and by its variant (the only build in the cache).
    variant = request.ref + ("-cuda" if request.backend == "cuda" else "")
    variant += "-native" if request.native else ""
    assert find_build(made.name) == made
    assert find_build(variant) == made


def test_a_native_build_is_cpp_llama_cpp_native(cache: Path) -> None:
    """The bug: `fetch-cpp --native` built `<ref>-<rev>-cpu-native`, which no spec named."""
    portable = made_by_fetch_cpp(cache, BuildRequest())
    native = made_by_fetch_cpp(cache, BuildRequest(native=True))
    assert native.name == f"llama.cpp-{pin_revision(PINS['llama.cpp'])}-cpu-native"  # README
    assert find_build("llama.cpp-native") == find_build("llama.cpp-cpu-native") == native
    assert find_build("llama.cpp") == find_build("llama.cpp-cpu") == portable


def test_crossval_runs_a_native_build_named_by_its_spec(
    xtask: Xtask, tmp_path: Path, cache: Path, llama_bin: Path
) -> None:
    """End to end: a build laid out where `fetch-cpp --native` puts it (the real build's
    bin/ and receipt) is what `crossval --backend cpp:llama.cpp-native` runs."""
    native = made_by_fetch_cpp(cache, BuildRequest(native=True))
    shutil.copytree(llama_bin, native / "bin", symlinks=True)
    if (llama_bin.parent / "receipt.json").is_file():
        shutil.copy2(llama_bin.parent / "receipt.json", native / "receipt.json")
    model = generate_fixture("tiny", "llama", "f32", 0, tmp_path / "fixtures").model
    receipt = tmp_path / "receipt.json"
    run = xtask.run(
        "crossval", "--model", str(model), "--backend", "cpp:llama.cpp-native",
        "--backend", "numpy", "--receipt", str(receipt),
        env=xtask.env(XDG_CACHE_HOME=str(cache.parent)), timeout=300,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert str(native) in receipt.read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_real_native_build_is_cpp_llama_cpp_native(
    llama_native_build: build.BuildResult,
) -> None:
    """The session's real `--native` build (tests/conftest.py) answers to the spec."""
    from references import cache_home

    with cache_home(llama_native_build.directory.parent.parent):
        assert find_build("llama.cpp-native") == llama_native_build.directory


def test_the_pins_build_comes_first_then_the_newest(cache: Path, tmp_path: Path) -> None:
    older = made_by_fetch_cpp(cache, BuildRequest(rev="b1", hash=SRI))
    newer = made_by_fetch_cpp(cache, BuildRequest(rev="b2", hash=SRI))
    os.utime(older / "receipt.json", (1, 1))
    assert find_build("llama.cpp") == newer
    pinned = made_by_fetch_cpp(cache, BuildRequest())
    os.utime(pinned / "receipt.json", (1, 1))
    assert find_build("llama.cpp") == pinned
    # A directory without a receipt holds no finished build.
    (made_by_fetch_cpp(cache, BuildRequest(native=True)) / "receipt.json").unlink()
    with pytest.raises(UsageError, match=r"no llama\.cpp cpu-native build"):
        find_build("llama.cpp-native")


def test_the_prefix_variable_stands_for_the_plain_cpu_build_only(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    native = made_by_fetch_cpp(cache, BuildRequest(native=True))
    portable = made_by_fetch_cpp(cache, BuildRequest())
    monkeypatch.setenv(prefix_variable("llama.cpp"), str(tmp_path / "nix-prefix"))
    assert find_build("llama.cpp") == tmp_path / "nix-prefix"
    assert find_build("llama.cpp-native") == native  # the Nix packages are not native
    assert find_build(portable.name) == portable  # a named build is that build


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("llama.cpp-b6000-cuda-native",
         "xtask fetch-cpp --ref llama.cpp --tag b6000 --hash sha256-...= --backend cuda --native"),
        ("llama.cpp-0123abcd-cpu",
         "xtask fetch-cpp --ref llama.cpp --rev 0123abcd --hash sha256-...="),
        ("bitnet.cpp-local-cpu", "xtask fetch-cpp --ref bitnet.cpp --source DIR"),
        ("llama.cpp-native", "xtask fetch-cpp --ref llama.cpp --native"),
        (f"llama.cpp-{pin_revision(PINS['llama.cpp'])}-cpu", "xtask fetch-cpp --ref llama.cpp"),
    ],
)  # fmt: skip
def test_a_missing_build_says_how_to_build_it(cache: Path, name: str, hint: str) -> None:
    with pytest.raises(UsageError) as caught:
        find_build(name)
    assert caught.value.hint is not None and caught.value.hint.endswith(hint)


@pytest.mark.parametrize(
    "name", ["llama.cpp-bogus", "llama.cpp-rocm", "gguf-cpu", "llama.cpp--cpu", "llama.cpp-x-"]
)
def test_a_name_no_fetch_cpp_build_has_is_refused_with_the_grammar(cache: Path, name: str) -> None:
    with pytest.raises(UsageError, match="unknown cpp build") as caught:
        find_build(name)
    assert caught.value.hint is not None and "cpp:<ref>[-cuda][-native]" in caught.value.hint


def test_every_directory_name_reads_back_as_itself() -> None:
    revisions = [*(pin_revision(pin) for pin in PINS.values()), LOCAL, "b6000", "b6000-rc1",
                 "cpu", "cuda", "native", "v1.2_3", "0c1e57098"]  # fmt: skip
    for ref in PINS:
        for revision in revisions:
            for backend in ("cpu", "cuda"):
                for native in (False, True):
                    name = directory_name(ref, revision, backend, native=native)
                    parsed = parse_build_name(name, PINS)
                    assert parsed == BuildName(ref, backend, native, revision), name


# --- the Nix packages install from the directory fetch-cpp names ------------------------


def test_the_nix_build_directory_is_spelled_as_python_spells_it(nix: NixRunner) -> None:
    cases = [(ref, revision, backend, native) for ref in PINS
             for revision in (LOCAL, pin_revision(PINS[ref]), "b6000-rc1")
             for backend in ("cpu", "cuda") for native in (False, True)]  # fmt: skip
    arguments = " ".join(
        f"{{ ref = {json.dumps(ref)}; revision = {json.dumps(revision)}; "
        f"backend = {json.dumps(backend)}; native = {str(native).lower()}; }}"
        for ref, revision, backend, native in cases
    )
    names = evaluate(nix, "--expr", f"map (import ./nix/build-directory.nix) [ {arguments} ]")
    assert names == [directory_name(r, v, b, native=n) for r, v, b, n in cases]


def test_the_nix_packages_install_what_fetch_cpp_source_built(
    flake_eval: FlakeEval, cache: Path, tmp_path: Path
) -> None:
    phases = flake_eval(
        "builtins.mapAttrs (_: p: { inherit (p) installPhase; inherit (p.passthru) ref backend; })"
        " { inherit (outputs.packages.x86_64-linux) llama-cpp llama-cpp-cuda bitnet-cpp; }"
    )
    for package in phases.values():
        ref, backend = package["ref"], package["backend"]
        # Where `fetch-cpp --source` (the package's buildPhase) really builds.
        request = BuildRequest(ref=ref, backend=backend, source=source_tree(tmp_path))
        made = made_by_fetch_cpp(cache, request)
        assert f'build="$XDG_CACHE_HOME/bitnet_cpp/{made.name}"' in package["installPhase"]


# --- item 2: fetch-cpp checks --cuda-arch once ------------------------------------------


@pytest.mark.parametrize("backend", ["cuda", "auto"])
def test_fetch_cpp_checks_the_cuda_archs_once(
    cache: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    calls: list[tuple[str, ...]] = []
    real = build.check_cuda_archs

    def counted(archs: tuple[str, ...]) -> tuple[str, ...]:
        calls.append(tuple(archs))
        return real(archs)

    monkeypatch.setattr(build, "check_cuda_archs", counted)
    monkeypatch.setenv("BITNET_GPU_FAKE", "cuda")
    code = main(["fetch-cpp", "--backend", backend, "--cuda-arch", "90"])
    assert code == 2  # no compiler here: stopped before anything is fetched
    assert calls == [("90",)]
    assert [p.name for p in cache.iterdir()] == [
        f"llama.cpp-{pin_revision(PINS['llama.cpp'])}-cuda"
    ]


def test_a_cuda_arch_typo_is_named_before_the_gpus_are_asked(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bitnet_xtask.gpu import detect

    def refuse() -> None:
        raise AssertionError("the GPUs were asked before --cuda-arch was checked")

    monkeypatch.setattr(detect, "detect_runtime", refuse)
    assert main(["fetch-cpp", "--backend", "auto", "--cuda-arch", "9.0"]) == 2
    assert "is not a CUDA architecture" in capsys.readouterr().err


# --- item 3: no function of cpp/ is there only for the tests ----------------------------


def names_used(tree: ast.AST) -> set[str]:
    """Every name a module's code refers to (not its strings: `__all__` is no use)."""
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used |= {alias.name for alias in node.names}
    return used


def test_every_public_function_of_cpp_is_used_by_the_package() -> None:
    package = ROOT / "src" / "bitnet_xtask"
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in package.rglob("*.py")}
    used = set().union(*map(names_used, trees.values()))
    unused = [
        f"{module.name}:{node.name}"
        for module in sorted((package / "cpp").glob("*.py"))
        for node in trees[module].body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
        and node.name not in used
    ]
    assert unused == [], "used by no code of the package (tests only, or nothing)"


# --- item 4: bench/ imports the servers the tests use, with no path tricks --------------


def test_the_servers_live_outside_tests_and_bench_does_not_reach_into_tests() -> None:
    import servers

    assert Path(servers.__file__).parent == ROOT / "testing" / "servers"
    for script in (ROOT / "bench").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        assert "sys.path" not in source, f"{script.name} edits sys.path"
        assert not re.search(r"""["']tests["']""", source), f"{script.name} names tests/"


@pytest.mark.parametrize("pythonpath", ["testing", None])
def test_bench_download_runs_the_documented_way_and_says_so_otherwise(
    pythonpath: str | None,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    run = subprocess.run(
        [sys.executable, "bench/bench_download.py", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if pythonpath:
        assert run.returncode == 0 and "--size-mib" in run.stdout, run.stderr
    else:
        assert run.returncode == 2 and "PYTHONPATH=testing" in run.stderr
