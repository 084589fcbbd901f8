"""download-model under real faults, against a real nginx: signals, crashes, a full disk, races.

Why: resumability and the single-writer lock only matter when something goes wrong, so these
tests make it go wrong for real instead of mocking it.  The CLI runs as a subprocess and gets
real SIGINT / SIGTERM / SIGKILL; the disk really fills up (a tmpfs, mounted as root); two real
processes race for one file; nginx is the reference HTTP peer and its JSON access log is the
evidence of what went over the wire (Range, If-Range, If-Modified-Since, bytes sent).

Nothing sleeps for a fixed time: every wait polls observable state (the `.part` file, the
resume sidecar, the JSON events on the subprocess's stdout, nginx's log) with a deadline, and
every spawned process is killed and reaped in a `finally`.  `/limited/` serves the same files
at a per-connection rate (conftest: 8 MiB/s, with nginx's one-second burst up front), slow
enough to be interrupted while a stream is running and fast enough to keep each test short.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import requests
from conftest import BIG_SIZE, REPO, Run, Xtask, payload, sha256, wait_for
from mounts import Mounts
from servers.nginx import NginxServer

from bitnet_xtask.download.transfer import MIN_CHUNK

pytestmark = pytest.mark.timeout(60)  # each test is designed to take well under 30 s

FILES_DIR = f"{REPO}/resolve/main"
MIB = 1 << 20
HEADROOM = 50 * MIB  # store.HEADROOM_BYTES
SINGLE = ("--connections", "1", "--no-progress")  # one stream: one ranged GET on resume


# -- helpers -------------------------------------------------------------------------------------


def _pump(stream: IO[str], sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


class Live:
    """A running download whose stdout (JSON events) and stderr are collected as they arrive."""

    def __init__(self, xtask: Xtask, base_url: str, *args: str) -> None:
        self.proc = xtask.start(*xtask.download_args(base_url, *args))
        self.pid = self.proc.pid
        self._out: list[str] = []
        self._err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self._out) if line.strip()]

    def output(self) -> str:
        return "".join(self._out) + "".join(self._err)

    def wait(self, predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        """Poll `predicate`; fail at once (with the output) if the process exits first."""

        def check() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None:
                if predicate():  # reached just before the exit
                    return True
                self._join()
                raise AssertionError(
                    f"download exited with {self.proc.returncode} before {what}:\n{self.output()}"
                )
            return False

        wait_for(check, timeout, what)

    def event(self, phase: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first event of `phase`, waiting for it."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events() if e["phase"] == phase][:1]
            return bool(found)

        self.wait(seen, f"a {phase!r} event", timeout)
        return found[0]

    def finish(self, timeout: float = 30.0) -> Run:
        code = self.proc.wait(timeout)
        self._join()
        return Run(code, "".join(self._out), "".join(self._err))

    def _join(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=5)

    def kill(self) -> None:
        """Kill (if still running), reap, and close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def spawn(xtask: Xtask, base_url: str, *args: str) -> Iterator[Live]:
    """Start a download; whatever happens in the block, the process is gone afterwards."""
    live = Live(xtask, base_url, *args)
    try:
        yield live
    finally:
        live.kill()


class Log:
    """nginx access-log entries for one URI, written after this object was made."""

    def __init__(self, nginx: NginxServer, uri: str) -> None:
        self.nginx = nginx
        self.uri = uri
        self.mark = len(nginx.access_log())

    def entries(self) -> list[dict[str, Any]]:
        return [e for e in self.nginx.access_log()[self.mark :] if e["uri"] == self.uri]

    def wait(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least `count` entries.  nginx logs an aborted request only once it notices the
        closed connection, so tests wait for those too, and no late entry leaks into the
        next test."""
        wait_for(
            lambda: len(self.entries()) >= count, timeout, f"{count} log entries for {self.uri}"
        )
        return self.entries()

    def settle(self, quiet: float = 1.0, timeout: float = 10.0) -> None:
        """Wait until no new entry has appeared for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        count, since = len(self.entries()), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.1)
            if len(self.entries()) != count:
                count, since = len(self.entries()), time.monotonic()


def gets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["method"] == "GET"]


