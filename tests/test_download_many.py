"""`download_many`: several files of several repositories at once, against the real hub.

Why: concurrency is where a downloader's promises break quietly (a bound on connections
that only holds for one file, a Ctrl-C that checkpoints one file and loses the others, a
failure that takes the finished files down with it, two progress bars drawn over each
other), so every promise is checked on a real HTTP server (testing/servers/hf_server.py):
its request log says what crossed the wire, and its body counter how many responses were
being sent at once. The Ctrl-C test sends a real SIGINT to a real subprocess.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import REPO, Xtask, payload, sha256, wait_for
from servers.hf_server import Faults, HFTestServer, RecordedRequest

from bitnet_xtask.download import DownloadOptions, FileRequest, FileSpec, download_many
from bitnet_xtask.download.many import allot, most_important
from bitnet_xtask.download.options import Mismatch, contradiction
from bitnet_xtask.errors import (
    AuthError,
    HashMismatchError,
    Interrupted,
    NetworkError,
    NoSpaceError,
    RateLimitedError,
    UsageError,
    XtaskError,
)
from bitnet_xtask.events import ConsoleReporter
from bitnet_xtask.events.types import DownloadDone, DownloadProgress, DownloadStart

OTHER = "org/other"


def request(
    hf: HFTestServer, out: Path, repo: str, path: str, sha: str | None = None, **pin: Any
) -> FileRequest:
    """A request for one file of `repo` from the test hub; no token, no HF cache."""
    options = DownloadOptions(
        repo_id=repo, out=out, base_url=hf.hub_url, token="", use_hf_cache=False
    )
    return FileRequest(FileSpec(path, sha, **pin), options)


def landed(out: Path, repo: str, name: str) -> Path:
    return out / repo.replace("/", "-") / name


def body_gets(hf: HFTestServer, name: str) -> list[RecordedRequest]:
    """The CDN GETs of one file (its name is in the signed URL's query)."""
    return [
        r
        for r in hf.requests
        if r.server == "cdn"
        and r.method == "GET"
        and parse_qs(urlsplit(r.path).query).get("file") == [name]
    ]


class Events:
    """A real `ConsoleReporter` in JSON mode (every event checked against the schema, as
    conftest turns on), whose lines are read back."""

    def __init__(self) -> None:
        self.stdout = io.StringIO()
        self.reporter = ConsoleReporter(json_lines=True, stdout=self.stdout, stderr=io.StringIO())

    def of(self, phase: str) -> list[dict[str, Any]]:
        lines = self.stdout.getvalue().splitlines()
        return [e for e in map(json.loads, lines) if e["phase"] == phase]


# -- the rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "files", "parallel", "per_file"),
    [(4, 1, 1, 4), (4, 2, 2, 2), (4, 3, 3, 1), (4, 10, 4, 1), (1, 5, 1, 1), (5, 2, 2, 2)],
)
def test_allot_shares_the_connections(
    connections: int, files: int, parallel: int, per_file: int
) -> None:
    share = allot(connections, files)
    assert (share.parallel, share.per_file) == (parallel, per_file)


def test_allot_never_exceeds_the_bound() -> None:
    for connections in range(1, 17):
        for files in range(1, 40):
            share = allot(connections, files)
            assert 1 <= share.parallel * share.per_file <= connections
    with pytest.raises(UsageError, match="at least 1"):
        allot(0, 3)


def test_the_most_important_error_wins() -> None:
    order = [
        Interrupted("i"),
        NoSpaceError("s"),
        HashMismatchError("h"),
        AuthError("a"),
        RateLimitedError("r"),
        NetworkError("n"),
        UsageError("u"),
    ]
    for at, expected in enumerate(order):
        assert most_important(order[at:][::-1]) is expected
    first, second = XtaskError("first"), UsageError("second")
    assert most_important([first, second]) is first  # no kind ranks them: request order


