"""What this machine can run: every runtime probe, concurrently, within a deadline.

Probes run in daemon threads: a subprocess probe kills its tool at its own deadline,
and an in-process one (NVML) that hangs in a wedged driver is simply abandoned, so
the report is always ready in bounded time. `BITNET_GPU_FAKE` replaces the GPU probes
for tests and CI (the CPU is still probed for real), and the report says it is fake.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bitnet_xtask.errors import UsageError
from bitnet_xtask.gpu.apple import probe_metal
from bitnet_xtask.gpu.cpu import probe_cpu
from bitnet_xtask.gpu.model import BackendStatus, CpuInfo, GpuDevice
from bitnet_xtask.gpu.nvidia import probe_cuda
from bitnet_xtask.gpu.rocm import probe_rocm
from bitnet_xtask.gpu.webgpu import probe_wgpu

FAKE_ENV = "BITNET_GPU_FAKE"
GPU_BACKENDS = ("cuda", "rocm", "metal", "wgpu")
DEFAULT_PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class RuntimeReport:
    """The runtime side of preflight."""

    cuda: BackendStatus
    rocm: BackendStatus
    metal: BackendStatus
    wgpu: BackendStatus
    cpu: CpuInfo
    fake: bool = False
    seconds: float = 0.0

    def backend(self, name: str) -> BackendStatus:
        """A GPU backend's status by name."""
        status: BackendStatus = getattr(self, name)
        return status

    @property
    def any_available(self) -> bool:
        """At least one GPU backend can run here."""
        return any(self.backend(name).available for name in GPU_BACKENDS)

    def to_dict(self) -> dict[str, Any]:
        """The reference gpu-preflight schema, plus `devices` and `fake` (additive)."""
        return {
            "cuda": self.cuda.available,
            "cuda_version": self.cuda.version,
            "metal": self.metal.available,
            "rocm": self.rocm.available,
            "wgpu": self.wgpu.available,
            "any_available": self.any_available,
            "fake": self.fake,
            "devices": {
                **{name: self.backend(name).to_dict() for name in GPU_BACKENDS},
                "cpu": self.cpu.to_dict(),
            },
        }


def parse_fake(value: str) -> frozenset[str]:
    """`cuda`, `rocm,metal`, `none` or empty; anything else is a usage error."""
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    if names == {"none"} or not names:
        return frozenset()
    unknown = names - set(GPU_BACKENDS)
    if unknown or "none" in names:
        raise UsageError(
            f"{FAKE_ENV}={value!r}: unknown backend {', '.join(sorted(unknown or {'none'}))}",
            f"use a comma list of {', '.join(GPU_BACKENDS)}, or none (or empty) for no GPU",
        )
    return frozenset(names)


def _fake_status(name: str, present: bool) -> BackendStatus:
    if not present:
        return BackendStatus(available=False, source="fake", detail=f"{FAKE_ENV}: no {name}")
    return BackendStatus(
        available=True,
        source="fake",
        devices=(GpuDevice(index=0, name=f"fake {name} device"),),
        detail=f"simulated by {FAKE_ENV}",
    )


def _bounded(
    probes: Mapping[str, Callable[[], BackendStatus]], timeout: float
) -> dict[str, BackendStatus]:
    """Run the probes at once; any not done by the deadline is reported as timed out."""
    results: dict[str, BackendStatus] = {}

    def run(name: str, probe: Callable[[], BackendStatus]) -> None:
        try:
            results[name] = probe()
        except Exception as exc:  # a probe's bug must not sink the whole report
            results[name] = BackendStatus(available=False, detail=f"probe failed: {exc!r}")

    threads = [
        threading.Thread(target=run, args=item, daemon=True, name=f"probe-{item[0]}")
        for item in probes.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {
        name: results.get(name)
        or BackendStatus(available=False, detail=f"probe timed out after {timeout:g}s")
        for name in probes
    }


def detect_runtime(
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT, env: Mapping[str, str] | None = None
) -> RuntimeReport:
    """Probe CUDA, ROCm, Metal, WebGPU and the CPU concurrently, in bounded time."""
    env = os.environ if env is None else env
    started = time.monotonic()
    fake = env.get(FAKE_ENV)
    wanted = parse_fake(fake) if fake is not None else frozenset()
    cpu_box: list[CpuInfo] = []
    probes: dict[str, Callable[[], BackendStatus]] = {}
    if fake is None:
        probes = {
            "cuda": lambda: probe_cuda(probe_timeout),
            "rocm": lambda: probe_rocm(probe_timeout),
            "metal": lambda: probe_metal(probe_timeout),
            "wgpu": probe_wgpu,
        }

    def cpu_probe() -> BackendStatus:
        cpu_box.append(probe_cpu(probe_timeout))
        return BackendStatus(available=True)

    statuses = _bounded({**probes, "cpu": cpu_probe}, probe_timeout + 0.5)
    if fake is not None:
        statuses.update({name: _fake_status(name, name in wanted) for name in GPU_BACKENDS})
    cpu = cpu_box[0] if cpu_box else CpuInfo(model=None, arch="unknown", cores=os.cpu_count() or 1)
    report = RuntimeReport(
        cuda=statuses["cuda"],
        rocm=statuses["rocm"],
        metal=statuses["metal"],
        wgpu=statuses["wgpu"],
        cpu=cpu,
        fake=fake is not None,
    )
    return replace(report, seconds=round(time.monotonic() - started, 3))
