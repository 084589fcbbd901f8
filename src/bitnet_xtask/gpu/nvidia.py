"""CUDA: NVML through ctypes when the driver ships it, else nvidia-smi.

NVML (`libnvidia-ml.so.1`, installed with every NVIDIA driver) answers in
milliseconds and needs no process; nvidia-smi is the fallback for containers that
mount the tool but not the library. Both give, per GPU: name, memory, compute
capability; and for the system: driver version and the newest CUDA it supports.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass

from bitnet_xtask.gpu.model import BackendStatus, GpuDevice
from bitnet_xtask.gpu.probe import run_tool

NVML_LIBRARY = "libnvidia-ml.so.1"
QUERY_FIELDS = ("name", "driver_version", "memory.total", "compute_cap", "mig.mode.current")
# Drivers 610+ say "KMD Version" / "CUDA UMD Version" where older ones say
# "Driver Version" / "CUDA Version".
_BANNER_DRIVER = re.compile(r"(?:Driver|KMD) Version:\s*([0-9][0-9.]*)")
_BANNER_CUDA = re.compile(r"CUDA (?:UMD )?Version:\s*([0-9]+\.[0-9]+)")
_BANNER_GPU = re.compile(r"^\|\s+(\d+)\s+(.*?)\s+(?:On|Off|WDDM|TCC|MCDM)\s*\|")
_BANNER_MEMORY = re.compile(r"(\d+)MiB\s*/\s*(\d+)MiB")


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


@dataclass(frozen=True)
class Banner:
    """What plain `nvidia-smi` prints: versions and one row block per GPU."""

    driver_version: str | None
    cuda_version: str | None
    devices: tuple[GpuDevice, ...]


def parse_banner(text: str) -> Banner:
    """Plain `nvidia-smi`, every table layout from driver 440 to 610, Linux and Windows.

    Each GPU is a block of rows: index and name; memory; and, where the header has a
    `MIG M.` column, the MIG mode. Sections after the GPU table (MIG devices,
    processes) are not read.
    """
    driver = _BANNER_DRIVER.search(text)
    cuda = _BANNER_CUDA.search(text)
    has_mig_row = "MIG M." in text
    lines = re.split(r"\n\s*\n|\|\s*(?:MIG devices|Processes):", text, maxsplit=1)[0].splitlines()
    devices = []
    for number, line in enumerate(lines):
        row = _BANNER_GPU.match(line)
        if not row:
            continue
        following = lines[number + 1 : number + 3]
        memory = _BANNER_MEMORY.search(following[0]) if following else None
        mig_cell = following[1].rstrip(" |").split("|")[-1].strip() if has_mig_row else ""
        devices.append(
            GpuDevice(
                index=int(row.group(1)),
                name=row.group(2).strip(),
                memory_mib=int(memory.group(2)) if memory else None,
                mig=has_mig_row and len(following) > 1 and mig_cell == "Enabled",
            )
        )
    return Banner(
        driver_version=driver.group(1) if driver else None,
        cuda_version=cuda.group(1) if cuda else None,
        devices=tuple(devices),
    )


def probe_nvidia_smi(timeout: float) -> BackendStatus | None:
    """Ask nvidia-smi: the banner (the one place that states the CUDA version) and the
    query (the one place with compute capabilities; drivers before 510 lack the
    `compute_cap` field, and then the banner's GPU rows are used)."""
    banner_run = run_tool(["nvidia-smi"], timeout)
    if banner_run.error == "not installed":
        return None
    if banner_run.stdout is None:
        return BackendStatus(available=False, source="nvidia-smi", detail=banner_run.error)
    banner = parse_banner(banner_run.stdout)
    query = run_tool(_query_argv(QUERY_FIELDS), timeout)
    devices = tuple(parse_query(query.stdout, QUERY_FIELDS)) if query.stdout else ()
    source = "nvidia-smi"
    if not devices:
        devices = banner.devices
        source = "nvidia-smi (table; query failed: compute capability unknown)"
    return BackendStatus(
        available=bool(devices),
        version=banner.cuda_version,
        driver_version=banner.driver_version,
        devices=devices,
        source=source,
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
