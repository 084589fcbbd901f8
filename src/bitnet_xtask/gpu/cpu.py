"""The CPU: model, cores, and the SIMD features ggml's CPU kernels are chosen by."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from bitnet_xtask.gpu.model import CpuInfo
from bitnet_xtask.gpu.probe import run_tool

# /proc/cpuinfo flag -> the name we report (x86 "flags", Arm "Features").
X86_FEATURES = {
    "pni": "sse3",
    "ssse3": "ssse3",
    "avx": "avx",
    "f16c": "f16c",
    "fma": "fma",
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8",
}
ARM_FEATURES = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "asimdhp": "fp16",
    "i8mm": "i8mm",
    "sve": "sve",
    "sve2": "sve2",
}
# sysctl hw.optional.* on Apple silicon.
APPLE_FEATURES = {
    "hw.optional.neon": "neon",
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
}


def parse_cpuinfo(text: str, arch: str | None = None) -> CpuInfo:
    """Linux `/proc/cpuinfo`, x86 or Arm."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    table = X86_FEATURES if "flags" in fields else ARM_FEATURES
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware")
    if model is None and "CPU part" in fields:
        model = f"Arm CPU part {fields['CPU part']} (implementer {fields.get('CPU implementer')})"
    processors = len(re.findall(r"^processor\s*:", text, re.MULTILINE))
    return CpuInfo(
        model=model,
        arch=arch or ("x86_64" if "flags" in fields else "aarch64"),
        cores=processors or os.cpu_count() or 1,
        features=tuple(name for flag, name in table.items() if flag in flags),
    )


def parse_sysctl(text: str) -> CpuInfo:
    """macOS `sysctl machdep.cpu.brand_string hw.ncpu hw.optional` output."""
    values = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines())
    )
    return CpuInfo(
        model=values.get("machdep.cpu.brand_string"),
        arch="arm64" if "hw.optional.arm64" in values or "hw.optional.neon" in values else "x86_64",
        cores=int(values.get("hw.ncpu", "0") or 0) or os.cpu_count() or 1,
        features=tuple(name for key, name in APPLE_FEATURES.items() if values.get(key) == "1"),
    )


def probe_cpu(timeout: float, cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU, from /proc/cpuinfo (Linux) or sysctl (macOS)."""
    if platform.system() == "Darwin":
        result = run_tool(["sysctl", "machdep.cpu.brand_string", "hw.ncpu", "hw.optional"], timeout)
        if result.stdout:
            return parse_sysctl(result.stdout)
    try:
        return parse_cpuinfo(cpuinfo.read_text(encoding="utf-8"), platform.machine())
    except OSError:
        return CpuInfo(
            model=platform.processor() or None, arch=platform.machine(), cores=os.cpu_count() or 1
        )
