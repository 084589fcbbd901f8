"""One reporter for every long-running command: human text or JSON lines.

Core code never prints. It hands events (plain dicts with a `phase`) to a `Reporter`;
the CLI picks how they look. With `--json`, each event is one JSON object per line on
stdout (the schema is documented in README "JSON events"); human text and the progress
bar go to stderr, so stdout stays machine-readable either way.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .redact import redact_text

if TYPE_CHECKING:
    from tqdm import tqdm

Event = Mapping[str, Any]


class Reporter(Protocol):
    """Where core code sends what it is doing."""

    def emit(self, event: Event) -> None:
        """Record one event (`phase` is start, progress, retry, done, error, ...)."""

    def info(self, message: str) -> None:
        """A line for a person; not part of the JSON schema."""

    def debug(self, message: str) -> None:
        """A line for a person who asked for --verbose."""


class NullReporter:
    """The Python API's default: library calls stay silent."""

    def emit(self, event: Event) -> None:
        """Drop the event."""

    def info(self, message: str) -> None:
        """Drop the message."""

    def debug(self, message: str) -> None:
        """Drop the message."""


def _masked(value: Any) -> Any:
    """An event with credentials masked in every string inside it (`redact_text`)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


def human_bytes(n: float) -> str:
    """`1536` -> `1.5 KiB`: sizes as people read them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ConsoleReporter:
    """JSON lines on stdout, or human text and a progress bar on stderr.

    Thread-safe: parallel download streams report through one instance.
    """

    def __init__(
        self,
        *,
        json_lines: bool = False,
        progress: bool | None = None,
        verbose: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        self._json = json_lines
        # Progress bars only make sense for a person watching a terminal.
        self._progress = (
            self._stderr.isatty() if progress is None else progress
        ) and not json_lines
        self._verbose = verbose
        self._lock = threading.Lock()
        self._bar: tqdm[Any] | None = None

    def emit(self, event: Event) -> None:
        """Write the event in the chosen form, credentials masked."""
        event = _masked(event)
        with self._lock:
            if self._json:
                self._stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
                self._stdout.flush()
            else:
                self._human(event)

    def info(self, message: str) -> None:
        """Print a line for a person (never on stdout in JSON mode)."""
        with self._lock:
            self._line(message)

    def debug(self, message: str) -> None:
        """Print a line only with --verbose."""
        if self._verbose:
            with self._lock:
                self._line(f"debug: {message}")

    def _line(self, message: str) -> None:
        message = redact_text(message)
        if self._bar is not None:
            self._bar.write(message, file=self._stderr)
        else:
            self._stderr.write(message + "\n")
            self._stderr.flush()

    def _human(self, event: Event) -> None:
        phase = event.get("phase")
        name = event.get("file", "")
        if phase == "start":
            where = f" (resuming at {human_bytes(event['start'])})" if event.get("resume") else ""
            self._line(f"downloading {name} from {event.get('url')}{where}")
            if self._progress:
                from tqdm import tqdm  # only when a person watches a terminal

                self._bar = tqdm(
                    total=event.get("total"),
                    initial=event.get("start", 0),
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=str(name),
                    file=self._stderr,
                    dynamic_ncols=True,
                )
        elif phase == "progress":
            if self._bar is not None:
                self._bar.update(event["downloaded"] - self._bar.n)
        elif phase == "retry":
            self._line(f"retrying {name} in {event['wait_secs']:.1f}s: {event.get('msg')}")
        elif phase == "done":
            self._close_bar()
            how = "up to date" if event.get("cached") else "saved"
            digest = f", sha256 {event['sha256']}" if event.get("sha256") else ""
            self._line(f"{how}: {event.get('path')} ({human_bytes(event.get('bytes', 0))}{digest})")
        elif phase == "plan":
            total = event.get("total")
            self._line(
                f"plan for {event.get('path')}:\n"
                f"  url:         {event.get('url')}\n"
                f"  size:        {'unknown' if total is None else human_bytes(total)}\n"
                f"  resume at:   {human_bytes(event.get('start', 0))}\n"
                f"  free space:  {human_bytes(event.get('free_bytes', 0))}\n"
                f"  connections: {event.get('connections')}\n"
                f"  commit:      {event.get('commit') or 'unknown'}\n"
                f"  up to date:  {'yes' if event.get('up_to_date') else 'no'}"
            )
        elif phase == "error":
            self._close_bar()
        # Other phases (fixture, comparison, ...) are for machines: the commands that
        # emit them say the same to a person with info().

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