def methods(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(e["method"] for e in entries)


def parse_range(header: str) -> tuple[int, int]:
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", header)
    assert match, f"not a closed byte range: {header!r}"
    return int(match[1]), int(match[2])


def uri(base: str, name: str) -> str:
    return f"{base}/{FILES_DIR}/{name}"


def resume_state(xtask: Xtask, name: str) -> dict[str, Any] | None:
    """`<file>.part.json`, or None while it does not exist (it is replaced atomically)."""
    try:
        state: dict[str, Any] = json.loads(xtask.target(name + ".part.json").read_text())
    except FileNotFoundError:
        return None
    return state


def received(state: dict[str, Any] | None) -> int:
    return 0 if state is None else sum(c["done"] - c["start"] for c in state["chunks"])


def leftovers(xtask: Xtask, name: str) -> list[str]:
    return [s for s in (".part", ".part.json", ".lock") if xtask.target(name + s).exists()]


def last(run: Run, phase: str) -> dict[str, Any]:
    found = [e for e in run.events() if e["phase"] == phase]
    assert found, f"no {phase!r} event in:\n{run.stdout}\n{run.stderr}"
    return found[-1]


def fill(path: Path) -> int:
    """Write `path` until the file system refuses with ENOSPC; the bytes written."""
    block = b"\xa5" * MIB
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            try:
                written += os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
    finally:
        os.close(fd)


def interrupt(
    xtask: Xtask, base_url: str, sig: signal.Signals, big_payload: bytes
) -> dict[str, Any]:
    """Start big.bin over the rate-limited URL, deliver `sig` once `.part` has bytes, and check
    what a graceful interruption promises.  Returns the saved resume state."""
    part = xtask.target("big.bin.part")
    with spawn(xtask, base_url, "--file", "big.bin", *SINGLE) as live:
        live.wait(lambda: part.is_file() and part.stat().st_size > 0, "bytes in big.bin.part")
        live.proc.send_signal(sig)
        run = live.finish()
    assert run.code == 130, run.stderr
    assert "interrupted" in run.stderr
    state = resume_state(xtask, "big.bin")
    assert state is not None, "the resume state must survive an interruption"
    kept = received(state)
    # The checkpoint on the way out covers every byte written: .part is exactly that prefix.
    assert 0 < kept < BIG_SIZE
    assert part.stat().st_size == kept
    assert part.read_bytes() == big_payload[:kept]
    error = last(run, "error")
    assert error["code"] == 130 and f"{kept:,} bytes of big.bin" in error["msg"]
    assert not xtask.target("big.bin.lock").exists(), "a graceful exit releases the lock"
    assert not xtask.target("big.bin").exists(), "no final file before it is complete"
    return state


def check_resumed(
    run: Run,
    log: Log,
    xtask: Xtask,
    state: dict[str, Any],
    big_payload: bytes,
) -> None:
    """The rerun after an interruption continued at the saved offset and finished correctly."""
    assert run.code == 0, run.stderr
    kept = received(state)
    start, done = last(run, "start"), last(run, "done")
    assert start["resume"] is True and start["start"] == kept > 0
    assert start["total"] == BIG_SIZE
    # Interrupted run: HEAD + its GET; rerun: HEAD + exactly one ranged GET.
    entries = log.wait(4)
    assert methods(entries) == ["GET", "GET", "HEAD", "HEAD"], entries
    ranged = [e for e in gets(entries) if e["http_range"]]
    assert len(ranged) == 1, entries
    resume = ranged[0]
    assert resume["http_range"] == f"bytes={kept}-{BIG_SIZE - 1}"
    assert resume["http_if_range"] == state["etag"] != ""
    assert resume["status"] == 206 and resume["bytes_sent"] == BIG_SIZE - kept
    assert done["sha256"] == sha256(big_payload) and done["cached"] is False
    assert done["bytes"] == BIG_SIZE
    assert xtask.target("big.bin").read_bytes() == big_payload
    assert leftovers(xtask, "big.bin") == []


# -- 1-3: signals --------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_keeps_the_part_and_a_rerun_resumes_with_a_ranged_get(
    xtask: Xtask, nginx: NginxServer, big_payload: bytes
) -> None:
    limited = nginx.url + "/limited"
    log = Log(nginx, uri("/limited", "big.bin"))
    state = interrupt(xtask, limited, signal.SIGINT, big_payload)
    assert xtask.target("big.bin.part.json").exists()

    run = xtask.download(limited, "--file", "big.bin", *SINGLE, timeout=30)
    check_resumed(run, log, xtask, state, big_payload)
    aborted = [e for e in gets(log.entries()) if not e["http_range"]]
    assert len(aborted) == 1 and aborted[0]["bytes_sent"] < BIG_SIZE


