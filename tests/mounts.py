"""Real file-system conditions for tests: a size-limited tmpfs (a genuinely full disk)
and a read-only one (root ignores permission bits, so a mode-0555 directory would prove
nothing). Both need root and mount(8); without them the test is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


class Mounts:
    """The tmpfs mounts one test made; `unmount_all` runs after it (conftest `mounts`)."""

    def __init__(self) -> None:
        self._mounted: list[Path] = []

    def tmpfs(
        self,
        path: Path,
        size: str = "1m",
        *,
        fill: Callable[[Path], None] | None = None,
        read_only: bool = False,
    ) -> Path:
        """A tmpfs of `size` at `path`, filled by `fill(path)`, then made read-only if asked."""
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs (a full or read-only disk) needs root")
        if shutil.which("mount") is None:
            pytest.skip("no mount(8) on this machine")
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs at {path}: {done.stderr.strip()}")
        self._mounted.append(path)
        if fill is not None:
            fill(path)
        if read_only:
            self.remount(path, read_only=True)
        return path

    @staticmethod
    def remount(path: Path, *, read_only: bool) -> None:
        """Make a tmpfs this test mounted read-only or writable again."""
        subprocess.run(
            ["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(path)], check=True
        )

    def unmount_all(self) -> None:
        for path in reversed(self._mounted):
            if subprocess.run(["umount", str(path)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=False)
        self._mounted.clear()


def fill_up(directory: Path) -> None:
    """Write zeros into `directory` until the disk says ENOSPC."""
    with (directory / "filler").open("wb") as handle, pytest.raises(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
