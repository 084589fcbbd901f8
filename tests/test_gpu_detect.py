"""Runtime detection replayed from real recordings (tests/fixtures/gpu, see its README).

Tools are executable stand-ins on PATH that print the recordings; NVML is a stand-in
shared library compiled here with gcc. Each test runs the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import GPU_FIXTURES, STANDINS, Xtask, build_nvml_standin

from bitnet_xtask.gpu.apple import parse_displays, probe_metal
from bitnet_xtask.gpu.cpu import parse_cpuinfo, parse_sysctl
from bitnet_xtask.gpu.nvidia import parse_banner, parse_query
from bitnet_xtask.gpu.rocm import parse_product_json, parse_product_text
from bitnet_xtask.gpu.webgpu import enumerate_vulkan, probe_wgpu

FIXTURES = GPU_FIXTURES
H100 = "H100-80GB-HBM3_590.48.01"


def smi_env(xtask: Xtask, **variables: str) -> dict[str, str]:
    """PATH with the stand-ins first, and the recordings they should replay."""
    return xtask.standin_env(**variables)


def gpu_json(xtask: Xtask, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    run = xtask.run("gpu-preflight", "--format", "json", *args, env=env)
    return run.code, json.loads(run.stdout)


def test_h100_from_nvidia_smi_recordings(xtask: Xtask) -> None:
    env = smi_env(
        xtask,
        XTASK_TEST_SMI_BANNER=str(FIXTURES / f"nvidia-smi_{H100}.txt"),
        XTASK_TEST_SMI_QUERY=str(FIXTURES / f"nvidia-smi-query_{H100}.csv"),
    )
    code, report = gpu_json(xtask, env, "--require")
    assert code == 0
    assert {k: report[k] for k in ("cuda", "cuda_version", "metal", "rocm", "any_available")} == {
        "cuda": True,
        "cuda_version": "13.1",
        "metal": False,
        "rocm": False,
        "any_available": True,
    }
    cuda = report["devices"]["cuda"]
    assert cuda["driver_version"] == "590.48.01" and cuda["source"] == "nvidia-smi"
    assert cuda["devices"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_mib": 81559,
            "compute_capability": "9.0",
            "mig": False,
        }
    ]


def test_mig_enabled_h100(xtask: Xtask) -> None:
    env = smi_env(
        xtask,
        XTASK_TEST_SMI_BANNER=str(FIXTURES / "nvidia-smi_H100-80GB-HBM3-MIG_590.48.01.txt"),
        XTASK_TEST_SMI_QUERY=str(FIXTURES / "nvidia-smi-query_H100-80GB-HBM3-MIG_590.48.01.csv"),
    )
    _, report = gpu_json(xtask, env)
    (device,) = report["devices"]["cuda"]["devices"]
    assert device["mig"] is True and device["compute_capability"] == "9.0"
    text = xtask.run("gpu-preflight", env=env).stdout
    assert "GPU 0: NVIDIA H100 80GB HBM3, 81559 MiB, 9.0, MIG" in text


def test_old_driver_without_query_falls_back_to_the_table(xtask: Xtask) -> None:
    """Driver 450 (8x A100): the query fails, the table still lists every GPU."""
    env = smi_env(
        xtask, XTASK_TEST_SMI_BANNER=str(FIXTURES / "nvidia-smi_A100-SXM4-40GBx8_450.102.04.txt")
    )
    _, report = gpu_json(xtask, env)
    cuda = report["devices"]["cuda"]
    assert report["cuda_version"] == "11.0" and cuda["driver_version"] == "450.102.04"
    assert [d["index"] for d in cuda["devices"]] == list(range(8))
    assert {d["name"] for d in cuda["devices"]} == {"A100-SXM4-40GB"}
    assert all(d["compute_capability"] is None for d in cuda["devices"])
    assert "compute capability unknown" in cuda["source"]


@pytest.mark.parametrize(
    ("recording", "driver", "cuda", "count", "name", "memory", "mig"),
    [
        ("nvidia-smi_H200x8_570.133.20.txt", "570.133.20", "12.8", 8, "NVIDIA H200", 143771, False),
        ("nvidia-smi_A100-80GB-PCIe-MIG_560.35.03.txt", "560.35.03", "12.6", 1,
         "NVIDIA A100 80GB PCIe", 81920, True),
        ("nvidia-smi_RTX2080SUPER_610.57.04.txt", "610.57.04", "13.3", 1,
         "NVIDIA GeForce RTX 2080 ...", 8192, False),
        ("nvidia-smi_RTX2080SUPER-windows_591.86.txt", "591.86", "13.1", 1,
         "NVIDIA GeForce RTX 2080 ...", 8192, False),
        ("nvidia-smi_RTX4070_535.146.02.txt", "535.146.02", "12.2", 1,
         "NVIDIA GeForce RTX 4070", 12282, False),
        ("nvidia-smi_TeslaP40_440.33.01.txt", "440.33.01", "10.2", 1, "Tesla P40", 22919, False),
        ("nvidia-smi_L40S_580.126.09.txt", "580.126.09", "13.0", 1, "NVIDIA L40S", 46068, False),
    ],
)  # fmt: skip
def test_every_table_layout_parses(
    recording: str, driver: str, cuda: str, count: int, name: str, memory: int, mig: bool
) -> None:
    banner = parse_banner((FIXTURES / recording).read_text(errors="replace"))
    assert (banner.driver_version, banner.cuda_version) == (driver, cuda)
    assert len(banner.devices) == count
    assert {(d.name, d.memory_mib, d.mig) for d in banner.devices} == {(name, memory, mig)}


@pytest.mark.parametrize(
    ("recording", "capability"),
    [("nvidia-smi-query_L40S_595.80.csv", "8.9"),
     ("nvidia-smi-query_RTX2080SUPER_610.57.04.csv", "7.5")],
)  # fmt: skip
def test_query_recordings_through_the_stand_in(recording: str, capability: str) -> None:
    fields = ("name", "driver_version", "memory.total", "compute_cap", "mig.mode.current")
    out = subprocess.run(
        [str(STANDINS / "nvidia-smi"), f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
        env={**os.environ, "XTASK_TEST_SMI_QUERY": str(FIXTURES / recording)},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (device,) = parse_query(out, fields)
    assert device.compute_capability == capability and device.mig is False


# The stand-ins hang for 600 s; finishing well inside that proves the cut-off. A tight
# bound (it was 5 s) measures how fast a loaded 2-core CI starts Python, not the probe.
HANG_BOUND = 60


def test_a_hanging_nvidia_smi_is_cut_off(xtask: Xtask) -> None:
    env = smi_env(
        xtask,
        XTASK_TEST_SMI_BANNER=str(FIXTURES / f"nvidia-smi_{H100}.txt"),
        XTASK_TEST_SMI_SLEEP="600",
    )
    started = time.monotonic()
    code, report = gpu_json(xtask, env, "--probe-timeout", "0.5", "--require")
    assert time.monotonic() - started < HANG_BOUND
    assert code == 1 and report["cuda"] is False
    assert "timed out after 0.5s" in report["devices"]["cuda"]["detail"]
    assert subprocess.run(["pgrep", "-f", "XTASK_TEST_SMI"], check=False).returncode != 0


# The H100 recording's values (nvidia-smi_H100-80GB-HBM3_590.48.01.txt and its query).
H100_NVML = (
    'NAME="NVIDIA H100 80GB HBM3"',
    'DRIVER="590.48.01"',
    "CUDA=13010",
    "COUNT=1",
    "MEM_MIB=81559",
    "MAJOR=9",
    "MINOR=0",
    "MIG=0",
)


def test_nvml_is_preferred_over_nvidia_smi(xtask: Xtask, tmp_path: Path) -> None:
    libdir = build_nvml_standin(tmp_path, *H100_NVML)
    env = smi_env(xtask, LD_LIBRARY_PATH=str(libdir), XTASK_TEST_SMI_SLEEP="600")
    started = time.monotonic()
    code, report = gpu_json(xtask, env)
    assert time.monotonic() - started < HANG_BOUND  # nvidia-smi (hanging) was never needed
    cuda = report["devices"]["cuda"]
    assert code == 0 and cuda["source"] == "nvml" and report["cuda_version"] == "13.1"
    assert cuda["driver_version"] == "590.48.01"
    assert cuda["devices"][0]["compute_capability"] == "9.0"
    assert cuda["devices"][0]["memory_mib"] == 81559


def test_a_hanging_nvml_is_abandoned(xtask: Xtask, tmp_path: Path) -> None:
    libdir = build_nvml_standin(tmp_path, *H100_NVML, "HANG")
    started = time.monotonic()
    _, report = gpu_json(xtask, smi_env(xtask, LD_LIBRARY_PATH=str(libdir)), "--probe-timeout", "1")
    assert time.monotonic() - started < HANG_BOUND
    assert report["cuda"] is False and "timed out" in report["devices"]["cuda"]["detail"]


@pytest.mark.parametrize(
    ("variable", "recording", "names", "gfx"),
    [
        ("XTASK_TEST_ROCM_JSON", "rocm-smi-showproductname-P-json_MI250_gfx9010.json",
         {"AMD INSTINCT MI250 (MCM) OAM AC MBA"}, {"gfx9010"}),
        ("XTASK_TEST_ROCM_TEXT", "rocm-smi-showproductname_MI300X_rocm6.1.2.txt",
         {"AMD Instinct MI300X OAM"}, {"gfx942"}),
        ("XTASK_TEST_ROCM_TEXT", "rocm-smi-showproductname_MI210x6_rocm5.7.0.txt",
         {"Instinct MI210"}, {None}),
    ],
)  # fmt: skip
def test_rocm_from_rocm_smi_recordings(
    xtask: Xtask, variable: str, recording: str, names: set[str], gfx: set[str | None]
) -> None:
    code, report = gpu_json(xtask, smi_env(xtask, **{variable: str(FIXTURES / recording)}))
    devices = report["devices"]["rocm"]["devices"]
    assert code == 0 and report["rocm"] is True and report["any_available"] is True
    assert {d["name"] for d in devices} == names
    assert {d["compute_capability"] for d in devices} == gfx


def test_rocm_parsers_directly() -> None:
    mi210 = parse_product_text(
        (FIXTURES / "rocm-smi-showproductname_MI210x6_rocm5.7.0.txt").read_text()
    )
    assert len(mi210) == 6
    mi100 = parse_product_json((FIXTURES / "rocm-smi-json_MI100x4_rocm6.0.2.json").read_text())
    assert len(mi100) == 4


def test_metal_from_a_system_profiler_recording() -> None:
    status = parse_displays((FIXTURES / "system_profiler_SPDisplays_M1.json").read_text())
    assert status.available and status.version == "mtlgpufamilyapple7"
    assert status.devices[0].name == "Apple M1 (7 cores)"
    assert probe_metal(1.0, system="Linux").detail == "Metal needs macOS"


@pytest.mark.parametrize(
    ("recording", "arch", "has", "lacks"),
    [
        ("cpuinfo_xeon-gold-6230.txt", "x86_64", {"avx2", "avx512f", "avx512_vnni"}, {"avx_vnni"}),
        ("cpuinfo_i7-1370P.txt", "x86_64", {"avx2", "avx_vnni"}, {"avx512f"}),
        ("cpuinfo_epyc-7451.txt", "x86_64", {"avx2", "fma"}, {"avx512f", "avx_vnni"}),
        ("cpuinfo_kunpeng-920.txt", "aarch64", {"neon", "dotprod"}, {"sve"}),
        ("cpuinfo_nvidia-gb10.txt", "aarch64", {"neon", "dotprod", "sve2", "i8mm"}, set()),
        ("cpuinfo_rpi4.txt", "aarch64", {"neon"}, {"dotprod"}),
    ],
)  # fmt: skip
def test_cpu_features_from_cpuinfo_recordings(
    recording: str, arch: str, has: set[str], lacks: set[str]
) -> None:
    cpu = parse_cpuinfo((FIXTURES / recording).read_text(), arch)
    assert has <= set(cpu.features) and not lacks & set(cpu.features)
    assert cpu.cores >= 1


def test_apple_silicon_features_from_sysctl_recordings() -> None:
    m1 = parse_sysctl((FIXTURES / "sysctl-hw_M1.txt").read_text())
    m2 = parse_sysctl((FIXTURES / "sysctl-hw_M2.txt").read_text())
    assert {"neon", "dotprod"} <= set(m1.features) and "i8mm" not in m1.features
    assert "i8mm" in m2.features and m2.arch == "arm64"


def test_wgpu_asks_the_real_vulkan_loader(tmp_path: Path) -> None:
    """Debian's loader with Mesa's drivers: lavapipe is a CPU device, so no GPU."""
    if enumerate_vulkan() is None:
        pytest.skip("no Vulkan loader (scripts/ci-local.sh deps installs libvulkan1)")
    devices = enumerate_vulkan()
    assert devices and all(kind == 4 for _, kind in devices), devices  # no GPU on this machine
    # A render node makes the probe ask the loader (the node itself is only looked at).
    (tmp_path / "dri").mkdir()
    (tmp_path / "dri" / "renderD128").touch()
    status = probe_wgpu(system="Linux", dev=tmp_path)
    assert status.available is False and status.source == "vulkan"
    assert "llvmpipe" in (status.detail or "") and "(CPU)" in (status.detail or "")
    missing = probe_wgpu(system="Linux", library="libvulkan-missing.so.1", dev=tmp_path)
    assert missing.available is False and "no Vulkan loader" in (missing.detail or "")
    assert probe_wgpu(system="Darwin").available


def test_wgpu_without_gpu_device_nodes_skips_the_loader(tmp_path: Path) -> None:
    status = probe_wgpu(system="Linux", library="libvulkan-missing.so.1", dev=tmp_path)
    assert status.available is False and "no GPU device node" in (status.detail or "")


@pytest.mark.parametrize(
    ("fake", "expect"),
    [("cuda", {"cuda"}), ("rocm,metal", {"rocm", "metal"}), (" WGPU ", {"wgpu"}),
     ("none", set()), ("", set())],
)  # fmt: skip
def test_bitnet_gpu_fake(xtask: Xtask, fake: str, expect: set[str]) -> None:
    code, report = gpu_json(xtask, xtask.env(BITNET_GPU_FAKE=fake))
    assert report["fake"] is True and code == 0
    assert {b for b in ("cuda", "rocm", "metal", "wgpu") if report[b]} == expect
    assert report["any_available"] is bool(expect)
    required = xtask.run("gpu-preflight", "--require", env=xtask.env(BITNET_GPU_FAKE=fake))
    assert required.code == (0 if expect else 1)
    assert "BITNET_GPU_FAKE" in required.stdout or not expect


def test_unknown_fake_value_is_a_usage_error(xtask: Xtask) -> None:
    run = xtask.run("gpu-preflight", env=xtask.env(BITNET_GPU_FAKE="cuda,tpu"))
    assert run.code == 2 and "unknown backend tpu" in run.stderr


def test_no_gpu_warns_and_exits_0_unless_required(xtask: Xtask) -> None:
    env = xtask.env(BITNET_GPU_FAKE="none")
    plain = xtask.run("gpu-preflight", env=env)
    assert plain.code == 0 and "warning: no GPU backend available" in plain.stderr
    assert "✗ GPU: Not available" in plain.stdout
    required = xtask.run("gpu-preflight", "--require", env=env)
    assert required.code == 1 and "--require" in required.stderr


def test_preflight_on_this_machine(xtask: Xtask) -> None:
    """No GPU tools here: a report that says so (bench/ measures how fast)."""
    run = xtask.run("preflight", "--format", "json")
    assert run.code == 0
    report = json.loads(run.stdout)
    assert report["runtime"]["devices"]["cpu"]["cores"] >= 1
    assert report["compiled"]["binaries"] == []