def test_one_rule_says_what_contradicts_a_pin() -> None:
    digest = "a" * 64
    assert contradiction(digest, 10, digest.upper(), 10) is None
    assert contradiction(None, None, "b" * 64, 3) is None  # nothing pinned, nothing to say
    assert contradiction(digest, None, "b" * 64, None) == Mismatch("SHA-256", "b" * 64, digest)
    assert contradiction(digest, 10, None, 11) == Mismatch("size", "11 bytes", "10 bytes")
    assert FileSpec("m", size=5).contradiction(None, 5) is None
    for bad in (-1, True, "5"):
        with pytest.raises(UsageError, match="number of bytes"):
            FileSpec("m", size=bad)  # type: ignore[arg-type]


# -- concurrency, faults, the bound ------------------------------------------------------------


def test_files_of_two_repos_download_at_once_through_a_drop_and_a_429(
    hf: HFTestServer, tmp_path: Path
) -> None:
    """Four files, three connections: three at once, one stream each (`allot`); a dropped
    body resumes with a Range request, a 429 on a probe is waited out."""
    out = tmp_path / "models"
    files = {(REPO, "a.bin"): 1, (REPO, "b.bin"): 2, (OTHER, "c.bin"): 3, (OTHER, "d.bin"): 4}
    data = {key: payload(600_000, seed=seed) for key, seed in files.items()}
    digests = {key: hf.add_file(*key, body) for key, body in data.items()}
    slow = 1_500_000  # bytes per second per body: the files overlap in time
    hf.set_faults(REPO, "a.bin", Faults(drop_at=[200_000], rate_limit=slow))
    hf.set_faults(REPO, "b.bin", Faults(status_sequence=[(429, {"Retry-After": "0"})]))
    hf.set_faults(OTHER, "c.bin", Faults(rate_limit=slow))
    hf.set_faults(OTHER, "d.bin", Faults(rate_limit=slow))
    events = Events()
    requests = [request(hf, out, repo, name, digests[repo, name]) for repo, name in files]
    results = download_many(requests, connections=3, reporter=events.reporter)

    assert [r.path for r in results] == [landed(out, *key) for key in files]
    for (repo, name), result in zip(files, results, strict=True):
        assert result.path.read_bytes() == data[repo, name]
        assert result.sha256 == digests[repo, name] and result.source == "network"
        assert sorted(p.name for p in result.path.parent.iterdir() if p.name.startswith(name)) == [
            name,
            f"{name}.etag",
            f"{name}.lastmod",
        ]
    assert 2 <= hf.peak_body_streams <= 3
    resumed = [r.headers.get("range") for r in body_gets(hf, "a.bin")]
    assert resumed == [None, "bytes=200000-599999"]
    assert [r.status for r in hf.requests if r.server == "hub"].count(429) == 1
    assert sorted(e["file"] for e in events.of("retry")) == ["a.bin", "b.bin"]
    assert {e["path"] for e in events.of("progress")} == {str(r.path) for r in results}
    assert hf.errors == []


def test_a_big_file_gets_several_streams_and_the_bound_holds(
    hf: HFTestServer, tmp_path: Path
) -> None:
    """Two files of 17 MiB, four connections: two streams each, never more than four."""
    out = tmp_path / "models"
    size = 17 << 20
    data = [payload(size, seed=20), payload(size, seed=21)]
    names = ["big-1.bin", "big-2.bin"]
    for name, body in zip(names, data, strict=True):
        hf.add_file(REPO, name, body)
        hf.set_faults(REPO, name, Faults(rate_limit=24 << 20))
    events = Events()
    results = download_many(
        [request(hf, out, REPO, name) for name in names], connections=4, reporter=events.reporter
    )
    assert [r.path.read_bytes() == body for r, body in zip(results, data, strict=True)] == [
        True,
        True,
    ]
    assert [e["connections"] for e in events.of("start")] == [2, 2]
    assert 3 <= hf.peak_body_streams <= 4


