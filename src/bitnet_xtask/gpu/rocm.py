"""ROCm: rocm-smi for the GPUs, `/opt/rocm/.info/version` for the stack's version.

The gfx target (`gfx90a`, `gfx1100`) is what a HIP build must have been compiled for,
so it is the ROCm counterpart of CUDA's compute capability.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bitnet_xtask.gpu.model import BackendStatus, GpuDevice
from bitnet_xtask.gpu.probe import run_tool

ROCM_VERSION_FILE = Path("/opt/rocm/.info/version")
_GFX = re.compile(r"\bgfx[0-9a-f]{3,4}\b")


def parse_product_json(text: str) -> list[GpuDevice]:
    """`rocm-smi --showproductname --json`: {"card0": {"Card series": ..., "GFX Version": ...}}."""
    try:
        cards = json.loads(text)
    except ValueError:
        return []
    devices: list[GpuDevice] = []
    for key in sorted(k for k in cards if k.startswith("card")):
        info: dict[str, str] = cards[key]
        name = (
            info.get("Card Series")
            or info.get("Device Name")
            or info.get("Card series")
            or info.get("Card Model")
            or info.get("Card model")
            or key
        )
        gfx = info.get("GFX Version") or next(iter(_GFX.findall(" ".join(info.values()))), None)
        devices.append(GpuDevice(index=len(devices), name=name, compute_capability=gfx))
    return devices


def parse_product_text(text: str) -> list[GpuDevice]:
    """The plain `rocm-smi --showproductname` table, for versions without --json."""
    cards: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"^GPU\[(\d+)\]\s*:\s*([^:]+?)\s*:\s*(.+?)\s*$", text, re.MULTILINE):
        cards.setdefault(f"card{match.group(1)}", {})[match.group(2)] = match.group(3)
    return parse_product_json(json.dumps(cards))


def read_rocm_version(path: Path = ROCM_VERSION_FILE) -> str | None:
    """`6.1.2-119` -> `6.1.2`."""
    try:
        return path.read_text(encoding="utf-8").strip().split("-")[0] or None
    except OSError:
        return None


def probe_rocm(timeout: float) -> BackendStatus:
    """rocm-smi's product names and gfx targets; available when it lists a GPU."""
    result = run_tool(["rocm-smi", "--showproductname", "--json"], timeout)
    if result.error == "not installed":
        return BackendStatus(available=False, detail="no ROCm (rocm-smi not installed)")
    devices = parse_product_json(result.stdout) if result.stdout else []
    if result.stdout is None:
        plain = run_tool(["rocm-smi", "--showproductname"], timeout)
        devices = parse_product_text(plain.stdout or "")
    return BackendStatus(
        available=bool(devices),
        version=read_rocm_version(),
        devices=tuple(devices),
        source="rocm-smi",
        detail=None if devices else (result.error or "rocm-smi lists no GPU"),
    )
