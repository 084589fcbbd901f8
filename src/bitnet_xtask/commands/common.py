"""What every command adapter shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bitnet_xtask.errors import XtaskError
from bitnet_xtask.events import Reporter


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
