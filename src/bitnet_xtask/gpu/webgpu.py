"""WebGPU: whether wgpu would find a GPU through a native API.

wgpu runs on Vulkan (Linux, Windows), Metal (macOS) or DX12 (Windows). On Linux an
installed driver manifest proves nothing (distributions ship Intel, AMD and software
ICDs together), so we ask the Vulkan loader itself: create an instance, enumerate the
physical devices, and count those whose type is a GPU. A software rasterizer (lavapipe,
SwiftShader) reports the CPU type and does not count. Loading every installed driver
costs tens of milliseconds, so when the machine has no GPU device node at all (no
`/dev/dri/renderD*`, no `/dev/nvidia*`: nothing a Vulkan driver could open) the loader
is not asked.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

from bitnet_xtask.gpu.model import BackendStatus, GpuDevice

VULKAN_LIBRARY = "libvulkan.so.1"
_DEVICE_TYPES = {0: "other", 1: "integrated GPU", 2: "discrete GPU", 3: "virtual GPU", 4: "CPU"}
_GPU_TYPES = {1, 2, 3}
_PROPERTIES_SIZE = 4096  # VkPhysicalDeviceProperties is ~824 bytes; we read its head
_NAME_OFFSET, _NAME_SIZE = 20, 256  # after apiVersion, driverVersion, vendorID, deviceID, type


class _InstanceCreateInfo(ctypes.Structure):
    _fields_ = (
        ("sType", ctypes.c_uint32),
        ("pNext", ctypes.c_void_p),
        ("flags", ctypes.c_uint32),
        ("pApplicationInfo", ctypes.c_void_p),
        ("enabledLayerCount", ctypes.c_uint32),
        ("ppEnabledLayerNames", ctypes.c_void_p),
        ("enabledExtensionCount", ctypes.c_uint32),
        ("ppEnabledExtensionNames", ctypes.c_void_p),
    )


def enumerate_vulkan(library: str = VULKAN_LIBRARY) -> list[tuple[str, int]] | None:
    """(name, VkPhysicalDeviceType) of every Vulkan device; None without a loader."""
    try:
        vk = ctypes.CDLL(library)
    except OSError:
        return None
    vk.vkCreateInstance.restype = ctypes.c_int32
    vk.vkEnumeratePhysicalDevices.restype = ctypes.c_int32
    vk.vkEnumeratePhysicalDevices.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.c_void_p,
    )
    vk.vkGetPhysicalDeviceProperties.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    vk.vkDestroyInstance.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    info = _InstanceCreateInfo(sType=1)  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
    instance = ctypes.c_void_p()
    if vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
        return []
    try:
        count = ctypes.c_uint32()
        if vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None) != 0:
            return []
        handles = (ctypes.c_void_p * count.value)()
        if vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles) not in (0, 5):
            return []
        devices = []
        for handle in handles[: count.value]:
            properties = ctypes.create_string_buffer(_PROPERTIES_SIZE)
            vk.vkGetPhysicalDeviceProperties(handle, properties)
            device_type = int.from_bytes(properties.raw[16:20], "little")
            raw_name = properties.raw[_NAME_OFFSET : _NAME_OFFSET + _NAME_SIZE]
            devices.append((raw_name.split(b"\0", 1)[0].decode("utf-8", "replace"), device_type))
        return devices
    finally:
        vk.vkDestroyInstance(instance, None)


def gpu_device_nodes(dev: Path = Path("/dev")) -> list[Path]:
    """Device nodes a GPU driver exposes on Linux (Mesa's render nodes, NVIDIA's)."""
    return sorted([*dev.glob("dri/renderD*"), *dev.glob("nvidia[0-9]*")])


def probe_wgpu(
    system: str | None = None, library: str = VULKAN_LIBRARY, dev: Path = Path("/dev")
) -> BackendStatus:
    """Report the native path wgpu would use, and the GPUs it would see."""
    system = system or platform.system()
    if system == "Darwin":
        return BackendStatus(available=True, source="metal", detail="wgpu runs on Metal")
    if system == "Windows":
        return BackendStatus(available=True, source="dx12", detail="wgpu runs on DX12")
    if not gpu_device_nodes(dev):
        return BackendStatus(
            available=False, detail=f"no GPU device node ({dev}/dri/renderD*, {dev}/nvidia*)"
        )
    found = enumerate_vulkan(library)
    if found is None:
        return BackendStatus(available=False, detail=f"no Vulkan loader ({library})")
    gpus = [
        GpuDevice(index=i, name=f"{name} ({_DEVICE_TYPES.get(kind, 'other')})")
        for i, (name, kind) in enumerate(found)
        if kind in _GPU_TYPES
    ]
    if gpus:
        return BackendStatus(available=True, source="vulkan", devices=tuple(gpus))
    others = ", ".join(f"{name} ({_DEVICE_TYPES.get(kind, 'other')})" for name, kind in found)
    return BackendStatus(
        available=False,
        source="vulkan",
        detail=f"Vulkan sees no GPU ({others})" if others else "Vulkan sees no device",
    )
