"""WebGPU: whether wgpu would find a native API to run on.

wgpu runs on Vulkan (Linux, Windows), Metal (macOS) or DX12 (Windows). On Linux that
means a loadable Vulkan loader plus at least one installable client driver (ICD)
manifest; a software ICD (lavapipe, SwiftShader) runs, but on the CPU, so it does not
count as a GPU.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
from pathlib import Path

from bitnet_xtask.gpu.model import BackendStatus

ICD_DIRS = (
    "/usr/share/vulkan/icd.d",
    "/usr/local/share/vulkan/icd.d",
    "/etc/vulkan/icd.d",
)
SOFTWARE_ICDS = ("lvp", "swiftshader", "llvmpipe")


def icd_manifests(env: dict[str, str] | None = None) -> list[Path]:
    """ICD manifests the Vulkan loader would read (VK_DRIVER_FILES / VK_ICD_FILENAMES win)."""
    env = dict(os.environ) if env is None else env
    explicit = env.get("VK_DRIVER_FILES") or env.get("VK_ICD_FILENAMES")
    if explicit:
        return [Path(p) for p in explicit.split(os.pathsep) if Path(p).is_file()]
    manifests = []
    for directory in ICD_DIRS:
        path = Path(directory)
        if path.is_dir():
            manifests += sorted(path.glob("*.json"))
    return manifests


def _driver_library(manifest: Path) -> str:
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8"))["ICD"]["library_path"])
    except (OSError, ValueError, KeyError, TypeError):
        return manifest.name


def probe_wgpu(system: str | None = None, env: dict[str, str] | None = None) -> BackendStatus:
    """Report the native path wgpu would use, if any."""
    system = system or platform.system()
    if system == "Darwin":
        return BackendStatus(available=True, source="metal", detail="wgpu runs on Metal")
    if system == "Windows":
        return BackendStatus(available=True, source="dx12", detail="wgpu runs on DX12")
    try:
        ctypes.CDLL("libvulkan.so.1")
    except OSError:
        return BackendStatus(available=False, detail="no Vulkan loader (libvulkan.so.1)")
    drivers = [_driver_library(m) for m in icd_manifests(env)]
    hardware = [d for d in drivers if not any(s in d.lower() for s in SOFTWARE_ICDS)]
    if not drivers:
        return BackendStatus(available=False, source="vulkan", detail="no Vulkan ICD installed")
    if not hardware:
        return BackendStatus(
            available=False,
            source="vulkan",
            detail=f"only software Vulkan drivers ({', '.join(drivers)}): CPU, not GPU",
        )
    return BackendStatus(available=True, source="vulkan", detail=", ".join(hardware))
