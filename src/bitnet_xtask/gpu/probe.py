"""Running an external probe (nvidia-smi, rocm-smi, ...) without ever hanging on it.

A wedged GPU driver makes `nvidia-smi` block for minutes; preflight must still answer.
Every tool runs in its own process group with a deadline, and the whole group is
killed when the deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolOutput:
    """What one probe produced: stdout on success, else why it failed."""

    tool: str
    stdout: str | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        """The tool ran and exited 0."""
        return self.stdout is not None


def run_tool(argv: list[str], timeout: float) -> ToolOutput:
    """Run `argv` with a deadline; a missing tool is an ordinary, quiet outcome."""
    started = time.monotonic()
    tool = argv[0]
    path = shutil.which(tool)
    if path is None:
        return ToolOutput(tool, None, "not installed", 0.0)
    try:
        process = subprocess.Popen(
            [path, *argv[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        return ToolOutput(tool, None, f"could not run: {exc.strerror}", 0.0)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return ToolOutput(tool, None, f"timed out after {timeout:g}s", time.monotonic() - started)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        detail = (err or out).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {process.returncode}"
        return ToolOutput(tool, None, f"failed: {reason}", seconds)
    return ToolOutput(tool, out, None, seconds)
