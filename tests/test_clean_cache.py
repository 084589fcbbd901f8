"""clean-cache on real directories: sizes, choices, symlinks and refusals."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Xtask

from bitnet_xtask.commands.clean import parse_selection
from bitnet_xtask.errors import UsageError


@pytest.fixture
def caches(tmp_path: Path) -> dict[str, Path]:
    """A working directory with models and fixtures, and a cache home with two builds."""
    work, xdg = tmp_path / "work", tmp_path / "xdg"
    (work / "models" / "org-model").mkdir(parents=True)
    (work / "models" / "org-model" / "m.gguf").write_bytes(os.urandom(200_000))
    (work / "crossval" / "fixtures").mkdir(parents=True)
    (work / "crossval" / "fixtures" / "tiny.gguf").write_bytes(os.urandom(50_000))
    for build in ("llama.cpp-0c1e570-cpu", "bitnet.cpp-c82b5e6-cpu"):
        (xdg / "bitnet_cpp" / build / "bin").mkdir(parents=True)
        (xdg / "bitnet_cpp" / build / "bin" / "llama-cli").write_bytes(os.urandom(30_000))
    return {"work": work, "xdg": xdg}


def clean(xtask: Xtask, caches: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        xtask.argv(["clean-cache", *args]),
        cwd=caches["work"],
        env=xtask.env(XDG_CACHE_HOME=str(caches["xdg"])),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lists_every_cache_with_its_size_and_dry_run_removes_nothing(
    xtask: Xtask, caches: dict[str, Path]
) -> None:
    run = clean(xtask, caches, "--dry-run", "--json")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    names = [e["name"] for e in events if e["phase"] == "entry"]
    assert names == [
        "models",
        "fetch-cpp build bitnet.cpp-c82b5e6-cpu",
        "fetch-cpp build llama.cpp-0c1e570-cpu",
        "crossval fixtures",
    ]
    sizes = {e["name"]: e["bytes"] for e in events if e["phase"] == "entry"}
    assert sizes["models"] >= 200_000 and sizes["crossval fixtures"] >= 50_000
    assert events[-1] | {"phase": "done", "removed": [], "bytes": 0} == events[-1]
    assert (caches["work"] / "models" / "org-model" / "m.gguf").exists()


def test_yes_removes_everything_listed(xtask: Xtask, caches: dict[str, Path]) -> None:
    run = clean(xtask, caches, "--yes")
    assert run.returncode == 0, run.stderr
    assert "removed 4 of 4" in run.stdout
    assert not (caches["work"] / "models").exists()
    assert not (caches["work"] / "crossval" / "fixtures").exists()
    assert list((caches["xdg"] / "bitnet_cpp").iterdir()) == []
    again = clean(xtask, caches, "--yes")
    assert again.returncode == 0 and "nothing to clean" in again.stdout


def test_without_a_terminal_or_yes_nothing_is_removed(
    xtask: Xtask, caches: dict[str, Path]
) -> None:
    run = clean(xtask, caches)
    assert run.returncode == 0
    assert "nothing removed" in run.stderr and "removed 0 of 4" in run.stdout
    assert (caches["work"] / "models").exists()


def test_interactive_choice_on_a_terminal(xtask: Xtask, caches: dict[str, Path]) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        xtask.argv(["clean-cache"]),
        cwd=caches["work"],
        env=xtask.env(XDG_CACHE_HOME=str(caches["xdg"])),
        stdin=secondary,
        stderr=secondary,
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(secondary)
    prompt = b""
    deadline = time.monotonic() + 30
    while b"remove which?" not in prompt and time.monotonic() < deadline:
        prompt += os.read(primary, 1024)
    os.write(primary, b"1 4\n")
    out, _ = proc.communicate(timeout=30)
    os.close(primary)
    assert proc.returncode == 0
    assert "removed 2 of 4" in out
    assert not (caches["work"] / "models").exists()
    assert not (caches["work"] / "crossval" / "fixtures").exists()
    assert len(list((caches["xdg"] / "bitnet_cpp").iterdir())) == 2


def test_symlinks_are_removed_never_followed(
    xtask: Xtask, caches: dict[str, Path], tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("do not delete")
    models = caches["work"] / "models"
    (models / "org-model" / "link-to-precious").symlink_to(precious)
    fixtures = caches["work"] / "crossval" / "fixtures"
    for path in fixtures.iterdir():
        path.unlink()
    fixtures.rmdir()
    fixtures.symlink_to(precious)  # a root that is itself a link
    run = clean(xtask, caches, "--yes", "--json")
    assert run.returncode == 0, run.stderr
    entry = next(json.loads(line) for line in run.stdout.splitlines() if "fixtures" in line)
    assert entry["link"] is True
    assert not models.exists() and not fixtures.is_symlink()
    assert (precious / "keep.txt").read_text() == "do not delete"


@pytest.mark.parametrize("where", [".", "~"])
def test_refuses_to_delete_the_working_or_home_directory(
    xtask: Xtask, caches: dict[str, Path], where: str
) -> None:
    target = str(caches["work"]) if where == "." else str(xtask.home)
    run = clean(xtask, caches, "--yes", "--models", target)
    assert run.returncode == 2 and "refusing to delete" in run.stderr
    assert caches["work"].exists() and xtask.home.exists()


def test_parse_selection() -> None:
    assert parse_selection("", 3) == [] and parse_selection("none", 3) == []
    assert parse_selection("all", 3) == [0, 1, 2]
    assert parse_selection("3, 1 3", 3) == [0, 2]
    for bad in ("0", "4", "x"):
        with pytest.raises(UsageError):
            parse_selection(bad, 3)
