"""Issue 12, bug 3: the file-system layer is neutral; each caller says what its lock, its
full disk and its refusals mean to the user.

`download/store.py` used to be the whole package's file-system layer in a download's
words: fetch-cpp's build lock said the build directory "is being downloaded ... raise
--lock-timeout" (fetch-cpp has no such flag, and waits an hour), and its free-space check
told the user to "use --out on a larger disk". These tests drive the real fetch-cpp, with
a real second process holding the real lock and a real full tmpfs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Xtask
from mounts import Mounts

from bitnet_xtask import fs
from bitnet_xtask.cpp import build
from bitnet_xtask.cpp.build import BuildRequest, build_reference
from bitnet_xtask.errors import ExitCode, LockedError, NoSpaceError, UsageError
from bitnet_xtask.filelock import FileLock

#: Any outbound HTTP(S) a regressed build would make goes to a closed loopback port.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
HOLD = (
    "import sys, time; from pathlib import Path; from bitnet_xtask.filelock import FileLock;"
    "FileLock(Path(sys.argv[1]), 0).acquire(); print('held', flush=True); time.sleep(120)"
)


def _first_build_dir(xtask: Xtask, cache: Path) -> Path:
    """The directory a plain `fetch-cpp` builds in, made by a real run that stops at the
    missing compiler (after creating it, before any network)."""
    run = xtask.run(
        "fetch-cpp",
        env=xtask.env(XDG_CACHE_HOME=str(cache), CXX="no-such-compiler++", **NO_NETWORK),
    )
    assert run.code == ExitCode.USAGE, run.stderr
    (directory,) = (cache / "bitnet_cpp").iterdir()
    return directory


def test_fetch_cpp_waiting_out_a_build_lock_speaks_of_a_build_not_a_download(
    xtask: Xtask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    directory = _first_build_dir(xtask, cache)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
        monkeypatch.setattr(build, "BUILD_LOCK_TIMEOUT", 0.3)  # an hour in real use
        with pytest.raises(LockedError) as raised:
            build_reference(BuildRequest(ref="llama.cpp"))
    finally:
        holder.kill()
        holder.wait()
    error = raised.value
    assert f"{directory} is being built by pid {holder.pid}" in error.message
    assert "downloaded" not in error.message
    assert "--lock-timeout" not in (error.hint or "")
    assert error.exit_code == ExitCode.FAILURE


def test_fetch_cpp_on_a_full_cache_disk_names_its_own_remedy(
    xtask: Xtask, tmp_path: Path, mounts: Mounts
) -> None:
    """A 64 MiB cache disk cannot hold a 2 GiB build: exit 10 before anything runs, with
    fetch-cpp's remedy (XDG_CACHE_HOME), not a download's `--out`."""
    cache = mounts.tmpfs(tmp_path / "cache", "64m")
    run = xtask.run("fetch-cpp", env=xtask.env(XDG_CACHE_HOME=str(cache), **NO_NETWORK))
    assert run.code == ExitCode.NO_SPACE, run.stderr
    assert "not enough disk space" in run.stderr
    assert "XDG_CACHE_HOME" in run.stderr
    assert "--out" not in run.stderr
    assert "Traceback" not in run.stderr


def test_a_lock_without_a_caller_message_is_neutral(tmp_path: Path) -> None:
    path = tmp_path / "thing.lock"
    with FileLock(path, timeout=0).held(), pytest.raises(LockedError) as raised:
        FileLock(path, timeout=0.1, poll=0.02).acquire()
    assert (
        raised.value.message
        == f"{path} is held by pid {os.getpid()} on " + (raised.value.message.split(" on ", 1)[1])
    )
    assert "download" not in raised.value.message + (raised.value.hint or "")


def test_atomic_writer_leaves_the_old_file_and_no_temp_when_the_body_fails(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), fs.atomic_writer(path) as fd:
        fs.write_all(fd, b"half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_on_a_full_disk_carries_the_callers_hint(
    tmp_path: Path, mounts: Mounts
) -> None:
    disk = mounts.tmpfs(tmp_path / "disk", "64k")
    with pytest.raises(NoSpaceError) as raised:
        fs.atomic_write_text(disk / "big.json", "x" * (1 << 20), space_hint="use another disk")
    assert raised.value.hint == "use another disk"
    assert list(disk.iterdir()) == []


def test_open_regular_tells_what_it_found(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(fs.NotRegularFileError) as raised:
        fs.open_regular(fifo)  # O_NONBLOCK: returns at once instead of waiting for a writer
    assert raised.value.kind == "a FIFO"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    (tmp_path / "target").write_text("x")
    with pytest.raises(UsageError, match="symbolic link"):
        fs.open_regular(link)
    os.close(fs.open_regular(link, follow_links=True))


def test_check_can_create_refuses_a_file_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a regular file") as raised:
        fs.check_can_create(tmp_path / "file" / "sub", what="the receipt's folder", hint="h")
    assert raised.value.hint == "h"
    assert fs.check_can_create(tmp_path / "new" / "deeper", what="x", hint="h") == tmp_path
