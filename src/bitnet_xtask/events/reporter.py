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
from dataclasses import dataclass
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
        self._downloads = _DownloadBar(self._stderr)

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
        if (bar := self._downloads.bar) is not None:
            bar.write(message, file=self._stderr)
        else:
            self._write(self._stderr, message)

    def _human(self, event: dict[str, Any]) -> None:
        phase = event.get("phase")
        if phase == "done" and event.get("command") == "download-model":
            self._downloads.land(str(event.get("path")))
        elif phase in ("done", "error"):
            self._downloads.close()
        entry = renderer(event)
        text = entry.text(event)
        if text is not None and entry.stdout:
            self._write(self._stdout, text)
        elif text is not None:
            self._line(text)
        if phase == "start" and self._progress:
            self._downloads.start(event)
        elif phase == "progress":
            self._downloads.progress(event)


@dataclass
class _Flight:
    """One download the bar counts: its name, bytes so far and size (None: unknown)."""

    name: str
    downloaded: int
    total: int | None


class _DownloadBar:
    """The one progress bar of every download in flight (files downloading at once would
    otherwise draw bars over each other), keyed by the file's final path.

    One file in flight: its own bar, named after it, exactly as a single download always
    had (a restart from byte 0 opens a new one). More: one bar for all, "N files", over
    the sum of their sizes (unknown if one is). A file's `done` takes it out of flight
    but keeps its bytes counted, so the bar never runs backwards; the bar closes when no
    file is left in flight, or at an `error`.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.bar: tqdm[Any] | None = None
        self._flights: dict[str, _Flight] = {}
        self._landed = 0  # bytes of the files that finished while the bar stayed open

    def start(self, event: Mapping[str, Any]) -> None:
        """A download starts (or starts again from byte 0, or resumes)."""
        path = str(event["path"])
        flight = _Flight(str(event["file"]), int(event["start"]), event["total"])
        if self._flights.keys() <= {path}:  # no other file in flight: a bar of its own
            self.close()
            self._open(flight)
        self._flights[path] = flight
        self._show()

    def progress(self, event: Mapping[str, Any]) -> None:
        """A download's bytes so far."""
        flight = self._flights.get(str(event["path"]))
        if self.bar is None or flight is None:
            return
        flight.downloaded, flight.total = int(event["downloaded"]), event["total"]
        self._show()

    def land(self, path: str) -> None:
        """A download is done; the bar closes once none is left in flight."""
        flight = self._flights.pop(path, None)
        if flight is None:
            return
        if not self._flights:
            self.close()
            return
        self._landed += flight.downloaded if flight.total is None else flight.total
        self._show()

    def close(self) -> None:
        """Close the bar and forget every download in it."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._flights.clear()
        self._landed = 0

    def _open(self, flight: _Flight) -> None:
        from tqdm import tqdm  # only when a person watches a terminal

        self.bar = tqdm(
            total=flight.total,
            initial=flight.downloaded,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=flight.name,
            file=self._stream,
            dynamic_ncols=True,
        )

    def _show(self) -> None:
        bar, flights = self.bar, list(self._flights.values())
        if bar is None:
            return
        totals = [flight.total for flight in flights]
        total = None if None in totals else self._landed + sum(t or 0 for t in totals)
        desc = flights[0].name if len(flights) == 1 else f"{len(flights)} files"
        if (total, desc) != (bar.total, bar.desc):
            bar.total = total
            bar.set_description_str(desc, refresh=False)
        # Forward only: a file that restarts from byte 0 while others are in flight lowers
        # the sum, and the bar waits for it to catch up rather than running backwards.
        if (moved := self._landed + sum(flight.downloaded for flight in flights) - bar.n) > 0:
            bar.update(moved)
