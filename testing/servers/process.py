"""Plumbing shared by the test servers: start/stop as a context manager, and real programs run as
child processes on a free 127.0.0.1 port.

:class:`ServerContext` is the ``with server:`` protocol (all three servers use it);
:class:`ProcessServer` adds what nginx.py and tinyproxy.py have in common: picking a free port and
retrying when another process wins the race for it, waiting until the program serves, ``port`` /
``url``, and stopping the process group.  Only the standard library is used, because
``hf_server.py`` imports this module also when it runs as a script.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, TypeVar

__all__ = [
    "ProcessServer",
    "ServerContext",
    "free_port",
    "port_answers",
    "spawn",
    "tail",
    "terminate",
    "wait_for_port",
]

_S = TypeVar("_S", bound="ServerContext")


def free_port() -> int:
    """Ask the kernel for a free port; racy by nature, hence the retries in ``ProcessServer``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(port: int) -> bool:
    """True if something accepts a TCP connection on 127.0.0.1:``port`` within 0.5 s."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(
    proc: subprocess.Popen[bytes], port: int, ours: Callable[[], bool], timeout: float
) -> bool:
    """Poll until ``ours()`` holds and ``port`` answers; False once ``proc`` exits or at timeout.

    ``ours`` is the server's proof that the listener is ``proc`` (a pid file, a log line): a
    connect alone could reach some other process that grabbed the port after ``free_port``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ours() and port_answers(port):
            return True
        time.sleep(0.02)
    return False


def spawn(argv: Sequence[str], output_path: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start ``argv`` in its own process group with stdout and stderr going to ``output_path``.

    Returns the process and the open output file, which the caller closes once it is done.
    """
    output = output_path.open("wb")
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        start_new_session=True,  # own process group: terminate() can reap stray children
    )
    return proc, output


def terminate(
    proc: subprocess.Popen[bytes],
    signals: Sequence[tuple[signal.Signals, float]] = ((signal.SIGTERM, 5.0),),
) -> None:
    """Send each signal in turn, waiting its grace period in seconds for ``proc`` to exit, then
    SIGKILL the whole process group; returns at once if ``proc`` has already exited."""
    for sig, grace in signals:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        return
    # The process is still unreaped here, so its pid (= pgid) cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def tail(path: Path, limit: int = 4000) -> str:
    """The last ``limit`` characters of a log file, or "" if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


class ServerContext(ABC):
    """``with server:`` calls :meth:`start` and, however the block ends, :meth:`stop`."""

    @abstractmethod
    def start(self: _S) -> _S:
        """Start serving; returns ``self``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving; safe to call twice."""

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ProcessServer(ServerContext):
    """A real server program run as a child process on a free 127.0.0.1 port.

    A subclass's ``start`` checks its prerequisites and calls :meth:`_start_on_free_port`, which
    tries ports with the subclass's :meth:`_spawn`, :meth:`_ready` and :meth:`_failure_output`.
    """

    #: How many ports start-up tries; it moves on only after output containing ``_BIND_FAILURE``.
    _START_ATTEMPTS: ClassVar[int] = 3
    #: What the program writes when it could not bind (a lost port race, so worth another try).
    _BIND_FAILURE: ClassVar[str]
    #: The signals :func:`terminate` sends in turn, each with its grace period in seconds.
    _STOP_SIGNALS: ClassVar[tuple[tuple[signal.Signals, float], ...]] = ((signal.SIGTERM, 5.0),)

    # Set while running (a dataclass subclass may redeclare them as fields): the process, its
    # port and the open file that takes its stdout and stderr.
    _proc: subprocess.Popen[bytes] | None = None
    _port: int | None = None
    _output: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The listening port; only known once started."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @abstractmethod
    def _spawn(self, binary: str, port: int) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        """Write the config for ``port``, clear a previous try's files, then :func:`spawn`."""

    @abstractmethod
    def _ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        """Wait until ``proc`` serves ``port`` (:func:`wait_for_port`); False if it never does."""

    @abstractmethod
    def _failure_output(self) -> str:
        """The tails of the output and log files, for the error when start-up fails."""

    def _start_on_free_port(self, binary: str, error: str) -> None:
        """Run ``binary`` on a free port until it serves, or raise ``RuntimeError(error + tails)``.

        Only a bind failure is retried, on another port: any other failure is a configuration or
        permission problem that another try would not fix.
        """
        failure = ""
        for _attempt in range(self._START_ATTEMPTS):
            port = free_port()
            proc, output = self._spawn(binary, port)
            if self._ready(proc, port):
                self._proc, self._port, self._output = proc, port, output
                return
            terminate(proc, self._STOP_SIGNALS)
            output.close()
            failure = self._failure_output()
            if self._BIND_FAILURE not in failure:
                break
        raise RuntimeError(error + failure)

    def stop(self) -> None:
        """Stop the process if running; safe to call twice.  Config and logs stay for inspection."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, self._STOP_SIGNALS)
        if self._output is not None:
            self._output.close()
            self._output = None
