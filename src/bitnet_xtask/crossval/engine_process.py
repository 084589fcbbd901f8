"""Running an engine (someone else's program) and reading what it wrote, safely.

An engine may hang, print without end, start children or leave a FIFO where a file
belongs. So each call runs in its own session within a deadline (then its whole process
group is killed, as on Ctrl-C too), its stdout and stderr go to files, and what it
writes is read only from regular files, bounded (`bitnet_xtask.inputs`). Every failure
is a `BackendError` naming the engine and showing the last lines it printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from bitnet_xtask.errors import UsageError, XtaskError


class BackendError(XtaskError):
    """A backend failed to evaluate (exit 1); the message names it and what it said."""


OUTPUT_TAIL_BYTES = 4096
"""How much of an engine's stderr (or stdout) a failure message shows."""


def tail(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - OUTPUT_TAIL_BYTES))
        text = handle.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-10:])


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the engine and everything it started (its own session and process group):
    killing only the direct child would leave a shell's children running."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_engine(argv: list[str], what: str, timeout: float, logs: Path) -> None:
    """Run an engine to completion within `timeout` seconds, or kill its process group.

    Its stdout and stderr go to files in `logs` (an engine that prints without end fills
    a file, not this process's memory); a failure shows the last lines.
    """
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / "stdout.txt", logs / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        except FileNotFoundError:
            raise BackendError(f"{what}: {argv[0]} not found") from None
        except OSError as exc:
            raise BackendError(f"{what}: cannot start {argv[0]}: {exc.strerror}") from None
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            raise BackendError(
                f"{what}: no answer within {timeout:g} s (--backend-timeout); "
                "the engine and its children were killed"
            ) from None
        except BaseException:  # Ctrl-C, SIGTERM: the engine must not outlive us
            kill_group(process)
            raise
    if returncode != 0:
        last = tail(stderr) or tail(stdout)
        raise BackendError(f"{what} failed (exit {returncode}):\n{last}")


def read_engine_json(path: Path, what: str) -> Any:
    """A JSON file an engine wrote: regular, bounded and well-formed, or a BackendError."""
    from bitnet_xtask.inputs import read_json

    try:
        return read_json(path, what=f"{what}: its output")
    except UsageError as exc:
        raise BackendError(exc.message) from None


def read_ids(path: Path, what: str) -> list[int]:
    loaded = read_engine_json(path, what)
    ids = loaded.get("tokens") if isinstance(loaded, dict) else None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise BackendError(f'{what}: {path} must hold {{"tokens": [int, ...]}}')
    return ids
