"""The command line as a user meets it: entry points, usage errors, the reporter."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from conftest import Xtask

from bitnet_xtask import __version__
from bitnet_xtask.cli import main
from bitnet_xtask.events import ConsoleReporter
from bitnet_xtask.events.types import DownloadProgress, DownloadStart


def test_version_via_python_m_and_console_script(xtask: Xtask) -> None:
    run = xtask.run("--version")
    assert run.code == 0 and __version__ in run.stdout
    script = subprocess.run(
        [sys.executable, "-c", "import sys; from bitnet_xtask.cli import main; sys.exit(main())",
         "--version"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert script.returncode == 0 and __version__ in script.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["download-model", "--sha256", "xyz"], "64 hex digits"),
        (["download-model", "--bogus"], "No such option"),
        (["nope"], "No such command"),
        (["download-model", "--base-url", "ftp://mirror"], "invalid --base-url"),
        (["download-model", "--id", "../etc"], "invalid repository id"),
        (["download-model", "--file", "a", "--file", "b", "--sha256", "a" * 64], "one file"),
        (["download-model", "--manifest", "missing.txt"], "manifest missing.txt does not exist"),
        (["download-model", "--connections", "0"], "--connections"),
    ],
)
def test_usage_errors_exit_2_with_a_message(xtask: Xtask, args: list[str], message: str) -> None:
    run = xtask.run(*args)
    assert run.code == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_json_error_event_carries_the_exit_code(xtask: Xtask) -> None:
    run = xtask.run("download-model", "--json", "--sha256", "nothex")
    assert run.code == 2
    (event,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert event["phase"] == "error" and event["code"] == 2 and "hex" in event["msg"]


def test_main_returns_codes_instead_of_exiting() -> None:
    assert main(["--version"]) == 0
    assert main(["download-model", "--sha256", "bad"]) == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _start(file: str, total: int) -> DownloadStart:
    return {"phase": "start", "command": "download-model", "file": file, "url": "u", "path": file,
            "resume": False, "start": 0, "total": total, "connections": 1}  # fmt: skip


def _progress(file: str, downloaded: int, total: int) -> DownloadProgress:
    return {"phase": "progress", "command": "download-model", "file": file, "path": file,
            "downloaded": downloaded, "total": total}  # fmt: skip


def test_reporter_draws_a_bar_on_a_terminal_and_never_on_json() -> None:
    err = _Terminal()
    reporter = ConsoleReporter(stdout=io.StringIO(), stderr=err)
    reporter.emit(_start("m.gguf", 2048))
    reporter.emit(_progress("m.gguf", 1024, 2048))
    reporter.emit({"phase": "done", "command": "download-model", "file": "m.gguf", "path": "p",
                   "bytes": 2048, "ms": 1, "sha256": None, "commit": None, "cached": False,
                   "source": "network"})  # fmt: skip
    text = err.getvalue()
    assert "downloading m.gguf" in text and "50%" in text and "saved: p (2.0 KiB)" in text

    out, err = io.StringIO(), _Terminal()
    reporter = ConsoleReporter(json_lines=True, stdout=out, stderr=err)
    reporter.emit(_progress("m", 1, 2))
    reporter.info("for people")
    assert json.loads(out.getvalue()) == _progress("m", 1, 2)
    assert err.getvalue() == "for people\n"


def test_no_progress_and_non_tty_draw_no_bar() -> None:
    for stream, progress in ((_Terminal(), False), (io.StringIO(), None)):
        reporter = ConsoleReporter(progress=progress, stdout=io.StringIO(), stderr=stream)
        reporter.emit(_start("m", 10))
        reporter.emit(_progress("m", 5, 10))
        assert "%" not in stream.getvalue()


def test_verbose_gates_debug_lines() -> None:
    quiet, loud = io.StringIO(), io.StringIO()
    ConsoleReporter(stderr=quiet).debug("detail")
    ConsoleReporter(stderr=loud, verbose=True).debug("detail")
    assert quiet.getvalue() == "" and loud.getvalue() == "debug: detail\n"
