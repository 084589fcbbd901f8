"""One reporter for every command: human text or JSON lines.

Core code never prints. It hands typed events (`events.types`) to a `Reporter`; the CLI
picks how they look. With `--json`, each event is one JSON object per line on stdout
(README "JSON events", `events.schema.json`); human text and the progress bar go to
stderr, so stdout stays machine-readable either way.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from bitnet_xtask.events.render import renderer
from bitnet_xtask.events.schema import validation_requested
from bitnet_xtask.events.types import Event
from bitnet_xtask.redact import redact_text

if TYPE_CHECKING:
    from tqdm import tqdm


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


def json_ready(value: Any) -> Any:
    """A value as it is written: credentials masked in every string (`redact_text`), and
    NaN or infinity as null (as in receipts), which JSON cannot spell."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


class ConsoleReporter:
    """JSON lines on stdout, or the renderer table's text and a progress bar on stderr.

    `command` is stamped on every event that does not name its own (`events.types`).
    `validate` (default: `XTASK_VALIDATE_EVENTS=1`) checks each event against
    `events.schema.json` before it is written and raises `EventSchemaError` on a
    mismatch. Thread-safe: parallel download streams report through one instance.
    """

    def __init__(
        self,
        *,
        json_lines: bool = False,
        progress: bool | None = None,
        verbose: bool = False,
        command: str | None = None,
        validate: bool | None = None,
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
        self._command = command
        self._validate = validation_requested() if validate is None else validate
        self._lock = threading.Lock()
        self._bar: tqdm[Any] | None = None

    def emit(self, event: Event) -> None:
        """Write the event in the chosen form (checked first when asked)."""
        stamped: dict[str, Any] = dict(event)
        if self._command is not None and "command" not in stamped:
            stamped = {"phase": stamped.get("phase"), "command": self._command, **stamped}
        written = json_ready(stamped)
        if self._validate:
            from bitnet_xtask.events.schema import check_event

            check_event(written)
        with self._lock:
            if self._json:
                self._write(self._stdout, json.dumps(written, separators=(",", ":")))
                return
            if self._verbose and written.get("phase") != "progress":
                self._line(f"debug: event {json.dumps(written, separators=(',', ':'))}")
            self._human(written)

    def report(self, document: Mapping[str, Any], text: str) -> None:
        """A command whose product is one report (preflight, gpu-preflight): the JSON
        document, indented, or its text, on stdout."""
        written = json_ready(document)
        if self._validate:
            from bitnet_xtask.events.schema import check_report

            check_report(self._command or "", written)
        with self._lock:
            self._write(self._stdout, json.dumps(written, indent=2) if self._json else text)

    def info(self, message: str) -> None:
        """Print a line for a person (never on stdout in JSON mode)."""
        with self._lock:
            self._line(message)

    def debug(self, message: str) -> None:
        """Print a line only with --verbose."""
        if self._verbose:
            with self._lock:
                self._line(f"debug: {message}")

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    def _line(self, message: str) -> None:
        message = redact_text(message)
        if self._bar is not None:
            self._bar.write(message, file=self._stderr)
        else:
            self._write(self._stderr, message)

    def _human(self, event: dict[str, Any]) -> None:
        phase = event.get("phase")
        if phase in ("done", "error"):
            self._close_bar()
        entry = renderer(event)
        text = entry.text(event)
        if text is not None and entry.stdout:
            self._write(self._stdout, text)
        elif text is not None:
            self._line(text)
        if phase == "start" and self._progress:
            self._open_bar(event)
        elif phase == "progress" and self._bar is not None:
            self._bar.update(event["downloaded"] - self._bar.n)

    def _open_bar(self, event: dict[str, Any]) -> None:
        from tqdm import tqdm  # only when a person watches a terminal

        self._close_bar()
        self._bar = tqdm(
            total=event.get("total"),
            initial=event.get("start", 0),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=str(event.get("file", "")),
            file=self._stderr,
            dynamic_ncols=True,
        )

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
