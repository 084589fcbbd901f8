"""Issue 10, two siblings of the download attack: text a hostile server (or a planted
sidecar) chooses reaching the user's terminal, and sidecars read without a bound.

1. A server chooses its reason phrase (`HTTP/1.1 500 <anything>`, up to 64 KiB), every
   header value and every redirect `Location`; a lock file says who holds it. All of it
   went into messages as it was: escape codes that retitle the terminal or clear it, C1
   controls, 50 KB of text per line, and 64 KiB of `a-a-a-` kept the credential mask's
   regex busy for 45 s per message. It now goes through one rule
   (`bitnet_xtask.untrusted.printable`): escaped (`\\x1b`), bounded, masked.
2. `.part.json`, `.lock`, `.etag` and `.lastmod` are tiny by construction. A larger one
   (a multi-GB sparse file, `truncate -s 8G`, or a well-formed state padded past 1 MiB)
   is not read and counts as corrupt: the state as none (start again from byte 0), the
   lock as one to take over, the metadata as absent; `--verbose` says so. A corrupt
   `.lastmod` was sent back as `If-Modified-Since`: 1 MiB of it drew a `431` (exit 14),
   a newline inside an `InvalidHeader` (exit 14), a character outside Latin-1 a traceback.

Every run is the real CLI in a subprocess against the project's HF-compatible server on
127.0.0.1 (testing/servers/hf_server.py, whose `reason` fault sends the hostile status line);
locks are held with a real `flock` by this process.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Run, Xtask, payload, sha256
from servers.hf_server import Faults, HFTestServer

from bitnet_xtask.download.store import metadata_ok
from bitnet_xtask.filelock import FileLock
from bitnet_xtask.redact import redact_text
from bitnet_xtask.untrusted import printable

pytestmark = pytest.mark.timeout(120)

NAME = "model.gguf"
DATA = payload(300_000, seed=61)
MIB = 1 << 20
ESC_TITLE = "\x1b]0;owned\x07"  # OSC: sets the terminal's title
HOSTILE = ESC_TITLE + "\x1b[2J\x1b[31m\x9b1m\x7f" + "a-" * 25_000  # ~50 KB, Latin-1, no CR/LF
ESCAPED = "\\x1b]0;owned\\x07\\x1b[2J"
MESSAGE_BOUND = 6000  # stderr of a failed run: a few lines, each bounded


def control_chars(text: str) -> list[str]:
    """C0 (but newline), DEL and C1 characters: what a terminal acts on."""
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]


def event_strings(run: Run) -> Iterator[str]:
    def walk(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    for event in run.events():
        yield from walk(event)


def assert_printable_and_bounded(run: Run, bound: int = MESSAGE_BOUND) -> None:
    """No control character on stderr or in any event (JSON escapes ESC on the wire, a
    consumer prints it decoded), stderr a few short lines, no traceback."""
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert control_chars(run.stderr) == [], run.stderr[:500]
    assert len(run.stderr) < bound, f"{len(run.stderr):,} characters on stderr"
    for text in event_strings(run):
        assert control_chars(text) == [], text[:200]
        assert len(text) < 2 * 1024, f"an event string of {len(text):,} characters"


def human_args(xtask: Xtask, base_url: str, *args: str) -> list[str]:
    """`download-model` without --json: what a person sees on a terminal."""
    return [a for a in xtask.download_args(base_url, *args) if a != "--json"]


def cdn_ranges(hf: HFTestServer) -> list[str]:
    return [
        r.headers.get("range", "") for r in hf.requests if r.server == "cdn" and r.method == "GET"
    ]


@pytest.fixture
def served(hf: HFTestServer) -> HFTestServer:
    hf.add_file(REPO, NAME, DATA)
    return hf


# -- the test server's new fault ---------------------------------------------------------------


def test_the_reason_fault_sends_a_hostile_status_line_verbatim(served: HFTestServer) -> None:
    served.set_faults(REPO, NAME, Faults(status_sequence=[(500, {})], reason=HOSTILE))
    host, port = served.hub_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"/{REPO}/resolve/main/{NAME}")
        answer = conn.getresponse()
        answer.read()
        assert (answer.status, answer.reason) == (500, HOSTILE)
        conn.request("GET", f"/{REPO}/resolve/main/{NAME}")
        again = conn.getresponse()  # consumed: the hub behaves again, with its own reason
        assert (again.status, again.reason) == (302, "Found")
    finally:
        conn.close()


# -- 1: server-controlled text in messages -----------------------------------------------------


@pytest.mark.parametrize(
    ("where", "status", "code"),
    [
        ("hub", 500, 14),  # retried, then "giving up": the reason is in the retry event too
        ("hub", 408, 14),
        ("hub", 401, 11),
        ("hub", 403, 11),
        ("hub", 418, 14),
        ("cdn", 502, 14),
    ],
)
def test_a_hostile_reason_phrase_is_escaped_and_bounded(
    served: HFTestServer, xtask: Xtask, where: str, status: int, code: int
) -> None:
    sequence = [(status, {"Retry-After": "0"})] * 2
    faults = Faults(reason=HOSTILE)
    if where == "hub":
        faults.status_sequence = sequence
    else:
        faults.cdn_status_sequence = sequence
    served.set_faults(REPO, NAME, faults)
    started = time.monotonic()
    run = xtask.download(served.hub_url, "--file", NAME, "--retries", "1")
    elapsed = time.monotonic() - started
    assert run.code == code, run.stderr[:2000]
    assert_printable_and_bounded(run)
    assert f"{status} {ESCAPED}" in run.stderr  # still says what the server said, escaped
    assert "…" in run.stderr
    assert run.events()[-1]["phase"] == "error"
    assert elapsed < 30, f"{elapsed:.0f} s: the credential mask went quadratic"
    if status >= 500 or status == 408:  # retried; the others fail at once
        assert "retry" in run.phases()


def test_a_retry_line_for_a_person_is_escaped_too(served: HFTestServer, xtask: Xtask) -> None:
    served.set_faults(
        REPO, NAME, Faults(status_sequence=[(503, {"Retry-After": "0"})], reason=HOSTILE)
    )
    run = xtask.run(*human_args(xtask, served.hub_url, "--file", NAME, "--retries", "2"))
    assert run.code == 0, run.stderr[:2000]
    assert f"retrying {NAME} in 0.0s: 503 {ESCAPED}" in run.stderr
    assert_printable_and_bounded(run)
    assert xtask.target(NAME).read_bytes() == DATA


@pytest.mark.parametrize(
    ("location", "phrase"),
    [
        # a fine URL whose path is escape codes: the connection is refused (nothing listens
        # on port 9), and the message names the URL
        (f"http://127.0.0.1:9/{HOSTILE}", "connection failed or dropped"),
        # a URL that can't be followed: the message quotes it
        (f"http://127.0.0.1:99999/{HOSTILE}", "can't be followed: Port out of range"),
        (f"http://127.0.0.1:\x07\x9b{'9' * 50_000}/x", "Port could not be cast"),
        (f"http://a\x1b\x07{'b' * 50_000}/x", "invalid host name 'a\\x1b\\x07bbb"),
    ],
    ids=["refused", "bad-port", "port-text", "host"],
)
def test_a_hostile_redirect_location_is_escaped_and_bounded(
    served: HFTestServer, xtask: Xtask, location: str, phrase: str
) -> None:
    served.set_faults(REPO, NAME, Faults(redirect_to=location))
    run = xtask.download(served.hub_url, "--file", NAME, "--retries", "0")
    assert run.code == 14, run.stderr[:2000]
    assert phrase in run.stderr
    assert_printable_and_bounded(run)


def test_hostile_header_values_are_escaped_in_verbose_output_and_in_the_plan(
    served: HFTestServer, xtask: Xtask
) -> None:
    """`--verbose` prints the headers behind each decision; the commit goes into the plan
    and the `done` event. Both were the server's bytes as they came."""
    hostile = {
        "ETag": f'"{ESC_TITLE}{"e" * 30_000}"',
        "X-Repo-Commit": ESC_TITLE + "c" * 30_000,
        "X-Error-Code": ESC_TITLE,
    }
    served.set_faults(REPO, NAME, Faults(hub_headers=hostile))
    plan = xtask.run(*human_args(xtask, served.hub_url, "--file", NAME, "--dry-run"))
    assert plan.code == 0, plan.stderr[:2000]
    assert "commit:      \\x1b]0;owned\\x07ccc" in plan.stderr
    assert_printable_and_bounded(plan)
    run = xtask.run(*human_args(xtask, served.hub_url, "--file", NAME, "--verbose"))
    assert run.code == 0, run.stderr[:2000]
    assert 'etag="\\x1b]0;owned\\x07eee' in run.stderr
    assert_printable_and_bounded(run)
    assert xtask.target(NAME).read_bytes() == DATA
    xtask.target(NAME).unlink()
    events = xtask.download(served.hub_url, "--file", NAME)
    assert events.code == 0, events.stderr[:2000]
    assert events.events()[-1]["commit"].startswith("\\x1b]0;owned\\x07ccc")
    assert_printable_and_bounded(events)