def test_a_missing_file_fails_after_the_others_are_done(hf: HFTestServer, tmp_path: Path) -> None:
    out = tmp_path / "models"
    good = {name: payload(300_000, seed=n) for n, name in enumerate(("a.bin", "b.bin"))}
    for name, body in good.items():
        hf.add_file(REPO, name, body)
    hf.add_file(OTHER, "c.bin", b"other")
    requests = [
        request(hf, out, REPO, "a.bin"),
        request(hf, out, OTHER, "missing.bin"),
        request(hf, out, REPO, "b.bin"),
    ]
    with pytest.raises(NetworkError) as failed:
        download_many(requests, connections=2)
    assert failed.value.exit_code == 14
    assert failed.value.message.startswith("1 of 3 files failed (org/other/missing.bin): ")
    assert "not found" in failed.value.message
    for name, body in good.items():
        assert landed(out, REPO, name).read_bytes() == body
    assert not landed(out, OTHER, "missing.bin").exists()


def test_the_worst_of_several_failures_is_raised_and_every_one_is_named(
    hf: HFTestServer, tmp_path: Path
) -> None:
    """A 404 and a sha256 that the hub contradicts: the mismatch (exit 13) is raised, the
    message names both files, and the good file is in place."""
    out = tmp_path / "models"
    hf.add_file(REPO, "a.bin", payload(1000, seed=1))
    hf.add_file(REPO, "b.bin", payload(1000, seed=2))
    events = Events()
    requests = [
        request(hf, out, REPO, "gone.bin"),
        request(hf, out, REPO, "b.bin", "0" * 64),
        request(hf, out, REPO, "a.bin"),
    ]
    with pytest.raises(HashMismatchError) as failed:
        download_many(requests, connections=1, reporter=events.reporter)
    message = failed.value.message
    assert message.startswith("2 of 3 files failed (org/model/gone.bin, org/model/b.bin): ")
    assert "not downloading" in message
    assert "the same command again resumes the rest" in (failed.value.hint or "")
    assert landed(out, REPO, "a.bin").read_bytes() == payload(1000, seed=1)
    assert [e["file"] for e in events.of("done")] == ["a.bin"]


def test_two_requests_on_one_path_are_refused_before_any_request(
    hf: HFTestServer, tmp_path: Path
) -> None:
    out = tmp_path / "models"
    hf.add_file(REPO, "x/model.bin", b"1")
    hf.add_file(REPO, "y/model.bin", b"2")
    requests = [request(hf, out, REPO, "x/model.bin"), request(hf, out, REPO, "y/model.bin")]
    with pytest.raises(UsageError) as refused:
        download_many(requests)
    both = "org/model/x/model.bin and org/model/y/model.bin"
    assert refused.value.message == f"{both} both land on {landed(out, REPO, 'model.bin')}"
    assert hf.requests == [] and not out.exists()


# -- the pin: refused before the first body byte ---------------------------------------------


def test_a_changed_file_is_refused_before_its_first_byte(hf: HFTestServer, tmp_path: Path) -> None:
    out = tmp_path / "models"
    served = payload(50_000, seed=5)
    digest = hf.add_file(REPO, "m.bin", served)
    pinned = sha256(b"the version the catalog pinned")
    with pytest.raises(HashMismatchError) as by_sha:
        download_many([request(hf, out, REPO, "m.bin", pinned)])
    assert by_sha.value.message == (
        f"SHA-256 mismatch: the server's m.bin is {digest}, expected {pinned}: not downloading"
    )
    assert "the pinned file changed on the server, or the pin is wrong" in (by_sha.value.hint or "")
    with pytest.raises(HashMismatchError) as by_size:
        download_many([request(hf, out, REPO, "m.bin", digest.upper(), size=49_999)])
    assert "the server's m.bin is 50,000 bytes, expected 49,999 bytes" in by_size.value.message
    assert body_gets(hf, "m.bin") == []
    assert [r.method for r in hf.requests] == ["HEAD", "HEAD"] * 2  # hub, CDN; twice
    assert not landed(out, REPO, "m.bin").exists()
    assert not landed(out, REPO, "m.bin.part").exists()
    # The same pin, right this time: downloaded and verified.
    (ok,) = download_many([request(hf, out, REPO, "m.bin", digest, size=50_000)])
    assert ok.path.read_bytes() == served


