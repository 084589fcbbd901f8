"""`FileLock`: one writer at a time across processes, safe against crashes.

download-model locks each file (`<file>.lock`), fetch-cpp each build directory
(`.lock`), and clean-cache takes both kinds before it removes a folder. The words of a
refusal come from the caller (`busy`): only it knows what the lock protects.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bitnet_xtask.errors import LockedError, XtaskError
from bitnet_xtask.fs import Note, note_oversized, open_regular, read_bounded, read_small_text
from bitnet_xtask.untrusted import printable

#: The kernel's PID_MAX_LIMIT, 2^22 (<linux/threads.h>).
PID_MAX = 1 << 22
#: A lock file holds one JSON line: pid, host, time.
LOCK_LIMIT = 4 << 10


def _pid(value: object) -> int:
    """A process id read from a lock file, which anyone could have written: `1e300` made
    `os.kill` raise OverflowError and `Infinity` made `int` raise it (tracebacks); `0` and
    `-1` name process groups, not a holder. ValueError for anything but 1 to PID_MAX."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= PID_MAX:
        raise ValueError(f"not a process id: {value!r:.40}")
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open at `fd` (a holder may have unlinked it
    between our open and flock, or clean-cache removed its folder)."""
    try:
        mine, now = os.fstat(fd), path.lstat()
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


class FileLock:
    """`<name>.lock`: one writer at a time, safe against crashes.

    The exclusion is an flock on the lock file, which the kernel drops when its holder
    dies, so a lock left by a killed process is simply taken over. The holder's pid,
    host and start time are written inside, for the messages of whoever waits; what is
    inside is only ever shown through `printable` (whoever wrote it chose it), and a
    lock file larger than `LOCK_LIMIT` is not read: its holder is "another process",
    and if its flock is free it is taken over like any other (`on_note` says so).

    `busy(owner)` makes the error raised when the wait runs out: the caller knows what
    the lock protects and what the user can do (`--lock-timeout` for a download, wait
    for the build for fetch-cpp); without one it is `held_error`, in neutral words.
    """

    def __init__(
        self,
        path: Path,
        timeout: float,
        *,
        busy: Callable[[str], XtaskError] | None = None,
        on_wait: Note | None = None,
        poll: float = 0.2,
        on_note: Note | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._busy = busy or self.held_error
        self._on_wait = on_wait
        self._on_note = on_note
        self._poll = poll
        self._fd: int | None = None
        self.took_over: str | None = None

    def held_error(self, owner: str) -> XtaskError:
        """A live process holds this lock: what to say when we will not wait (longer)."""
        return LockedError(
            f"{self.path} is held by {owner}",
            "wait for that process to finish (or stop it), then run again",
        )

    def owner(self) -> str:
        """Who the lock file says holds it, in printable words."""
        text = read_small_text(self.path, LOCK_LIMIT)
        try:
            info = json.loads(text or "{}")
            return printable(f"pid {info['pid']} on {info['host']} (since {info['since']})")
        except (ValueError, KeyError, TypeError, RecursionError):
            return "another process"

    def _open(self, *, write: bool, create: bool) -> int:
        try:
            return open_regular(self.path, write=write, create=create)
        except FileNotFoundError:  # the folder went (clean-cache) while we waited
            if not create:
                raise
            raise XtaskError(
                f"cannot lock {self.path}: its folder {self.path.parent} no longer exists "
                "(removed while this waited, by xtask clean-cache?)",
                "run the command again",
            ) from None

    def acquire(self) -> None:
        """Take the lock, waiting up to `timeout` seconds for a live holder."""
        deadline = time.monotonic() + self.timeout
        announced = False
        while True:
            fd = self._open(write=True, create=True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = self.owner()
                if time.monotonic() >= deadline:
                    raise self._busy(owner) from None
                if not announced and self._on_wait is not None:
                    self._on_wait(f"waiting for {owner} to finish with {self.path}")
                    announced = True
                time.sleep(self._poll)
                continue
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            self._claim(fd)
            return

    def _claim(self, fd: int) -> None:
        """Record who took over from whom, and write our own name inside."""
        content = read_bounded(fd, LOCK_LIMIT)
        if content is None:
            note_oversized(self.path, LOCK_LIMIT, self._on_note)
        previous = (content or b"").decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
            pid = _pid(json.loads(previous)["pid"])
            self.took_over = f"pid {pid}" + ("" if _pid_alive(pid) else " (no longer running)")
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self, *, unlink: bool = True) -> None:
        """Unlink while still holding the flock, then drop it. Only this lock's own file is
        unlinked: after clean-cache removed it with its folder, the name may be another
        process's new lock. `unlink=False` leaves the file (a `try_take` of one we did not
        make)."""
        if self._fd is None:
            return
        if unlink and _same_file(self._fd, self.path):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str | None:
        """Who holds this lock now, or None when no live process does (or there is no lock
        file). It takes nothing and writes nothing, so a dry run may ask: a shared flock,
        tried and dropped at once, conflicts only with a holder's exclusive one."""
        try:
            fd = open_regular(self.path)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.owner()
        finally:
            os.close(fd)  # drops the shared flock
        return None

    def try_take(self, *, create: bool = False) -> bool:
        """Take the lock now or not at all, and without writing the file: clean-cache holds
        every lock in a folder while it removes the folder, and must leave a lock file it
        ends up not removing as it was. True when taken (until `release`); False when there
        is no lock file (or, with `create`, no folder); LockedError naming a live holder."""
        while True:
            try:
                fd = open_regular(self.path, create=create)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self.held_error(self.owner()) from None
            if _same_file(fd, self.path):
                self._fd = fd
                return True
            os.close(fd)

    @contextlib.contextmanager
    def held(self) -> Iterator[FileLock]:
        """`with lock.held():` acquire and always release."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()
