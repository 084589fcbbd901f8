"""`run_preflight()`: the Python API behind `xtask preflight`, for fetch-cpp and crossval.

One call gives the runtime report, the ELF facts of the given (or built) binaries,
and the findings about whether they fit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bitnet_xtask import fs
from bitnet_xtask.cache import built_bin_dirs
from bitnet_xtask.errors import UsageError, XtaskError
from bitnet_xtask.gpu.detect import DEFAULT_PROBE_TIMEOUT, RuntimeReport, detect_runtime
from bitnet_xtask.gpu.elf import BinaryFacts, read_binary
from bitnet_xtask.gpu.fit import Finding, assess

_ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class PreflightReport:
    """Compiled side, runtime side, and the fit between them."""

    runtime: RuntimeReport
    binaries: tuple[BinaryFacts, ...]
    findings: tuple[Finding, ...]

    @property
    def fits(self) -> bool:
        """No binary is known to be unable to do its job here."""
        return all(f.ok for f in self.findings)

    @property
    def compiled_backends(self) -> list[str]:
        """Every ggml backend compiled into any of the binaries."""
        return sorted({b for binary in self.binaries for b in binary.backends})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`xtask preflight --format json`)."""
        return {
            "compiled": {
                "binaries": [b.to_dict() for b in self.binaries],
                "backends": self.compiled_backends,
            },
            "runtime": self.runtime.to_dict(),
            "fit": [{"ok": f.ok, "message": f.message} for f in self.findings],
            "ok": self.fits,
        }


def _head(path: Path) -> bytes:
    """The first four bytes of a regular file (empty for anything else: it may have been
    swapped for a FIFO since the listing, and `fs.open_regular` never blocks on one);
    the OSError if it cannot be opened or read, for the caller's words."""
    try:
        fd = fs.open_regular(path, follow_links=True)
    except fs.NotRegularFileError:
        return b""
    except XtaskError as exc:
        cause = exc.__cause__
        raise cause if isinstance(cause, OSError) else OSError(exc.message) from None
    try:
        return os.read(fd, 4)
    finally:
        os.close(fd)


def _unreadable(path: Path, exc: OSError) -> UsageError:
    return UsageError(
        f"cannot read {path} while scanning for binaries: {exc.strerror}",
        "fix its permissions, or give --binary the readable files or folders instead",
    )


def scan_directory(directory: Path) -> list[Path]:
    """The ELF files under `directory`, recursively, in sorted order.

    Links to files are followed (a build's `libggml.so -> libggml.so.0` is a binary);
    links to folders are not (a `sub -> ..` link would loop). FIFOs, devices and sockets
    are not binaries and are passed over without being opened for reading. An entry that
    cannot be inspected or read, or a folder that cannot be listed, is a usage error
    naming it: preflight never claims a fit for a binary it could not look at.
    """
    found: list[Path] = []
    pending = [directory]
    while pending:
        for entry in _listing(pending.pop()):
            kind = _kind(entry)
            if kind == "folder":
                pending.append(Path(entry.path))
            elif kind == "file" and _is_elf(Path(entry.path)):
                found.append(Path(entry.path))
    return sorted(found)


def _listing(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        raise _unreadable(folder, exc) from None


def _kind(entry: os.DirEntry[str]) -> Literal["folder", "file"] | None:
    """A folder to descend into (never through a link), a regular file (or a link to
    one), or None for anything else: FIFOs, devices, sockets, dangling links, entries gone
    since the listing, and links that loop or lead somewhere unreadable (not ours)."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return "folder"
        info = Path(entry.path).stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if entry.is_symlink():
            return None
        raise _unreadable(Path(entry.path), exc) from None
    return "file" if stat.S_ISREG(info.st_mode) else None


def _is_elf(path: Path) -> bool:
    try:
        return _head(path) == _ELF_MAGIC
    except FileNotFoundError:  # gone since the listing
        return False
    except OSError as exc:
        raise _unreadable(path, exc) from None


def expand_binaries(paths: Sequence[Path]) -> list[Path]:
    """Files as given; directories become the ELF files inside them (recursively);
    nothing given means the fetch-cpp builds' `bin/`."""
    if not paths:
        return [binary for folder in built_bin_dirs() for binary in scan_directory(folder)]
    files: list[Path] = []
    for path in paths:
        try:
            is_dir = path.is_dir()
        except OSError:  # cannot even be inspected: read_binary says so clearly
            is_dir = False
        if is_dir:
            files += scan_directory(path)
        else:
            files.append(path)  # read_binary says clearly what is wrong with it
    if not files:
        raise UsageError("no ELF binaries found in the given --binary paths")
    return files


def run_preflight(
    binaries: Sequence[Path] = (), probe_timeout: float = DEFAULT_PROBE_TIMEOUT
) -> PreflightReport:
    """Probe the runtime, read the binaries, and judge the fit."""
    runtime = detect_runtime(probe_timeout)
    facts = tuple(read_binary(path) for path in expand_binaries(binaries))
    return PreflightReport(runtime, facts, tuple(assess(list(facts), runtime)))
