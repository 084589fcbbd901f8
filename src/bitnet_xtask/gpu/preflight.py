"""`run_preflight()`: the Python API behind `xtask preflight`, for fetch-cpp and crossval.

One call gives the runtime report, the ELF facts of the given (or built) binaries,
and the findings about whether they fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_xtask.cache import built_binaries
from bitnet_xtask.errors import UsageError
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


def is_elf(path: Path) -> bool:
    """Starts with the ELF magic (cheap filter before pyelftools)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == _ELF_MAGIC
    except OSError:
        return False


def expand_binaries(paths: Sequence[Path]) -> list[Path]:
    """Files as given; directories become the ELF files inside them (recursively);
    nothing given means the fetch-cpp builds' `bin/`."""
    if not paths:
        return [p for p in built_binaries() if is_elf(p)]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_elf(p))
        else:
            files.append(path)
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
