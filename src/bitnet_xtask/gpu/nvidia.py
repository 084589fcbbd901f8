"""CUDA: NVML through ctypes when the driver ships it, else nvidia-smi.

NVML (`libnvidia-ml.so.1`, installed with every NVIDIA driver) answers in
milliseconds and needs no process; nvidia-smi is the fallback for containers that
mount the tool but not the library. Both give, per GPU: name, memory, compute
capability; and for the system: driver version and the newest CUDA it supports.
"""

from __future__ import annotations

import ctypes
import re

from bitnet_xtask.gpu.model import BackendStatus, GpuDevice
from bitnet_xtask.gpu.probe import run_tool

NVML_LIBRARY = "libnvidia-ml.so.1"
QUERY_FIELDS = ("name", "driver_version", "memory.total", "compute_cap", "mig.mode.current")
LEGACY_QUERY_FIELDS = ("name", "driver_version", "memory.total")
_CUDA_VERSION = re.compile(r"CUDA Version:\s*([0-9]+\.[0-9]+)")


class _Memory(ctypes.Structure):
    _fields_ = (
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    )


def _check(code: int, call: str) -> None:
    if code != 0:
        raise OSError(f"{call} returned NVML error {code}")


def probe_nvml(library: str = NVML_LIBRARY) -> BackendStatus | None:
    """Ask NVML directly; None when the library is not installed."""
    try:
        nvml = ctypes.CDLL(library)
    except OSError:
        return None
    try:
        _check(nvml.nvmlInit_v2(), "nvmlInit_v2")
    except OSError as exc:
        return BackendStatus(available=False, source="nvml", detail=str(exc))
    try:
        text = ctypes.create_string_buffer(96)
        _check(nvml.nvmlSystemGetDriverVersion(text, 96), "nvmlSystemGetDriverVersion")
        driver = text.value.decode()
        cuda = ctypes.c_int()
        _check(nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cuda)), "CudaDriverVersion")
        count = ctypes.c_uint()
        _check(nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount_v2")
        devices = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            _check(nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)), "GetHandle")
            _check(nvml.nvmlDeviceGetName(handle, text, 96), "nvmlDeviceGetName")
            memory = _Memory()
            _check(nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)), "GetMemoryInfo")
            major, minor = ctypes.c_int(), ctypes.c_int()
            _check(
                nvml.nvmlDeviceGetCudaComputeCapability(
                    handle, ctypes.byref(major), ctypes.byref(minor)
                ),
                "GetCudaComputeCapability",
            )
            current, pending = ctypes.c_uint(), ctypes.c_uint()
            mig = (
                nvml.nvmlDeviceGetMigMode(handle, ctypes.byref(current), ctypes.byref(pending)) == 0
                and current.value == 1
            )
            devices.append(
                GpuDevice(
                    index=index,
                    name=text.value.decode(),
                    memory_mib=memory.total // (1024 * 1024),
                    compute_capability=f"{major.value}.{minor.value}",
                    mig=mig,
                )
            )
    except OSError as exc:
        return BackendStatus(available=False, source="nvml", detail=str(exc))
    finally:
        nvml.nvmlShutdown()
    return BackendStatus(
        available=bool(devices),
        version=f"{cuda.value // 1000}.{cuda.value % 1000 // 10}",
        driver_version=driver,
        devices=tuple(devices),
        source="nvml",
        detail=None if devices else "the NVIDIA driver sees no GPU",
    )


def parse_query(csv_text: str, fields: tuple[str, ...] = QUERY_FIELDS) -> list[GpuDevice]:
    """`nvidia-smi --query-gpu=<fields> --format=csv,noheader` lines into devices."""
    devices: list[GpuDevice] = []
    for line in csv_text.strip().splitlines():
        values = dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
        if "name" not in values:
            continue
        memory = re.match(r"(\d+)", values.get("memory.total", ""))
        capability = values.get("compute_cap", "")
        devices.append(
            GpuDevice(
                index=len(devices),
                name=values["name"],
                memory_mib=int(memory.group(1)) if memory else None,
                compute_capability=capability if re.fullmatch(r"\d+\.\d+", capability) else None,
                mig=values.get("mig.mode.current", "").lower() == "enabled",
            )
        )
    return devices


def probe_nvidia_smi(timeout: float) -> BackendStatus | None:
    """Ask nvidia-smi: the query (fewer fields for drivers older than 510, which lack
    `compute_cap`), and the banner, the one place that states the CUDA version."""
    fields: tuple[str, ...] = QUERY_FIELDS
    query = run_tool(_query_argv(fields), timeout)
    if query.error == "not installed":
        return None
    if query.stdout is None and "field" in (query.error or "").lower():
        fields = LEGACY_QUERY_FIELDS
        query = run_tool(_query_argv(fields), timeout)
    if query.stdout is None:
        return BackendStatus(available=False, source="nvidia-smi", detail=query.error)
    devices = parse_query(query.stdout, fields)
    banner = run_tool(["nvidia-smi"], timeout)
    match = _CUDA_VERSION.search(banner.stdout or "")
    drivers = {v.strip() for v in re.findall(r"^[^,]*,([^,]*)", query.stdout, re.MULTILINE)}
    return BackendStatus(
        available=bool(devices),
        version=match.group(1) if match else None,
        driver_version=min(drivers) if drivers else None,
        devices=tuple(devices),
        source="nvidia-smi",
        detail=None if devices else "nvidia-smi lists no GPU",
    )


def _query_argv(fields: tuple[str, ...]) -> list[str]:
    return ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"]


def probe_cuda(timeout: float) -> BackendStatus:
    """NVML first, nvidia-smi second; unavailable when neither is installed."""
    status = probe_nvml() or probe_nvidia_smi(timeout)
    return status or BackendStatus(
        available=False, detail="no NVIDIA driver (no NVML, no nvidia-smi)"
    )