@pytest.mark.slow
def test_sigkill_leaves_a_stale_lock_that_a_rerun_takes_over(
    xtask: Xtask, nginx: NginxServer, big_payload: bytes
) -> None:
    limited = nginx.url + "/limited"
    digest = sha256(big_payload)
    log = Log(nginx, uri("/limited", "big.bin"))
    args = ("--file", "big.bin", *SINGLE, "--sha256", digest)
    with spawn(xtask, limited, *args) as live:
        # A kill loses what was not checkpointed; wait for a periodic checkpoint (the first
        # comes after 1 MiB) so that there is something durable to resume from.
        live.wait(
            lambda: received(resume_state(xtask, "big.bin")) > 0,
            "a periodic checkpoint in big.bin.part.json",
        )
        live.proc.send_signal(signal.SIGKILL)
        run = live.finish()
    assert run.code == -signal.SIGKILL
    lock = xtask.target("big.bin.lock")
    assert lock.exists(), "a killed process cannot clean up its lock file"
    assert json.loads(lock.read_text())["pid"] == live.pid
    state = resume_state(xtask, "big.bin")
    assert state is not None
    kept = received(state)
    part = xtask.target("big.bin.part")
    assert part.stat().st_size >= kept > 0
    assert part.read_bytes()[:kept] == big_payload[:kept], "checkpointed bytes are durable"
    assert not xtask.target("big.bin").exists()

    rerun = xtask.download(limited, *args, "--verbose", timeout=30)
    assert f"took over the lock left by pid {live.pid} (no longer running)" in rerun.stderr
    check_resumed(rerun, log, xtask, state, big_payload)
    assert last(rerun, "done")["sha256"] == digest


def test_sigterm_behaves_like_sigint(xtask: Xtask, nginx: NginxServer, big_payload: bytes) -> None:
    log = Log(nginx, uri("/limited", "big.bin"))
    interrupt(xtask, nginx.url + "/limited", signal.SIGTERM, big_payload)
    assert xtask.target("big.bin.part.json").exists()
    entries = log.wait(2)  # also: the aborted GET is logged before the next test starts
    assert methods(entries) == ["GET", "HEAD"]
    assert gets(entries)[0]["bytes_sent"] < BIG_SIZE


# -- 4: two processes, one file ------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_on_one_file_download_it_once(xtask: Xtask, nginx: NginxServer) -> None:
    name = "race-two-processes.bin"
    data = payload(24 * MIB, seed=44)  # an 8 MiB burst, then ~2 s at the limited rate
    served = Path(nginx.root) / FILES_DIR / name
    served.write_bytes(data)
    limited = nginx.url + "/limited"
    digest = sha256(data)
    args = ("--file", name, "--no-progress", "--sha256", digest)
    try:
        # Both at once: the second waits on the lock, then finds the file current.
        log = Log(nginx, uri("/limited", name))
        with spawn(xtask, limited, *args) as first:
            first.event("start")  # emitted with the lock held
            with spawn(xtask, limited, *args) as second:
                second.wait(
                    lambda: f"waiting for pid {first.pid} " in second.output(),
                    "the second process to wait for the first",
                )
                first_run = first.finish()
                second_run = second.finish()
        assert first_run.code == 0, first_run.stderr
        assert second_run.code == 0, second_run.stderr
        first_done, second_done = last(first_run, "done"), last(second_run, "done")
        assert first_done["cached"] is False and first_done["source"] == "network"
        assert second_done["cached"] is True and second_done["source"] == "up-to-date"
        assert first_done["path"] == second_done["path"] == str(xtask.target(name))
        assert first_done["sha256"] == second_done["sha256"] == digest
        assert [e["phase"] for e in second_run.events()] == ["done"]
        assert xtask.target(name).read_bytes() == data
        assert leftovers(xtask, name) == []
        entries = log.wait(3)
        assert methods(entries) == ["GET", "HEAD", "HEAD"], entries
        (get,) = gets(entries)
        assert get["status"] == 200 and get["http_range"] == ""
        assert get["bytes_sent"] == len(data)

        # --lock-timeout 0 while the first runs: fail at once, naming the holder.
        for suffix in ("", ".etag", ".lastmod"):
            xtask.target(name + suffix).unlink()
        log = Log(nginx, uri("/limited", name))
        with spawn(xtask, limited, *args) as first:
            first.event("start")
            refused = xtask.download(limited, *args, "--lock-timeout", "0", timeout=30)
            first_run = first.finish()
        assert refused.code == 1, refused.stderr
        assert f"being downloaded by pid {first.pid} " in refused.stderr
        error = last(refused, "error")
        assert error["code"] == 1 and f"pid {first.pid} " in error["msg"]
        assert first_run.code == 0, first_run.stderr
        assert last(first_run, "done")["sha256"] == digest
        assert xtask.target(name).read_bytes() == data
        assert leftovers(xtask, name) == []
        # The refused process sent no request at all: only the first one's HEAD and GET.
        entries = log.wait(2)
        assert methods(entries) == ["GET", "HEAD"], entries
        assert gets(entries)[0]["bytes_sent"] == len(data)
    finally:
        served.unlink()


