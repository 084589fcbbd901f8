"""The data preflight reports: plain, JSON-ready dataclasses shared by every probe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as a runtime sees it."""

    index: int
    name: str
    memory_mib: int | None = None
    compute_capability: str | None = None  # CUDA "9.0"; ROCm gfx target ("gfx90a")
    mig: bool = False


@dataclass(frozen=True)
class BackendStatus:
    """One runtime backend: usable or not, and why."""

    available: bool
    version: str | None = None
    driver_version: str | None = None
    devices: tuple[GpuDevice, ...] = ()
    source: str | None = None  # which probe answered: "nvml", "nvidia-smi", ...
    detail: str | None = None  # why it is unavailable, or a caveat

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


UNAVAILABLE = BackendStatus(available=False)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU features that decide which ggml kernels run fast here."""

    model: str | None
    arch: str
    cores: int
    features: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)