def test_download_model_sha256_is_refused_up_front_too(hf: HFTestServer, xtask: Xtask) -> None:
    """The CLI's `--sha256` against a hub that advertises another: exit 13, no body GET."""
    digest = hf.add_file(REPO, "model.gguf", payload(80_000, seed=8))
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    run = xtask.download(hf.hub_url, "--file", "model.gguf", "--sha256", wrong)
    assert run.code == 13, run.stderr
    assert f"the server's model.gguf is {digest}, expected {wrong}: not downloading" in run.stderr
    assert "Traceback" not in run.stderr
    error = run.events()[-1]
    assert error["phase"] == "error" and error["code"] == 13 and "not downloading" in error["msg"]
    assert [r.method for r in hf.requests] == ["HEAD", "HEAD"]
    assert not xtask.target("model.gguf").exists()
    # --dry-run refuses what the run would refuse.
    plan = xtask.download(hf.hub_url, "--file", "model.gguf", "--sha256", wrong, "--dry-run")
    assert plan.code == 13 and "not downloading" in plan.stderr, plan.stderr


class _Unsized(BaseHTTPRequestHandler):
    """Any path: `BODY`, with no Content-Length (an HTTP/1.0 body ends when the connection
    closes), so no size is known before the last byte."""

    BODY = payload(70_000, seed=9)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        self.do_HEAD()
        self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads what it needs from the download's outcome."""


def test_a_size_only_known_at_the_end_is_checked_against_the_pin(tmp_path: Path) -> None:
    """A server that sends no size (no Content-Length, no X-Linked-Size): the bytes are
    counted once they are all here, and a count that is not the pinned size is a mismatch
    (exit 13), the partial file discarded as a wrong sha256's is."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unsized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "models"
        options = DownloadOptions(
            repo_id=REPO,
            out=out,
            base_url=f"http://127.0.0.1:{server.server_port}",
            token="",
            use_hf_cache=False,
        )
        pinned = FileRequest(FileSpec("m.bin", size=len(_Unsized.BODY) + 1), options)
        with pytest.raises(HashMismatchError) as failed:
            download_many([pinned])
        assert failed.value.message == (
            "size mismatch for m.bin: expected 70,001 bytes, got 70,000 bytes"
        )
        assert not out.exists(), "the .part and its state went, and so did their folder"
        (ok,) = download_many([FileRequest(FileSpec("m.bin", size=70_000), options)])
        assert ok.path.read_bytes() == _Unsized.BODY
    finally:
        server.shutdown()
        server.server_close()


# -- Ctrl-C: every file checkpoints, the rerun resumes them all ---------------------------------

DRIVER = """
import json, sys
from pathlib import Path
from bitnet_xtask.download import DownloadOptions, FileRequest, FileSpec, download_many
from bitnet_xtask.errors import XtaskError
from bitnet_xtask.events import ConsoleReporter

spec = json.loads(sys.argv[1])
requests = [
    FileRequest(
        FileSpec(f["path"], f["sha256"]),
        DownloadOptions(repo_id=f["repo"], out=Path(spec["out"]), base_url=spec["base_url"],
                        token="", use_hf_cache=False),
    )
    for f in spec["files"]
]
try:
    download_many(requests, connections=spec["connections"],
                  reporter=ConsoleReporter(json_lines=True))