# -- 5-6: a full disk ----------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_mid_write_exits_10_keeps_the_part_and_resumes(
    xtask: Xtask,
    nginx: NginxServer,
    big_payload: bytes,
    mounts: Mounts,
) -> None:
    # Room for the pre-check (64 MiB + 50 MiB headroom) with a margin, so that the rerun's
    # pre-check passes again once the filler is gone.
    mounts.tmpfs(xtask.out, "160m")
    filler = xtask.out / "filler"
    limited = nginx.url + "/limited"
    log = Log(nginx, uri("/limited", "big.bin"))
    with spawn(xtask, limited, "--file", "big.bin", *SINGLE) as live:
        # Fill the disk while the download runs: the checkpoints after it (periodic, and
        # the one on the way out) must still record the bytes, with no room for a temp
        # file (they overwrite the sidecar in place).
        part = xtask.target("big.bin.part")
        live.wait(lambda: part.exists() and part.stat().st_size >= MIB, "bytes in big.bin.part")
        before = received(resume_state(xtask, "big.bin"))
        filled = fill(filler)
        run = live.finish()
    assert filled > 0
    assert shutil.disk_usage(xtask.out).free < MIB
    assert run.code == 10, run.stderr
    assert "disk full" in run.stderr
    error = last(run, "error")
    assert error["code"] == 10 and "disk full" in error["msg"]
    state = resume_state(xtask, "big.bin")
    kept = received(state)
    assert state is not None and 0 < kept < BIG_SIZE and kept >= before
    part = xtask.target("big.bin.part")
    assert part.stat().st_size >= kept
    assert part.read_bytes()[:kept] == big_payload[:kept]
    assert not xtask.target("big.bin.lock").exists()
    assert not xtask.target("big.bin").exists()

    filler.unlink()
    rerun = xtask.download(limited, "--file", "big.bin", *SINGLE, timeout=30)
    check_resumed(rerun, log, xtask, state, big_payload)


def test_space_precheck_refuses_before_writing(
    xtask: Xtask, nginx: NginxServer, mounts: Mounts
) -> None:
    mounts.tmpfs(xtask.out, "100m")  # < 64 MiB + 50 MiB headroom
    log = Log(nginx, uri("", "big.bin"))
    run = xtask.download(nginx.url, "--file", "big.bin", timeout=30)
    assert run.code == 10, run.stderr
    directory = xtask.target("big.bin").parent
    match = re.search(
        r"not enough disk space in (.+): need ([\d,]+) bytes \+ 50 MiB headroom, ([\d,]+) free",
        run.stderr,
    )
    assert match, run.stderr
    assert match[1] == str(directory)
    assert int(match[2].replace(",", "")) == BIG_SIZE
    reported_free = int(match[3].replace(",", ""))
    free_now = shutil.disk_usage(xtask.out).free
    # While checking, the only thing written was the lock file's pid (one page, now gone).
    assert 0 <= free_now - reported_free <= 64 * 1024
    assert reported_free < BIG_SIZE + HEADROOM
    error = last(run, "error")
    assert error["code"] == 10 and "not enough disk space" in error["msg"]
    assert [e["phase"] for e in run.events()] == ["error"]
    assert not directory.exists(), "nothing may be left behind by the refused download"
    entries = log.wait(1)
    assert methods(entries) == ["HEAD"], "the probe only: no GET"


