"""One exception hierarchy, one exit code per class.

Exit codes are API: scripts and CI branch on them, so each failure a user can act on
has its own class and code, and every message says what happened and what to do next.
`cli.main` turns these into a message on stderr (and an `error` event with --json);
anything that is not an `XtaskError` is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum

from .redact import redact_text


class ExitCode(IntEnum):
    """The documented exit codes (README "Exit codes")."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NO_SPACE = 10
    AUTH = 11
    RATE_LIMITED = 12
    HASH_MISMATCH = 13
    NETWORK = 14
    INTERRUPTED = 130


class XtaskError(Exception):
    """A failure we expected and can explain; `hint` says what to do next."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        # Masked here, once, for every path a message takes (stderr, the JSON error event).
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else redact_text(hint)

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(XtaskError):
    """Bad arguments or environment values (exit 2)."""

    exit_code = ExitCode.USAGE


class LockedError(XtaskError):
    """Another live process holds the lock on the file (exit 1)."""


class NoSpaceError(XtaskError):
    """Not enough free disk, before or during the write (exit 10)."""

    exit_code = ExitCode.NO_SPACE


class AuthError(XtaskError):
    """401/403 from the hub: missing, wrong or insufficient token (exit 11)."""

    exit_code = ExitCode.AUTH


class RateLimitedError(XtaskError):
    """429 until the retries ran out (exit 12)."""

    exit_code = ExitCode.RATE_LIMITED


class HashMismatchError(XtaskError):
    """The bytes on disk are not the bytes that were promised (exit 13)."""

    exit_code = ExitCode.HASH_MISMATCH


class NetworkError(XtaskError):
    """Connection failures, timeouts, 5xx, 404 and protocol violations (exit 14)."""

    exit_code = ExitCode.NETWORK


class NotFoundError(NetworkError):
    """404: the repository, revision or file does not exist (exit 14, as the reference)."""


class Interrupted(XtaskError):
    """Ctrl-C or SIGTERM; partial work was kept for a later resume (exit 130)."""

    exit_code = ExitCode.INTERRUPTED


class CheckFailedError(XtaskError):
    """A check ran and its answer is no: numerical parity, a receipt's verdict (exit 1)."""