def test_a_hostile_error_message_header_is_used_but_never_shown(
    served: HFTestServer, xtask: Xtask
) -> None:
    """`X-Error-Message` only decides the hint (a gated repository); it is never printed."""
    headers = {"X-Error-Message": f"{ESC_TITLE} this repo is gated {'m' * 30_000}"}
    served.set_faults(REPO, NAME, Faults(status_sequence=[(403, headers)], reason=HOSTILE))
    run = xtask.download(served.hub_url, "--file", NAME)
    assert run.code == 11, run.stderr[:2000]
    assert "gated" in run.stderr
    assert_printable_and_bounded(run)


@pytest.fixture
def held_lock(xtask: Xtask) -> Iterator[Path]:
    """`<file>.lock` with a real flock held by this process (another open file description
    than the CLI's, so the CLI's flock conflicts); what is inside is the test's to write."""
    path = xtask.target(NAME + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield path
    finally:
        os.close(fd)


def test_a_hostile_lock_owner_is_escaped_and_bounded(
    served: HFTestServer, xtask: Xtask, held_lock: Path
) -> None:
    """Who holds a lock is what its file says; a file planted in a shared --out chose it."""
    owner = {"pid": ESC_TITLE, "host": "h\x1b[2J" + "x" * 3000, "since": "\x9b31m"}
    held_lock.write_text(json.dumps(owner))
    run = xtask.download(served.hub_url, "--file", NAME, "--lock-timeout", "0.5")
    assert run.code == 1, run.stderr[:2000]
    assert "is being downloaded by pid \\x1b]0;owned\\x07 on h\\x1b[2Jxxx" in run.stderr
    assert_printable_and_bounded(run)
    assert cdn_ranges(served) == []


@pytest.mark.parametrize("pid", ["1e300", "Infinity", "-1", "0", "true", '"12"'])
def test_a_lock_left_with_a_pid_that_is_no_pid_is_taken_over(
    served: HFTestServer, xtask: Xtask, pid: str
) -> None:
    """`1e300` made `os.kill` raise OverflowError, `Infinity` made `int` raise it: both
    tracebacks in the takeover of a free lock."""
    lock = xtask.target(NAME + ".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(f'{{"pid": {pid}, "host": "h", "since": "then"}}')
    run = xtask.download(served.hub_url, "--file", NAME, "--verbose")
    assert run.code == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert xtask.target(NAME).read_bytes() == DATA
    assert not lock.exists()


# -- 2: sidecars are read within a bound, and an oversized one counts as corrupt ---------------


def _interrupted(hf: HFTestServer, xtask: Xtask) -> Path:
    """A real partial download: the connection drops at 150,000, no retry allowed."""
    hf.set_faults(REPO, NAME, Faults(drop_at=[150_000]))
    first = xtask.download(hf.hub_url, "--file", NAME, "--retries", "0")
    assert first.code == 14, first.stderr
    state = xtask.target(NAME + ".part.json")
    assert sum(c["done"] - c["start"] for c in json.loads(state.read_text())["chunks"]) == 150_000
    return state


@pytest.mark.parametrize("padding", ["spaces", "sparse"])
def test_an_oversized_resume_state_starts_again_from_zero(
    served: HFTestServer, xtask: Xtask, padding: str
) -> None:
    """A well-formed state padded past 1 MiB was cut to its first 1 MiB, found well formed
    and resumed; an 8 GiB sparse one happened to fail to parse. Neither is ours: both are
    never read, the download starts again from byte 0, and --verbose says why."""
    state = _interrupted(served, xtask)
    if padding == "spaces":
        with state.open("a") as handle:
            handle.write(" " * (2 * MIB))
    else:
        os.truncate(state, 8 << 30)
    served.clear_log()
    run = xtask.download(served.hub_url, "--file", NAME, "--verbose")
    assert run.code == 0, run.stderr[-2000:]
    assert run.events()[0]["start"] == 0
    assert cdn_ranges(served) == [""]  # one whole-file GET, no resume
    assert f"{NAME}.part.json: " in run.stderr
    assert "more than the 1,048,576 a file of ours ever holds" in run.stderr
    assert xtask.target(NAME).read_bytes() == DATA
    assert not state.exists()


def test_a_corrupt_resume_state_is_named_in_verbose_output(
    served: HFTestServer, xtask: Xtask
) -> None:
    state = _interrupted(served, xtask)
    state.write_text(state.read_text().replace('"done": 150000', '"done": 150001'))
    run = xtask.download(served.hub_url, "--file", NAME, "--verbose")
    assert run.code == 0, run.stderr[-2000:]
    assert run.events()[0]["start"] == 0
    assert "not a resume state of this version" in run.stderr
    assert xtask.target(NAME).read_bytes() == DATA


def test_an_oversized_lock_is_taken_over_without_being_read(
    served: HFTestServer, xtask: Xtask
) -> None:
    lock = xtask.target(NAME + ".lock")
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.truncate(lock, 8 << 30)
    run = xtask.download(served.hub_url, "--file", NAME, "--verbose")
    assert run.code == 0, run.stderr[-2000:]
    assert f"{NAME}.lock: 8,589,934,592 bytes, more than the 4,096" in run.stderr
    assert xtask.target(NAME).read_bytes() == DATA
    assert not lock.exists()


def test_an_oversized_lock_that_is_held_is_waited_for_and_refused(
    served: HFTestServer, xtask: Xtask, held_lock: Path
) -> None:
    os.truncate(held_lock, 8 << 30)
    run = xtask.download(served.hub_url, "--file", NAME, "--lock-timeout", "0.5")
    assert run.code == 1, run.stderr[-2000:]
    assert "is being downloaded by another process" in run.stderr
    assert cdn_ranges(served) == []


def _downloaded_without_validators(hf: HFTestServer, xtask: Xtask) -> None:
    """A finished small (non-LFS) file: the hub serves it directly, its ETag a git blob id
    (no sha256), so a later run can only ask the server with a conditional GET."""
    hf.set_faults(REPO, NAME, Faults(no_linked_headers=True))
    first = xtask.download(hf.hub_url, "--file", NAME)
    assert first.code == 0, first.stderr
    assert xtask.target(NAME + ".lastmod").exists()
    xtask.target(NAME + ".etag").unlink()
    hf.clear_log()


@pytest.mark.parametrize(
    "content",
    ["huge", "sparse", "newline", "not-latin-1", "control"],
)
def test_a_corrupt_or_oversized_lastmod_counts_as_absent(
    served: HFTestServer, xtask: Xtask, content: str
) -> None:
    """`.lastmod` goes back to the server as `If-Modified-Since`: 1 MiB of it (or of an
    8 GiB sparse file's zeros) drew `431 Line too long` (exit 14), a newline inside
    `InvalidHeader` (exit 14), a `€` a UnicodeEncodeError traceback."""
    _downloaded_without_validators(served, xtask)
    lastmod = xtask.target(NAME + ".lastmod")
    if content == "sparse":
        os.truncate(lastmod, 8 << 30)
    else:
        lastmod.write_text(
            {
                "huge": "A" * MIB,
                "newline": "Mon, 01 Jan\n2024 00:00:00 GMT",
                "not-latin-1": "Mon, 01 Jan 2024 00:00:00 GMT €",
                "control": "Mon, 01 Jan 2024\x1b[2J 00:00:00 GMT",
            }[content]
        )
    run = xtask.download(served.hub_url, "--file", NAME, "--verbose")
    assert run.code == 0, run.stderr[-2000:]
    assert f"ignoring {lastmod}" in run.stderr
    assert_printable_and_bounded(run, bound=20_000)
    sent = [r.headers for r in served.requests if r.method == "GET"]
    assert sent and all("if-modified-since" not in h for h in sent)
    assert xtask.target(NAME).read_bytes() == DATA


def test_an_oversized_etag_counts_as_absent_and_the_file_is_not_downloaded_again(
    served: HFTestServer, xtask: Xtask
) -> None:
    """An `.etag` of 1 MiB of garbage was read (its first 1 MiB), compared with the hub's,
    found different, and the whole file was downloaded again; absent, the advertised
    sha256 settles it."""
    first = xtask.download(served.hub_url, "--file", NAME)
    assert first.code == 0, first.stderr
    xtask.target(NAME + ".etag").write_text("x" * MIB)
    served.clear_log()
    run = xtask.download(served.hub_url, "--file", NAME, "--verbose")
    assert run.code == 0, run.stderr[-2000:]
    assert run.events()[-1]["source"] == "up-to-date"
    assert f"ignoring {xtask.target(NAME + '.etag')}" in run.stderr
    assert cdn_ranges(served) == []
    assert xtask.target(NAME + ".etag").read_text().strip('"\n') == sha256(DATA)  # rewritten


def test_metadata_a_later_run_would_refuse_is_not_written(
    served: HFTestServer, xtask: Xtask
) -> None:
    """A server's 10 KB ETag was stored as `.etag`; the next run would ignore it."""
    served.set_faults(
        REPO, NAME, Faults(no_linked_headers=True, body_headers={"ETag": f'"{"e" * 10_000}"'})
    )
    run = xtask.download(served.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert not xtask.target(NAME + ".etag").exists()
    assert xtask.target(NAME + ".lastmod").exists()


# -- the rules themselves ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Internal Server Error", "Internal Server Error"),
        ("\x1b[2J\x07\x00\x7f\x9b", "\\x1b[2J\\x07\\x00\\x7f\\x9b"),
        ("a\nb\r\tc", "a\\x0ab\\x0d\\x09c"),
        ("evil\u202egnp.exe\u200b", "evil\\u202egnp.exe\\u200b"),  # bidi override, zero width
        ("tag \U000e0041", "tag \\U000e0041"),
        ("café ünïcode 模型", "café ünïcode 模型"),  # printable stays as it is
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_bounds_and_masks_before_it_cuts() -> None:
    assert printable("x" * 10, 10) == "x" * 10
    assert printable("x" * 11, 10) == "x" * 10 + "…"
    assert printable("\x1b" * 100, 10) == "\\x1b\\x1b…"  # an escape is never cut in half
    assert len(printable("y" * 70_000)) == 201
    cut = printable("http://alice:s3cret-password@mirror/x", 20)
    assert "s3cret" not in cut and cut.startswith("http://***@")


def test_the_credential_mask_is_linear_whatever_the_text() -> None:
    for text in ("a-" * 32_000, "a1" * 32_000, "a://!" + "b!" * 32_000, "://" * 20_000):
        started = time.monotonic()
        redact_text(text)
        assert time.monotonic() - started < 1.0
    assert redact_text("x_http://u:p@h/x") == "x_http://***@h/x"  # `\b` missed this one
    assert redact_text("see http://u:p@ss@host/a") == "see http://***@host/a"
    assert redact_text("http://h/x@y") == "http://h/x@y"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ('"abc"', True),
        ("Mon, 01 Jan 2024 00:00:00 GMT", True),
        ('W/"é"', True),
        ("", False),
        ("a\nb", False),
        ("a\x00b", False),
        ("€", False),
        pytest.param("x" * 4096, False, id="4096-bytes"),
    ],
)
def test_metadata_ok_is_what_can_go_back_as_a_header(value: str, ok: bool) -> None:
    assert metadata_ok(value) is ok


def test_a_lock_file_is_never_read_past_its_bound(tmp_path: Path) -> None:
    """The library's FileLock: an 8 GiB sparse lock is taken over, and `on_note` says so."""
    path = tmp_path / "x.lock"
    path.touch()
    os.truncate(path, 8 << 30)
    notes: list[str] = []
    with FileLock(path, timeout=0, on_note=notes.append).held():
        assert path.stat().st_size < 4096
    assert notes and "more than the 4,096" in notes[0]