# -- 7: cache validation -------------------------------------------------------------------------


@dataclass
class _Served:
    """One file nginx serves, republished with new bytes and a distinct mtime."""

    xtask: Xtask
    nginx: NginxServer
    name: str

    @property
    def path(self) -> Path:
        return Path(self.nginx.root) / FILES_DIR / self.name

    def publish(self, data: bytes, mtime: int) -> str:
        """Publish `data` with a distinct mtime (nginx's validators have 1 s resolution)."""
        self.path.write_bytes(data)
        os.utime(self.path, (mtime, mtime))
        log = Log(self.nginx, uri("", self.name))
        with requests.Session() as session:
            session.trust_env = False
            head = session.head(self.nginx.url + uri("", self.name), timeout=10)
        assert head.status_code == 200
        log.wait(1)  # nginx logs after answering: keep this HEAD out of the next Log
        return head.headers["ETag"]

    def download(self) -> tuple[Run, list[dict[str, Any]]]:
        log = Log(self.nginx, uri("", self.name))
        run = self.xtask.download(self.nginx.url, "--file", self.name, timeout=30)
        assert run.code == 0, run.stderr
        return run, log.entries()

    def assert_plain_get_of(self, data: bytes, run: Run, entries: list[dict[str, Any]]) -> None:
        """A changed file: fetched again by an unconditional GET."""
        assert last(run, "done")["cached"] is False
        assert set(methods(entries)) == {"GET", "HEAD"}, entries
        (get,) = gets(entries)
        assert get["http_if_modified_since"] == "" and get["http_if_none_match"] == ""
        assert get["status"] == 200 and get["bytes_sent"] == len(data)
        assert self.xtask.target(self.name).read_bytes() == data


def test_cache_revalidation_with_real_nginx(xtask: Xtask, nginx: NginxServer) -> None:
    served = _Served(xtask, nginx, "cache-revalidation.bin")
    first, second, third = (payload(200_000 + i, seed=70 + i) for i in range(3))
    try:
        lastmod = _a_current_file_costs_one_head(served, first)
        _only_lastmod_is_a_conditional_get(served, first, lastmod)
        # Changed on the server: the HEAD shows a new ETag, and a plain GET fetches it.
        etag = served.publish(second, 1_700_000_100)
        run, entries = served.download()
        served.assert_plain_get_of(second, run, entries)
        assert last(run, "done")["sha256"] == sha256(second)
        assert xtask.target(served.name + ".etag").read_text().strip() == etag
        # Changed again, with .etag present: the HEAD sees it, a plain GET fetches it.
        served.publish(third, 1_700_000_200)
        run, entries = served.download()
        assert "changed on the server" in run.stderr
        served.assert_plain_get_of(third, run, entries)
        assert leftovers(xtask, served.name) == []
    finally:
        served.path.unlink(missing_ok=True)


def _a_current_file_costs_one_head(served: _Served, data: bytes) -> str:
    """The first download saves `.etag` and `.lastmod`; the next is a HEAD and nothing
    else. Returns the saved Last-Modified."""
    xtask, name = served.xtask, served.name
    etag = served.publish(data, 1_700_000_000)
    run, entries = served.download()
    assert last(run, "done")["cached"] is False
    assert methods(entries) == ["GET", "HEAD"]
    assert xtask.target(name).read_bytes() == data
    assert xtask.target(name + ".etag").read_text().strip() == etag
    run, entries = served.download()
    done = last(run, "done")
    assert done["cached"] is True and done["source"] == "up-to-date"
    assert methods(entries) == ["HEAD"], entries
    return xtask.target(name + ".lastmod").read_text().strip()


def _only_lastmod_is_a_conditional_get(served: _Served, data: bytes, lastmod: str) -> None:
    """No .etag, only .lastmod: a conditional GET, which nginx answers with 304."""
    xtask, name = served.xtask, served.name
    xtask.target(name + ".etag").unlink()
    run, entries = served.download()
    done = last(run, "done")
    assert done["cached"] is True and done["source"] == "up-to-date"
    # One HEAD (its answer is reused) and one conditional GET.
    assert methods(entries) == ["GET", "HEAD"], entries
    (get,) = gets(entries)
    assert get["http_if_modified_since"] == lastmod and get["http_if_none_match"] == ""
    assert get["status"] == 304 and get["bytes_sent"] == 0
    assert xtask.target(name).read_bytes() == data
    assert leftovers(xtask, name) == []
    assert xtask.target(name + ".etag").exists()  # the 304 carried the ETag: whole again