except XtaskError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def drive(xtask: Xtask, spec: dict[str, Any]) -> subprocess.Popen[str]:
    """`download_many` in a subprocess of its own, as a command runs it."""
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        env=xtask.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigint_checkpoints_every_file_and_a_rerun_resumes_them_all(
    hf: HFTestServer, xtask: Xtask, tmp_path: Path
) -> None:
    """Three files streaming and one waiting out a 429's two-minute Retry-After: a SIGINT
    stops all four at once (exit 130), the three keep `.part` and its state, and the same
    run again resumes each with a Range request and verifies it."""
    out = tmp_path / "models"
    size = 4_000_000
    keys = [(REPO, "a.bin"), (REPO, "b.bin"), (OTHER, "c.bin"), (OTHER, "d.bin")]
    data = {key: payload(size, seed=30 + n) for n, key in enumerate(keys)}
    digests = {key: hf.add_file(*key, body) for key, body in data.items()}
    for key in keys[:3]:
        hf.set_faults(*key, Faults(rate_limit=1_000_000))
    hf.set_faults(OTHER, "d.bin", Faults(status_sequence=[(429, {"Retry-After": "120"})]))
    spec = {
        "out": str(out),
        "base_url": hf.hub_url,
        "connections": 4,
        "files": [{"repo": r, "path": p, "sha256": digests[r, p]} for r, p in keys],
    }
    parts = [landed(out, repo, f"{name}.part") for repo, name in keys[:3]]
    proc = drive(xtask, spec)
    try:
        wait_for(
            lambda: (
                all(p.is_file() and p.stat().st_size > 0 for p in parts)
                and any(r.status == 429 for r in hf.requests)
            ),
            what="three files streaming and one waiting out a 429",
        )
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - sent < 10, "the 429's wait must end at once"
    assert proc.returncode == 130, stderr
    assert "interrupted: 3 files kept their partial downloads" in stderr
    assert "org/model/a.bin, org/model/b.bin, org/other/c.bin" in stderr
    kept = {}
    for (repo, name), part in zip(keys, parts, strict=False):
        state = json.loads(landed(out, repo, f"{name}.part.json").read_text())
        received = sum(c["done"] - c["start"] for c in state["chunks"])
        assert 0 < received < size, name
        assert part.read_bytes()[:received] == data[repo, name][:received]
        assert not landed(out, repo, f"{name}.lock").exists()
        assert not landed(out, repo, name).exists()
        kept[name] = received
    assert not landed(out, OTHER, "d.bin.part").exists()
    assert not landed(out, OTHER, "d.bin.lock").exists()

    for key in keys:
        hf.set_faults(*key, Faults())
    hf.clear_log()
    rerun = drive(xtask, spec)
    stdout, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    for repo, name in keys:
        assert landed(out, repo, name).read_bytes() == data[repo, name]
        ranges = [r.headers.get("range") for r in body_gets(hf, name)]
        assert ranges == ([f"bytes={kept[name]}-{size - 1}"] if name in kept else [None]), name
    starts = {e["file"]: e for e in map(json.loads, stdout.splitlines()) if e["phase"] == "start"}
    assert {name: starts[name]["start"] for name in kept} == kept
    assert all(starts[name]["resume"] for name in kept)


# -- one progress bar for every file in flight --------------------------------------------------


def _start(path: str, total: int | None, start: int = 0) -> DownloadStart:
    return {"phase": "start", "command": "download-model", "file": Path(path).name,
            "url": "http://127.0.0.1/x", "path": path, "resume": start > 0, "start": start,
            "total": total, "connections": 1}  # fmt: skip


def _progress(path: str, downloaded: int, total: int | None) -> DownloadProgress:
    return {"phase": "progress", "command": "download-model", "file": Path(path).name,
            "path": path, "downloaded": downloaded, "total": total}  # fmt: skip


def _done(path: str, size: int) -> DownloadDone:
    return {"phase": "done", "command": "download-model", "file": Path(path).name,
            "path": path, "bytes": size, "ms": 1, "sha256": None, "commit": None,
            "cached": False, "source": "network"}  # fmt: skip


def frames(text: str) -> list[str]:
    """What the terminal showed, one entry per redraw of the bar (or line written)."""
    return [frame.strip() for frame in text.replace("\n", "\r").split("\r") if frame.strip()]


def closed_bars(text: str) -> list[str]:
    """The bars that were closed: a closed bar's last frame stays, ended by a newline."""
    return [
        line.rsplit("\r", 1)[-1] for line in text.split("\n") if "%|" in line.rsplit("\r", 1)[-1]
    ]


