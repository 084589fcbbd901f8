"""Review findings on issue 10's fixes: every file-system error of an atomic write is a
clear error in words that fit any command, a 206 whose Content-Range is broken is a
protocol error (not an unknown size), and a logits file is re-read only through the
checked open. Real parts only: a read-only and a full tmpfs (tests/mounts.py), the
HF-compatible test server on 127.0.0.1, a real FIFO.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Xtask, payload
from mounts import Mounts, fill_up

from bitnet_xtask.cpp.bitnet_kernels import LUT_HEADER, generate_kernels
from bitnet_xtask.crossval.logits_file import LogitsFile
from bitnet_xtask.errors import ExitCode, NoSpaceError, UsageError, XtaskError
from bitnet_xtask.fs import atomic_write_text

pytestmark = pytest.mark.timeout(120)

NAME = "model.gguf"

# A child that reports what a caller outside any `try` would show a user.
_WRITE = (
    "import sys; from pathlib import Path; "
    "from bitnet_xtask.fs import atomic_write_text; "
    "from bitnet_xtask.errors import XtaskError\n"
    "try:\n"
    "    atomic_write_text(Path(sys.argv[1]), 'x')\n"
    "except XtaskError as exc:\n"
    "    print(exc, file=sys.stderr); sys.exit(exc.exit_code)\n"
)


# -- 1: atomic_write_text maps every OSError, in caller-neutral words ------------------------


def test_an_atomic_write_into_a_read_only_disk_is_a_usage_error(
    mounts: Mounts, tmp_path: Path
) -> None:
    disk = mounts.tmpfs(tmp_path / "ro", read_only=True)
    with pytest.raises(UsageError) as caught:
        atomic_write_text(disk / "receipt.json", "{}\n")
    assert caught.value.exit_code == ExitCode.USAGE
    assert "Read-only file system" in caught.value.message
    assert "download" not in str(caught.value)
    assert list(disk.iterdir()) == []
    done = subprocess.run(
        [sys.executable, "-c", _WRITE, str(disk / "receipt.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Traceback" not in done.stderr and "Read-only file system" in done.stderr


def test_a_too_long_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="File name too long"):
        atomic_write_text(tmp_path / ("n" * 250), "x")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_exit_10_without_download_words(mounts: Mounts, tmp_path: Path) -> None:
    disk = mounts.tmpfs(tmp_path / "full", "64k", fill=fill_up)
    with pytest.raises(NoSpaceError) as caught:
        atomic_write_text(disk / "receipt.json", "{}\n" * 100_000)
    assert caught.value.exit_code == ExitCode.NO_SPACE
    assert "download" not in str(caught.value) and "--out" not in str(caught.value)
    assert [p.name for p in disk.iterdir()] == ["filler"], "the temp file was left behind"


def test_fetch_cpp_kernel_header_on_a_read_only_tree_is_a_clear_error(
    mounts: Mounts, tmp_path: Path
) -> None:
    tree = tmp_path / "bitnet"
    mounts.tmpfs(tree, fill=lambda root: (root / "include").mkdir(), read_only=True)
    with pytest.raises(XtaskError) as caught:
        generate_kernels(tree, "i2_s")
    assert caught.value.exit_code == ExitCode.USAGE
    assert str(tree / LUT_HEADER) in caught.value.message


def test_a_receipt_on_a_read_only_disk_keeps_its_own_words(mounts: Mounts, tmp_path: Path) -> None:
    from bitnet_xtask.crossval.receipt import write_receipt

    disk = mounts.tmpfs(tmp_path / "ro", read_only=True)
    with pytest.raises(UsageError) as caught:
        write_receipt(disk / "r.json", {"ok": True})
    assert caught.value.message == (
        f"cannot write the receipt {disk / 'r.json'}: Read-only file system"
    )


# -- 2: a 206 probe whose Content-Range fails the checks is a protocol error ------------------


class _BrokenRangeHandler(http.server.BaseHTTPRequestHandler):
    """A mirror whose HEAD gives no size, so the 1-byte range GET must (`HubClient.probe`),
    and whose 206 carries the Content-Range the test sets; an unranged GET is served in
    full, which is what the old code fell back to: a download of unknown size."""

    content_range = ""
    body = payload(300_000, seed=7)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("ETag", '"abc"')
        self.end_headers()

    def do_GET(self) -> None:
        ranged = "Range" in self.headers
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", self.content_range)
        data = self.body[:1] if ranged else self.body
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_range_server() -> Iterator[tuple[str, type[_BrokenRangeHandler]]]:
    handler = type("Handler", (_BrokenRangeHandler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "content_range",
    ["bytes 0-0/1125899906842625", "bytes 5-0/300000", "bytes 0-0/99999999999999999"],
    ids=["total-over-2^50", "first-after-last", "17-digits"],
)
def test_a_probe_with_a_broken_content_range_is_a_protocol_error(
    broken_range_server: tuple[str, type[_BrokenRangeHandler]], xtask: Xtask, content_range: str
) -> None:
    url, handler = broken_range_server
    handler.content_range = content_range
    run = xtask.download(url, "--file", NAME)
    assert run.code == ExitCode.NETWORK, run.stderr
    assert "protocol error: Content-Range" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not xtask.target(NAME).exists()


# -- 3: a logits file is read again only through the checked open -----------------------------


def test_a_fifo_swapped_in_after_the_logits_file_was_checked_does_not_block(
    tmp_path: Path,
) -> None:
    path = tmp_path / "logits.f32"
    np.arange(12, dtype="<f4").tofile(path)
    logits = LogitsFile.raw(path, 3, 4)
    assert logits[0:1].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    path.unlink()
    os.mkfifo(path)
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(logits[0:3])
        except BaseException as exc:  # reported by the main thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the old code's open() so the thread can end
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading the logits blocked on a FIFO swapped in at the path")
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
    assert "FIFO" in str(outcome[0])
