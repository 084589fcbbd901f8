"""Metal: on macOS, the GPU that `system_profiler SPDisplaysDataType -json` reports."""

from __future__ import annotations

import json
import platform

from bitnet_xtask.gpu.model import BackendStatus, GpuDevice
from bitnet_xtask.gpu.probe import run_tool

_FAMILY_KEYS = ("spdisplays_mtlgpufamilysupport", "spdisplays_metalfamily", "spdisplays_metal")


def parse_displays(text: str) -> BackendStatus:
    """Metal support per GPU from system_profiler's JSON."""
    try:
        entries = json.loads(text).get("SPDisplaysDataType", [])
    except (ValueError, AttributeError):
        return BackendStatus(available=False, source="system_profiler", detail="unreadable JSON")
    devices: list[GpuDevice] = []
    families = set()
    for entry in entries:
        # macOS 13+ says "spdisplays_mtlgpufamilysupport": "spdisplays_metal3"; older
        # releases "spdisplays_metalfamily": "spdisplays_mtlgpufamilyapple7".
        family = next(
            (entry[key] for key in _FAMILY_KEYS if entry.get(key)),
            None,
        )
        if not family:
            continue
        families.add(str(family).removeprefix("spdisplays_"))
        cores = entry.get("sppci_cores")
        name = entry.get("sppci_model") or entry.get("_name") or "GPU"
        devices.append(
            GpuDevice(index=len(devices), name=f"{name} ({cores} cores)" if cores else name)
        )
    return BackendStatus(
        available=bool(devices),
        version=", ".join(sorted(families)) or None,
        devices=tuple(devices),
        source="system_profiler",
        detail=None if devices else "no Metal-capable GPU",
    )


def probe_metal(timeout: float, system: str | None = None) -> BackendStatus:
    """Only macOS has Metal."""
    if (system or platform.system()) != "Darwin":
        return BackendStatus(available=False, detail="Metal needs macOS")
    result = run_tool(["system_profiler", "SPDisplaysDataType", "-json"], timeout)
    if result.stdout is None:
        return BackendStatus(available=False, source="system_profiler", detail=result.error)
    return parse_displays(result.stdout)