def test_the_progress_bar_aggregates_every_file_in_flight() -> None:
    err = io.StringIO()
    reporter = ConsoleReporter(progress=True, stdout=io.StringIO(), stderr=err)
    a, b = "models/org-model/a.bin", "models/org-other/a.bin"
    reporter.emit(_start(a, 1024))
    reporter.emit(_start(b, 3072))
    reporter.emit(_progress(a, 512, 1024))
    reporter.emit(_progress(b, 1536, 3072))
    reporter.info("halfway")  # redraws the bar
    reporter.emit(_progress(a, 1024, 1024))
    reporter.emit(_done(a, 1024))
    reporter.info("one left")
    reporter.emit(_progress(b, 3072, 3072))
    reporter.emit(_done(b, 3072))
    reporter.info("after")
    shown = frames(err.getvalue())
    halfway = shown[shown.index("halfway") + 1]
    assert halfway.startswith("2 files:  50%") and "2.00k/4.00k" in halfway, shown
    one_left = shown[shown.index("one left") + 1]
    # The finished file's bytes stay counted (the bar never runs backwards).
    assert one_left.startswith("a.bin:  62%") and "2.50k/4.00k" in one_left, shown
    bars = [f for f in shown if "%|" in f]
    assert bars[-1].startswith("a.bin: 100%") and "4.00k/4.00k" in bars[-1], shown
    assert shown[-1] == "after"  # the bar closed with the last file: nothing redrawn
    (closed,) = closed_bars(err.getvalue())  # one bar, closed once
    assert closed.startswith("a.bin: 100%")


def test_a_file_restarting_from_zero_does_not_run_the_shared_bar_backwards() -> None:
    err = io.StringIO()
    reporter = ConsoleReporter(progress=True, stdout=io.StringIO(), stderr=err)
    a, b = "d/a.bin", "d/b.bin"
    reporter.emit(_start(a, 2048))
    reporter.emit(_start(b, 2048))
    reporter.emit(_progress(a, 1024, 2048))
    reporter.info("before")
    reporter.emit(_start(a, 2048))  # a restart from byte 0 (the file changed)
    reporter.emit(_progress(a, 512, 2048))
    reporter.info("restarted")
    reporter.emit(_progress(a, 1536, 2048))
    reporter.info("past it")
    shown = frames(err.getvalue())
    before = shown[shown.index("before") + 1]
    assert "1.00k/4.00k" in before, shown
    assert "1.00k/4.00k" in shown[shown.index("restarted") + 1], shown  # held, not 0.50k
    assert "1.50k/4.00k" in shown[shown.index("past it") + 1], shown


def test_an_unknown_size_makes_the_total_unknown_and_an_error_closes_the_bar() -> None:
    err = io.StringIO()
    reporter = ConsoleReporter(progress=True, stdout=io.StringIO(), stderr=err)
    reporter.emit(_start("d/a.bin", 1024))
    reporter.emit(_start("d/b.bin", None))
    reporter.emit(_progress("d/b.bin", 2048, None))
    reporter.info("unknown")
    reporter.emit({"phase": "error", "command": "download-model", "code": 14, "msg": "x",
                   "hint": None})  # fmt: skip
    reporter.info("closed")
    shown = frames(err.getvalue())
    unknown = shown[shown.index("unknown") + 1]
    assert unknown.startswith("2 files: 2.00k") and "%" not in unknown, shown
    assert shown[-1] == "closed"


def test_a_single_download_keeps_its_own_bar() -> None:
    """One file: named after it, its own total; a restart from byte 0 opens a new bar."""
    err = io.StringIO()
    reporter = ConsoleReporter(progress=True, stdout=io.StringIO(), stderr=err)
    reporter.emit(_start("d/m.gguf", 2048, start=1024))
    reporter.emit(_progress("d/m.gguf", 1536, 2048))
    reporter.emit(_start("d/m.gguf", 2048))
    reporter.emit(_progress("d/m.gguf", 2048, 2048))
    reporter.emit(_done("d/m.gguf", 2048))
    shown = frames(err.getvalue())
    bars = [f for f in shown if "%|" in f]
    assert bars[0].startswith("m.gguf:  50%") and bars[-1].startswith("m.gguf: 100%"), shown
    first, second = closed_bars(err.getvalue())
    assert first.startswith("m.gguf:  75%") and second.startswith("m.gguf: 100%"), shown
    assert shown[-1].startswith("saved: d/m.gguf")
