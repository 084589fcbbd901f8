"""Fault and abuse: clean-cache against folders that a running writer holds.

Issue 10's "lose nothing" rule, for clean-cache: a fetch-cpp build whose `.lock` a live
fetch-cpp holds, and a models folder with a `<file>.lock` a live download-model holds,
are in use, and never removed under the writer's feet; a lock left by a killed process
does not count. Everything is real: lock holders are separate processes (a `python -c`
holding `filelock.FileLock`, a real download-model throttled by the project's HF test
server, a real fetch-cpp waiting for a lock), their locks real flocks (`/proc/locks`
shows who holds what), and clean-cache is paused for real (SIGSTOP) while it holds the
locks of a folder it is removing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from conftest import REPO, Xtask, payload, sha256, wait_for
from servers.hf_server import Faults, HFTestServer

from bitnet_xtask.cache import cache_entries, remove_entries
from bitnet_xtask.cpp.layout import pin_revision
from bitnet_xtask.cpp.pins import load_pins
from bitnet_xtask.errors import UsageError
from bitnet_xtask.filelock import FileLock

#: Any outbound HTTP(S) a regressed build would make goes to a closed loopback port.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
#: What a running download-model or fetch-cpp does with its lock (`filelock.FileLock`).
HOLD = (
    "import sys, time; from pathlib import Path;"
    "from bitnet_xtask.filelock import FileLock;"
    "FileLock(Path(sys.argv[1]), 0).acquire(); print('held', flush=True); time.sleep(300)"
)
BUILD = f"llama.cpp-{pin_revision(load_pins()['llama.cpp'])}-cpu"  # what `fetch-cpp` builds


# --- helpers ---------------------------------------------------------------------------


def env(xtask: Xtask, sandbox: dict[str, Path]) -> dict[str, str]:
    return xtask.env(XDG_CACHE_HOME=str(sandbox["xdg"]), **NO_NETWORK)


def clean(xtask: Xtask, sandbox: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        xtask.argv(["clean-cache", *args]),
        cwd=sandbox["work"],
        env=env(xtask, sandbox),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in run.stderr, run.stderr
    return run


@contextmanager
def held(lock: Path) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding `lock` the way download-model and fetch-cpp do."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes, to prove nothing was touched."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def flock_holders(path: Path) -> set[int]:
    """The pids holding an flock on `path`, from /proc/locks: looking takes nothing."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return set()
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            pids.add(int(fields[4]))
    return pids


class Pumped:
    """A started process whose stderr is collected as it arrives."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.err: list[str] = []
        assert proc.stderr is not None
        self._pump = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._pump.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.err.append(line)

    def stderr(self) -> str:
        return "".join(self.err)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self._pump.join(10)
        return code, self.stderr()


# --- a fetch-cpp build whose lock a live process holds ----------------------------------


def test_a_build_a_live_process_holds_is_refused_in_the_listing_dry_run_and_yes(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    lock = sandbox["build"] / ".lock"
    with held(lock) as holder:
        before, record = tree(sandbox["tmp"]), lock.read_text()
        listing = clean(xtask, sandbox, "--json")
        assert listing.returncode == 0, listing.stderr
        (build,) = [
            json.loads(line)
            for line in listing.stdout.splitlines()
            if json.loads(line).get("name") == f"fetch-cpp build {BUILD}"
        ]
        assert build["removable"] is False
        assert build["refused"].startswith(f"it is in use: {lock} is held by pid {holder.pid} ")
        for args in (["--dry-run"], ["--yes"]):
            run = clean(xtask, sandbox, *args)
            assert run.returncode == 2, run.stdout + run.stderr
            assert f"refusing to delete {sandbox['build']}: it is in use" in run.stderr
            assert f"pid {holder.pid}" in run.stderr and "wait for that process" in run.stderr
        assert tree(sandbox["tmp"]) == before  # nothing at all was removed, not even models
        assert lock.read_text() == record  # the holder's record, untouched
        assert flock_holders(lock) == {holder.pid}  # and its lock still its own
        assert holder.poll() is None


def test_a_lock_left_by_a_killed_process_does_not_block_and_goes(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    lock = sandbox["build"] / ".lock"
    with held(lock) as holder:
        holder.kill()
        holder.wait()
    assert lock.exists() and flock_holders(lock) == set()  # a SIGKILL leaves the file
    record = lock.read_text()
    dry = clean(xtask, sandbox, "--dry-run")
    assert dry.returncode == 0 and "removed nothing" in dry.stdout, dry.stderr
    assert lock.read_text() == record  # the dry run writes nothing
    run = clean(xtask, sandbox, "--yes")
    assert run.returncode == 0 and "removed 3 of 3" in run.stdout, run.stderr
    assert list((sandbox["xdg"] / "bitnet_cpp").iterdir()) == []


def test_the_dry_run_creates_no_lock(xtask: Xtask, sandbox: dict[str, Path]) -> None:
    """Only the removal takes (and creates) a build's `.lock`; asking creates nothing."""
    before = tree(sandbox["tmp"])
    assert clean(xtask, sandbox, "--dry-run").returncode == 0
    assert clean(xtask, sandbox).returncode == 0  # the listing without a terminal
    assert tree(sandbox["tmp"]) == before
    assert not (sandbox["build"] / ".lock").exists()


