"""Whether the binaries that were built can use what this machine has.

The useful answers are the ones that otherwise arrive as a crash at the first kernel
launch: a CUDA build without kernels (or PTX) for the GPU's compute capability, a GPU
build on a machine without that runtime, a binary for another CPU architecture.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from bitnet_xtask.gpu.detect import RuntimeReport
from bitnet_xtask.gpu.elf import BinaryFacts

# ggml backend -> the runtime backend it needs.
_RUNTIME_OF = {"cuda": "cuda", "hip": "rocm", "metal": "metal", "vulkan": "wgpu"}
_MACHINES = {"x64": ("x86_64", "amd64"), "AArch64": ("aarch64", "arm64"), "ARM": ("armv7l",)}


@dataclass(frozen=True)
class Finding:
    """One statement about the fit; `ok` False means that binary can't do its job here."""

    ok: bool
    message: str


def assess(binaries: list[BinaryFacts], runtime: RuntimeReport) -> list[Finding]:
    """Each binary against the runtime report."""
    findings = []
    host = platform.machine().lower()
    for binary in binaries:
        name = binary.path.name
        if binary.machine in _MACHINES and host not in _MACHINES[binary.machine]:
            findings.append(
                Finding(False, f"{name}: built for {binary.machine}, this machine is {host}")
            )
            continue
        for backend in binary.backends:
            runtime_name = _RUNTIME_OF.get(backend)
            if runtime_name and not runtime.backend(runtime_name).available:
                findings.append(
                    Finding(
                        False,
                        f"{name}: built with {backend}, but no {runtime_name} runtime here"
                        " (it will fall back to the CPU or fail to start)",
                    )
                )
        if binary.cuda is not None and runtime.cuda.available:
            for device in runtime.cuda.devices:
                if device.compute_capability is None:
                    continue
                major, minor = device.compute_capability.split(".")
                sm = int(major) * 10 + int(minor)
                ok, how = binary.cuda.runs_on(sm)
                findings.append(
                    Finding(
                        ok,
                        f"{name} on GPU {device.index} ({device.name}, compute capability "
                        f"{device.compute_capability}): {how}",
                    )
                )
    return findings
