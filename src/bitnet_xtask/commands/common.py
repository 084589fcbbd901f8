"""What every command adapter shares: its reporter, its error event, and `Seconds`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from bitnet_xtask.errors import XtaskError
from bitnet_xtask.events import ConsoleReporter, Reporter


def command_name(ctx: click.Context) -> str:
    """The command as the user typed it below `xtask`: `crossval verify-receipt`."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.command.name or ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def make_reporter(
    ctx: click.Context, json_lines: bool, *, progress: bool | None = False, verbose: bool = False
) -> ConsoleReporter:
    """The one way a command makes its reporter: `--json` from the command, `-v/--verbose`
    from the group (or the command's own flag), and the command's name stamped on its
    events, so `done` says whose it is."""
    group = ctx.find_root().obj
    loud = verbose or bool(isinstance(group, dict) and group.get("verbose"))
    return ConsoleReporter(
        json_lines=json_lines, progress=progress, verbose=loud, command=command_name(ctx)
    )


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Emit an `error` event for expected failures before `main` prints them."""
    try:
        yield
    except XtaskError as exc:
        reporter.emit(
            {"phase": "error", "code": int(exc.exit_code), "msg": exc.message, "hint": exc.hint}
        )
        raise


if TYPE_CHECKING:  # click >= 8.4 makes ParamType generic; 8.1-8.3 (nixpkgs 25.11) do not
    _FloatParam = click.ParamType[float]
else:
    _FloatParam = click.ParamType


class Seconds(_FloatParam):
    """A duration in seconds: a finite number in a range. click's FloatRange lets `nan`
    through every comparison and `inf` or `1e308` past any upper bound, which then fail
    deep inside (sleep, socket timeouts) with a traceback; every duration option uses
    this type instead, so one rule holds for all of them."""

    name = "seconds"

    def __init__(self, minimum: float = 0.0, *, allow_zero: bool = True, maximum: float = 1e7):
        self.minimum, self.allow_zero, self.maximum = minimum, allow_zero, maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        too_small = number < self.minimum or (number == 0 and not self.allow_zero)
        if too_small or number > self.maximum:
            self.fail(f"{value!r} is not in {self._range()}", param, ctx)
        return number

    def _range(self) -> str:
        low = "0 < x" if self.minimum == 0 and not self.allow_zero else f"{self.minimum:g} <= x"
        return f"the range {low} <= {self.maximum:g} seconds"