# --- a models folder with a download's lock ---------------------------------------------


@pytest.mark.parametrize("models", ["models", "models/org-model"])
def test_a_models_folder_whose_download_lock_is_held_is_refused(
    xtask: Xtask, sandbox: dict[str, Path], models: str
) -> None:
    folder = sandbox["work"] / "models" / "org-model"
    (folder / "big.gguf.part").write_bytes(os.urandom(30_000))  # the bytes so far
    lock = folder / "big.gguf.lock"
    with held(lock) as holder:
        before = tree(sandbox["work"])
        run = clean(xtask, sandbox, "--yes", "--models", models)
        assert run.returncode == 2, run.stdout + run.stderr
        shown = lock.relative_to(sandbox["work"])  # as given: --models is relative
        assert f"it is in use: {shown} is held by pid {holder.pid}" in run.stderr
        assert tree(sandbox["work"]) == before
        assert flock_holders(lock) == {holder.pid}
    run = clean(xtask, sandbox, "--yes", "--models", models)  # the download is over
    assert run.returncode == 0, run.stderr
    assert not folder.exists()


def test_a_fifo_named_like_a_lock_is_not_opened(xtask: Xtask, sandbox: dict[str, Path]) -> None:
    """Only regular `*.lock` files are asked: opening a FIFO would block clean-cache."""
    os.mkfifo(sandbox["work"] / "models" / "org-model" / "x.lock")
    start = time.monotonic()
    run = clean(xtask, sandbox, "--yes")
    assert run.returncode == 0 and "removed 3 of 3" in run.stdout, run.stderr
    assert time.monotonic() - start < 30


