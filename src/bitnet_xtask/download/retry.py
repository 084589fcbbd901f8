"""When to try again, and how long to wait first.

429 and 5xx answers, dropped connections and stalls are transient; everything else is
final. A server's `Retry-After` wins over our own backoff (capped, so a hostile or
confused server cannot park us for a day); without one we back off exponentially with
full jitter, so many CI jobs hitting one mirror do not retry in lockstep.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TypeVar

from bitnet_xtask.errors import NetworkError, RateLimitedError, XtaskError

T = TypeVar("T")
_DELTA_SECONDS = re.compile(r"^[0-9]{1,12}$")


class TransientError(Exception):
    """One attempt failed in a way that may succeed on a later attempt."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, rate_limited: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.match(value):  # not str.isdigit(): "²" is a digit to it, not to float()
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass
class Backoff:
    """How many retries, and the wait before each."""

    retries: int = 3
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before retry number `attempt` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.rng.uniform(0, min(self.cap, self.base * (2**attempt)))


class StopRequested(Exception):
    """The wait before a retry was cut short because the download is being stopped."""


def give_up(exc: TransientError, retries: int) -> XtaskError:
    """The documented error once the retries are spent: exit 12 for 429, else 14."""
    if exc.rate_limited:
        return RateLimitedError(
            f"still rate limited after {retries} retries: {exc}",
            "wait a while, set HF_TOKEN (higher limits) or raise --retries",
        )
    return NetworkError(
        f"giving up after {retries} retries: {exc}",
        "check the connection and run the same command again: partial downloads resume",
    )


def retrying(
    attempt: Callable[[], T],
    backoff: Backoff,
    on_retry: Callable[[TransientError, float, int], None],
    *,
    progress: Callable[[], int] = lambda: 0,
    wait: Callable[[float], bool] | None = None,
) -> T:
    """Call `attempt` until it returns, retrying `TransientError`s with backoff.

    The budget counts failures in a row: an attempt that moved `progress` forward
    resets it, so a 100 GB download survives many isolated drops. `wait` sleeps and
    returns True when the whole operation is being stopped (raises `StopRequested`).
    """
    failures = 0
    while True:
        before = progress()
        try:
            return attempt()
        except TransientError as exc:
            failures = 1 if progress() > before else failures + 1
            if failures > backoff.retries:
                raise give_up(exc, backoff.retries) from None
            delay = backoff.delay(failures - 1, exc.retry_after)
            on_retry(exc, delay, failures)
            if wait is not None:
                if wait(delay):
                    raise StopRequested() from None
            else:
                backoff.sleep(delay)