# -- 8: parallel streams -------------------------------------------------------------------------


def test_four_ranged_streams_cover_the_file(
    xtask: Xtask, nginx: NginxServer, big_payload: bytes
) -> None:
    log = Log(nginx, uri("", "big.bin"))
    digest = sha256(big_payload)
    run = xtask.download(
        nginx.url, "--file", "big.bin", "--connections", "4", "--sha256", digest, timeout=30
    )
    assert run.code == 0, run.stderr
    assert last(run, "start")["connections"] == 4
    assert last(run, "done")["sha256"] == digest
    assert xtask.target("big.bin").read_bytes() == big_payload
    # 4 streams take 8 MiB pieces front to back (about four pieces per stream, at
    # least 8 MiB each), so the hash follows the download.
    pieces = BIG_SIZE // MIN_CHUNK
    entries = log.wait(pieces + 1)
    assert methods(entries) == ["GET"] * pieces + ["HEAD"], entries
    etag = xtask.target("big.bin.etag").read_text().strip()
    ranges = sorted(parse_range(e["http_range"]) for e in gets(entries))
    assert ranges == [(i * MIN_CHUNK, (i + 1) * MIN_CHUNK - 1) for i in range(pieces)]
    for entry in gets(entries):
        first, end = parse_range(entry["http_range"])
        assert entry["status"] == 206 and entry["bytes_sent"] == end - first + 1
        assert entry["http_if_range"] == etag


def test_interrupted_parallel_download_resumes_every_stream(
    xtask: Xtask, nginx: NginxServer, big_payload: bytes
) -> None:
    limited = nginx.url + "/limited"
    digest = sha256(big_payload)
    args = ("--file", "big.bin", "--connections", "4", "--no-progress", "--sha256", digest)
    log = Log(nginx, uri("/limited", "big.bin"))
    part = xtask.target("big.bin.part")
    with spawn(xtask, limited, *args) as live:
        # .part is sparse while streams run: count allocated blocks, not its size.
        live.wait(
            lambda: part.is_file() and part.stat().st_blocks * 512 >= 8 * MIB,
            "8 MiB in big.bin.part",
        )
        live.proc.send_signal(signal.SIGINT)
        run = live.finish()
    assert run.code == 130, run.stderr
    state = resume_state(xtask, "big.bin")
    assert state is not None
    chunks = [(c["start"], c["done"], c["end"]) for c in state["chunks"]]
    assert chunks[0][0] == 0 and chunks[-1][2] == BIG_SIZE
    assert all(prev[2] == nxt[0] for prev, nxt in itertools.pairwise(chunks))
    gaps = [(done, end) for _, done, end in chunks if done < end]
    assert gaps, "interrupted mid-way: some range must be unfinished"
    data = part.read_bytes()
    for start, done, _ in chunks:
        assert data[start:done] == big_payload[start:done], f"bytes of [{start}, {done})"
    kept = received(state)
    log.settle()  # the interrupted run's aborted requests, logged late
    log = Log(nginx, uri("/limited", "big.bin"))

    rerun = xtask.download(limited, *args, timeout=30)
    assert rerun.code == 0, rerun.stderr
    start = last(rerun, "start")
    assert start["resume"] is True and start["start"] == kept > 0
    assert last(rerun, "done")["sha256"] == digest
    assert xtask.target("big.bin").read_bytes() == big_payload
    assert leftovers(xtask, "big.bin") == []
    resumed = gets(log.wait(1 + len(gaps)))
    # Every unfinished range is continued exactly where it stopped, with If-Range; a range
    # split for an idle stream starts inside a gap too: no received byte is fetched again.
    starts = {parse_range(e["http_range"])[0] for e in resumed}
    assert {done for done, _ in gaps} <= starts
    for entry in resumed:
        first, _ = parse_range(entry["http_range"])
        assert any(done <= first < end for done, end in gaps), entry
        assert entry["status"] == 206 and entry["http_if_range"] == state["etag"]