def test_a_lock_taken_between_listing_and_removal_refuses_and_changes_nothing(
    sandbox: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal takes every lock itself: one taken after the listing refuses it, and
    the locks it had already taken (a stale one here) are let go as they were, and a
    source tree's `flake.lock` (no lock of ours, but named like one) is not written."""
    monkeypatch.chdir(sandbox["work"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox["xdg"]))
    monkeypatch.setenv("HOME", str(sandbox["home"]))
    (sandbox["build"] / "src").mkdir()
    flake = sandbox["build"] / "src" / "flake.lock"
    flake.write_text('{"nodes": {}}\n')
    stale = sandbox["build"] / "a.lock"
    stale.write_text('{"pid": 1, "host": "h", "since": "then"}')
    entries = cache_entries(Path("models"), Path("crossval/fixtures"))
    build = next(e for e in entries if e.path == sandbox["build"])
    assert build.removable
    before = tree(sandbox["build"])
    with held(sandbox["build"] / "z.lock") as holder:  # sorts after a.lock and src/flake.lock
        with pytest.raises(UsageError, match=f"it is in use: .*z.lock is held by pid {holder.pid}"):
            remove_entries([build], entries)
        assert {k: v for k, v in tree(sandbox["build"]).items() if k != "z.lock"} == before
        assert not (sandbox["build"] / ".lock").exists()  # the one it made, removed again
        assert flock_holders(stale) == set() and flock_holders(flake) == set()


@pytest.mark.parametrize("late", ["locked", "swapped"])
def test_a_refusal_of_a_later_entry_removes_none_of_the_earlier_ones(
    sandbox: dict[str, Path], monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    """All or nothing: the models folder and a build are selected, then the build is
    locked by a live process (or swapped for another folder) after the listing. The
    refusal (exit 2, "nothing was removed") must be true: the models folder, judged
    first, is still there, byte for byte, and no lock is left held or created."""
    monkeypatch.chdir(sandbox["work"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox["xdg"]))
    monkeypatch.setenv("HOME", str(sandbox["home"]))
    models = sandbox["work"] / "models"
    (models / "org-model" / "m.gguf.lock").write_text('{"pid": 1, "host": "h", "since": "then"}')
    entries = cache_entries(Path("models"), Path("crossval/fixtures"))
    chosen = [e for e in entries if e.path in (Path("models"), sandbox["build"])]
    assert [e.path for e in chosen] == [Path("models"), sandbox["build"]]  # models goes first
    assert all(e.removable for e in chosen)
    before = tree(models)
    if late == "swapped":
        sandbox["build"].rename(sandbox["tmp"] / "old-build")
        (sandbox["build"] / "bin").mkdir(parents=True)
        with pytest.raises(UsageError, match="changed since it was listed") as caught:
            remove_entries(chosen, entries)
    else:
        with (
            held(sandbox["build"] / "z.lock"),
            pytest.raises(UsageError, match="it is in use") as caught,
        ):
            remove_entries(chosen, entries)
    assert caught.value.hint is not None and caught.value.hint.startswith("nothing was removed")
    assert tree(models) == before
    assert flock_holders(models / "org-model" / "m.gguf.lock") == set()
    assert not (sandbox["build"] / ".lock").exists()


def test_a_real_running_download_is_not_pulled_from_under_its_feet(
    xtask: Xtask, sandbox: dict[str, Path], hf: HFTestServer
) -> None:
    data = payload(1 << 20, seed=10)
    hf.add_file(REPO, "slow.gguf", data)
    hf.set_faults(REPO, "slow.gguf", Faults(rate_limit=200_000))  # ~5 s
    models = sandbox["work"] / "models"
    target = models / REPO.replace("/", "-")
    download = Pumped(
        subprocess.Popen(
            xtask.argv(
                [
                    "download-model",
                    "--base-url",
                    hf.hub_url,
                    "--id",
                    REPO,
                    "--file",
                    "slow.gguf",
                    "--out",
                    str(models),
                    "--no-progress",
                ]
            ),
            cwd=sandbox["work"],
            env=xtask.env(XDG_CACHE_HOME=str(sandbox["xdg"])),  # the hub is on 127.0.0.1
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    try:
        lock, part = target / "slow.gguf.lock", target / "slow.gguf.part"
        wait_for(
            lambda: download.proc.pid in flock_holders(lock) and part.exists(),
            20,
            "the download under way",
        )
        for args in (["--dry-run"], ["--yes"]):
            run = clean(xtask, sandbox, *args)
            assert run.returncode == 2, run.stdout + run.stderr
            shown = lock.relative_to(sandbox["work"])
            assert f"it is in use: {shown} is held by pid {download.proc.pid}" in run.stderr
            assert part.exists()
        code, err = download.finish()
    finally:
        if download.proc.poll() is None:
            download.proc.kill()
            download.proc.wait()
    assert code == 0, err
    assert sha256((target / "slow.gguf").read_bytes()) == sha256(data)
    run = clean(xtask, sandbox, "--yes")  # done: now it goes, and no lock is left anywhere
    assert run.returncode == 0, run.stderr
    assert not models.exists() and list(sandbox["xdg"].rglob("*.lock")) == []


# --- a writer that arrives while clean-cache removes ------------------------------------


def _paused_while_holding(proc: subprocess.Popen[str], lock: Path) -> None:
    """SIGSTOP `proc` as soon as /proc/locks shows it holding `lock`."""
    deadline = time.monotonic() + 30
    while proc.pid not in flock_holders(lock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"clean-cache never held {lock}:\n{out}{err}")
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGSTOP)


def test_a_fetch_cpp_arriving_during_the_removal_waits_then_stops_cleanly(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    """clean-cache holds the build's `.lock` (there was none: it makes one) until the
    folder is gone, so a real fetch-cpp that starts meanwhile waits instead of building
    into a folder being removed, then says the folder went (exit 1, no traceback)."""
    for i in range(40):  # enough files that the removal lasts a while
        (sandbox["build"] / "build" / f"d{i}").mkdir(parents=True)
        for j in range(500):
            (sandbox["build"] / "build" / f"d{i}" / f"o{j}").touch()
    lock = sandbox["build"] / ".lock"
    cleaner = subprocess.Popen(
        xtask.argv(["clean-cache", "--yes"]),
        cwd=sandbox["work"],
        env=env(xtask, sandbox),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list[subprocess.Popen[str]] = [cleaner]
    try:
        _paused_while_holding(cleaner, lock)
        fetch = Pumped(
            subprocess.Popen(
                xtask.argv(["fetch-cpp", "--backend", "cpu"]),
                cwd=sandbox["work"],
                env=env(xtask, sandbox) | {"CXX": "no-such-compiler++"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        started.append(fetch.proc)
        wait_for(lambda: "waiting for" in fetch.stderr(), 30, "fetch-cpp waiting for the lock")
        assert sandbox["build"].exists()  # clean-cache, paused, still holds it
        os.kill(cleaner.pid, signal.SIGCONT)
        out, err = cleaner.communicate(timeout=60)
        assert cleaner.returncode == 0, err
        assert "removed 3 of 3" in out
        code, fetch_err = fetch.finish()
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
    assert code == 1, fetch_err
    assert "Traceback" not in fetch_err
    assert f"its folder {sandbox['build']} no longer exists" in fetch_err
    assert not sandbox["build"].exists()  # fetch-cpp wrote nothing into the removed folder


# --- filelock.FileLock: a release never unlinks someone else's lock ------------------------


def test_a_release_leaves_a_newer_lock_at_the_same_name_alone(tmp_path: Path) -> None:
    """The first holder's folder is removed and made again, and another process locks the
    same name anew: the first holder's release must not unlink that lock, or a third
    process would take the name too and two writers would run at once."""
    folder = tmp_path / "org-model"
    folder.mkdir()
    lock = folder / "m.gguf.lock"
    first = FileLock(lock, timeout=0)
    first.acquire()
    folder.rename(tmp_path / "gone")  # clean-cache, say, while first still runs
    folder.mkdir()
    with held(lock) as second:
        first.release()
        assert lock.exists() and flock_holders(lock) == {second.pid}
