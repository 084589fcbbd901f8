"""Pure logic: names, retry timing, chunk plans, resume state, manifests, locks."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from bitnet_xtask.download import FileSpec, read_manifest
from bitnet_xtask.download.hub import as_sha256, is_strong, redact, strip_quotes
from bitnet_xtask.download.retry import (
    Backoff,
    TransientError,
    parse_retry_after,
    retrying,
)
from bitnet_xtask.download.state import Chunk, ResumeState
from bitnet_xtask.download.store import leaf_name, model_dir
from bitnet_xtask.download.transfer import MAX_PIECE, MIN_CHUNK, READ_SIZE, plan_chunks
from bitnet_xtask.errors import (
    ExitCode,
    LockedError,
    NetworkError,
    RateLimitedError,
    UsageError,
)
from bitnet_xtask.filelock import FileLock
from bitnet_xtask.fs import atomic_write_text


@pytest.mark.parametrize(
    ("given", "leaf"),
    [("model.gguf", "model.gguf"), ("sub/dir/model.gguf", "model.gguf"), ("a.b-c_d", "a.b-c_d")],
)
def test_leaf_name_keeps_only_the_last_component(given: str, leaf: str) -> None:
    assert leaf_name(given) == leaf


@pytest.mark.parametrize(
    "bad", ["", "../x.gguf", "a/../../x", "/etc/passwd", "a\\b.gguf", "C:x", "a//b", "./x", "x\0y"]
)
def test_leaf_name_refuses_traversal(bad: str) -> None:
    with pytest.raises(UsageError) as err:
        leaf_name(bad)
    assert err.value.exit_code == ExitCode.USAGE


def test_model_dir_uses_id_with_dashes(tmp_path: Path) -> None:
    assert model_dir(tmp_path, "microsoft/bitnet-b1.58") == tmp_path / "microsoft-bitnet-b1.58"


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(retries=5, base=1.0, cap=4.0, rng=random.Random(1))
    delays = [backoff.delay(attempt, None) for attempt in range(10)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) == len(delays)
    assert backoff.delay(0, 9999.0) == backoff.max_retry_after
    assert backoff.delay(3, 2.0) == 2.0


def test_retrying_gives_up_with_the_documented_errors() -> None:
    sleeps: list[float] = []
    backoff = Backoff(retries=2, base=0.0, sleep=sleeps.append)

    def rate_limited() -> None:
        raise TransientError("429", retry_after=1.0, rate_limited=True)

    with pytest.raises(RateLimitedError):
        retrying(rate_limited, backoff, lambda *_: None)
    assert sleeps == [1.0, 1.0]

    def broken() -> None:
        raise TransientError("reset")

    with pytest.raises(NetworkError) as err:
        retrying(broken, backoff, lambda *_: None)
    assert err.value.exit_code == ExitCode.NETWORK


def test_retrying_resets_the_budget_when_an_attempt_made_progress() -> None:
    done = [0]

    def flaky() -> str:
        done[0] += 1
        if done[0] < 10:
            raise TransientError("dropped")
        return "ok"

    backoff = Backoff(retries=1, base=0.0, sleep=lambda _: None)
    assert retrying(flaky, backoff, lambda *_: None, progress=lambda: done[0]) == "ok"


def test_plan_chunks_covers_the_file_exactly() -> None:
    for size in (0, 1, READ_SIZE - 1, 10 * READ_SIZE + 3, 1 << 30, (100 << 30) + 7):
        for connections in (1, 3, 8):
            chunks = plan_chunks(size, connections)
            assert chunks[0].start == 0
            assert chunks[-1].end == size
            assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
            assert all(c.start % READ_SIZE == 0 for c in chunks)
            assert all(c.end - c.start <= MAX_PIECE for c in chunks[:-1]) or len(chunks) == 1
    assert len(plan_chunks(1 << 30, 1)) == 1  # one stream: one range, hashed inline
    assert len(plan_chunks(1 << 30, 4)) == 16  # 64 MiB pieces, ~4 per connection
    assert len(plan_chunks(4 << 20, 8)) == 1  # small files get one stream
    assert {c.end - c.start for c in plan_chunks(64 << 20, 8)} == {MIN_CHUNK}


def test_state_saves_finished_neighbours_as_one_range(tmp_path: Path) -> None:
    chunks = plan_chunks(1 << 30, 4)
    for chunk in chunks[:5] + chunks[6:8]:
        chunk.done = chunk.end
    chunks[5].done = chunks[5].start + READ_SIZE
    state = ResumeState("u", 1 << 30, '"e"', None, None, None, chunks)
    path = tmp_path / "s.json"
    atomic_write_text(path, state.to_json())
    saved = ResumeState.load(path)
    assert saved is not None and saved.received == state.received
    assert [(c.start, c.end) for c in saved.chunks[:3]] == [
        (0, 5 * MAX_PIECE),
        (5 * MAX_PIECE, 6 * MAX_PIECE),
        (6 * MAX_PIECE, 8 * MAX_PIECE),
    ]
    assert len(saved.chunks) == 3 + 8 and saved.contiguous() == state.contiguous()


def test_resume_state_round_trip_and_contiguous_prefix(tmp_path: Path) -> None:
    state = ResumeState(
        url="u",
        size=30,
        etag='"e"',
        linked_etag=None,
        commit="c",
        last_modified=None,
        chunks=[Chunk(0, 10, 10), Chunk(10, 20, 15), Chunk(20, 30, 25)],
    )
    assert state.received == 10 + 5 + 5
    assert state.contiguous() == 15
    path = tmp_path / "s.json"
    atomic_write_text(path, state.to_json())
    assert ResumeState.load(path) == state
    path.write_text("{not json")
    assert ResumeState.load(path) is None
    path.write_text(json.dumps({"version": 999}))
    assert ResumeState.load(path) is None


def test_manifest_text_and_json(tmp_path: Path) -> None:
    sha = "a" * 64
    text = tmp_path / "m.txt"
    text.write_text(f"# models\nmodel.gguf {sha}\n\nsub/tok.json  # no hash\n")
    assert read_manifest(text) == [FileSpec("model.gguf", sha), FileSpec("sub/tok.json")]
    js = tmp_path / "m.json"
    js.write_text(json.dumps([{"file": "a.gguf", "sha256": sha}, {"file": "b.gguf"}]))
    assert read_manifest(js) == [FileSpec("a.gguf", sha), FileSpec("b.gguf")]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("a b c\n", "m.txt:1"),
        ("x.gguf nothex\n", "m.txt:1"),
        ("# empty\n", "no files"),
        ('[{"nofile": 1}]', "invalid JSON"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "m.txt"
    path.write_text(content)
    with pytest.raises(UsageError, match=needle):
        read_manifest(path)


def test_etag_helpers() -> None:
    sha = "ab" * 32
    assert strip_quotes('W/"x"') == "x"
    assert is_strong('"x"') and not is_strong('W/"x"') and not is_strong(None)
    assert as_sha256(f'"{sha}"') == sha and as_sha256('"abc"') is None
    assert redact("https://cdn/x?sig=secret&k=1") == "https://cdn/x?…"


def test_lock_excludes_a_second_holder_and_names_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "f.lock"
    first = FileLock(path, timeout=0)
    first.acquire()
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        FileLock(path, timeout=0.3, poll=0.05).acquire()
    first.release()
    assert not path.exists()
    with FileLock(path, timeout=0).held():
        assert path.exists()
    assert not path.exists()


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "f.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pathlib import Path;"
            "from bitnet_xtask.filelock import FileLock;"
            "FileLock(Path(sys.argv[1]), 0).acquire(); print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert path.exists()  # a SIGKILL leaves the file behind
    lock = FileLock(path, timeout=2)
    lock.acquire()
    assert lock.took_over == f"pid {holder.pid} (no longer running)"
    lock.release()


def test_split_largest_keeps_a_partition_and_stays_ahead_of_reads(tmp_path: Path) -> None:
    from bitnet_xtask.download.store import Target
    from bitnet_xtask.download.transfer import MIN_CHUNK, PartFile

    size = 100 << 20
    state = ResumeState("u", size, '"e"', None, None, None, plan_chunks(size, 1))
    state.chunks[0].done = 10 << 20
    part = PartFile(Target(tmp_path, "f"), state, fresh=True)
    splits = 0
    try:
        while part.split_largest() is not None:
            splits += 1
    finally:
        part.close()
    assert 4 <= splits <= (90 << 20) // MIN_CHUNK
    chunks = sorted(state.chunks, key=lambda c: c.start)
    assert chunks[0].start == 0 and chunks[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    assert all(c.end - c.done >= MIN_CHUNK for c in chunks)
    assert all(c.start % READ_SIZE == 0 for c in chunks)


@pytest.mark.parametrize(
    ("size", "etag", "linked", "resumable"),
    [
        (10, '"strong"', None, True),
        (10, 'W/"weak"', None, False),
        (10, 'W/"weak"', '"' + "a" * 64 + '"', True),  # the hub's sha256 names the bytes
        (10, None, None, False),
        (None, '"strong"', None, False),
    ],
)
def test_ranges_need_a_size_and_a_strong_validator(
    size: int | None, etag: str | None, linked: str | None, resumable: bool
) -> None:
    assert ResumeState("u", size, etag, linked, None, None).resumable is resumable
