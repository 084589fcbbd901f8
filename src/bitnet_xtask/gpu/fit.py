"""Whether the binaries that were built can use what this machine has.

The useful answers are the ones that otherwise arrive as a crash at the start or at the
first kernel launch: a CUDA build without kernels (or PTX) for the GPU's compute
capability, a CUDA runtime newer than the driver runs, a CUDA library (cudart, cuBLAS)
the loader cannot find, a GPU build on a machine without that runtime, a binary for
another CPU architecture.
"""

from __future__ import annotations

import platform
import re
import shlex
from dataclasses import dataclass

from bitnet_xtask.gpu.cuda_compat import (
    CudaRelease,
    DriverSide,
    RuntimeNeed,
    judge_runtime,
    pypi_requirement,
)
from bitnet_xtask.gpu.detect import RuntimeReport
from bitnet_xtask.gpu.elf import BinaryFacts, CudaCode
from bitnet_xtask.gpu.loader import Found, LoaderPath
from bitnet_xtask.gpu.model import GpuDevice

# ggml backend -> the runtime backend it needs.
_RUNTIME_OF = {"cuda": "cuda", "hip": "rocm", "metal": "metal", "vulkan": "wgpu"}
_MACHINES = {"x64": ("x86_64", "amd64"), "AArch64": ("aarch64", "arm64"), "ARM": ("armv7l",)}
# The CUDA libraries a build loads at start, by stem: the PyPI component that carries
# each (None: the driver's own library, which no wheel carries).
_CUDA_LIBRARIES = {"libcudart": "cuda-runtime", "libcublas": "cublas", "libcublasLt": "cublas",
                   "libcuda": None}  # fmt: skip
_SONAME = re.compile(r"^(lib[A-Za-z0-9_]+)\.so\.([0-9]+)(?:\.([0-9]+))?")


@dataclass(frozen=True)
class Finding:
    """One statement about the fit; `ok` False means that binary can't do its job here."""

    ok: bool
    message: str


def assess(
    binaries: list[BinaryFacts], runtime: RuntimeReport, loader: LoaderPath | None = None
) -> list[Finding]:
    """Each binary against the runtime report (and this machine's loader path)."""
    loader = loader or LoaderPath.of_this_machine()
    findings = []
    host = platform.machine().lower()
    for binary in binaries:
        if binary.machine in _MACHINES and host not in _MACHINES[binary.machine]:
            message = f"{binary.path.name}: built for {binary.machine}, this machine is {host}"
            findings.append(Finding(False, message))
            continue
        findings += _missing_runtimes(binary, runtime)
        findings += _cuda_findings(binary, runtime, loader)
    return findings


def _missing_runtimes(binary: BinaryFacts, runtime: RuntimeReport) -> list[Finding]:
    return [
        Finding(
            False,
            f"{binary.path.name}: built with {backend}, but no {runtime_name} runtime here"
            " (it will fall back to the CPU or fail to start)",
        )
        for backend in binary.backends
        if (runtime_name := _RUNTIME_OF.get(backend))
        and not runtime.backend(runtime_name).available
    ]


def _cuda_findings(
    binary: BinaryFacts, runtime: RuntimeReport, loader: LoaderPath
) -> list[Finding]:
    """The CUDA libraries it loads, its runtime against the driver, its device code
    against each GPU."""
    name, cuda = binary.path.name, runtime.cuda
    libraries = _cuda_libraries(binary, loader)
    findings = [finding for _, finding in libraries.values()]
    if not cuda.available:
        return findings
    need = runtime_need(binary, libraries.get("libcudart", (None, None))[0])
    if need is None and binary.cuda is not None and (binary.cuda.cubin_sms or binary.cuda.ptx_sms):
        findings.append(
            Finding(
                True,
                f"{name}: the CUDA runtime it needs is not known (no libcudart in DT_NEEDED, "
                "and its device code is compressed): not checked against the driver",
            )
        )
    verdict = need and judge_runtime(
        need, DriverSide(cuda.version, cuda.driver_version, cuda.source)
    )
    if verdict:
        ok, message = verdict
        findings.append(Finding(ok, f"{name}: {message}"))
    if binary.cuda is not None:
        findings += _device_findings(name, binary.cuda, cuda.devices)
    return findings


def _device_findings(name: str, code: CudaCode, devices: tuple[GpuDevice, ...]) -> list[Finding]:
    findings = []
    for device in devices:
        if device.compute_capability is None:
            continue
        major, minor = device.compute_capability.split(".")
        ok, how = code.runs_on(int(major) * 10 + int(minor))
        findings.append(
            Finding(
                ok,
                f"{name} on GPU {device.index} ({device.name}, compute capability "
                f"{device.compute_capability}): {how}",
            )
        )
    return findings


def runtime_need(binary: BinaryFacts, cudart: Found | None = None) -> RuntimeNeed | None:
    """The CUDA runtime `binary` loads: the release its DT_NEEDED libcudart.so.N names
    (before CUDA 11 the soname has the minor too, libcudart.so.10.2; since, the minor is
    known where the loader finds a file named libcudart.so.N.M), else, for device code
    with no libcudart needed (cudart linked statically), the release of the nvcc that
    compiled it; None for a binary with neither, or whose compiler cannot be read."""
    for library in binary.needed:
        soname = _SONAME.match(library)
        if soname is None or soname[1] != "libcudart":
            continue
        minor = int(soname[3]) if soname[3] is not None else None
        release, evidence = CudaRelease(int(soname[2]), minor), f"DT_NEEDED {library}"
        real_file = cudart.path.resolve() if cudart else None
        real = _SONAME.match(real_file.name) if real_file else None
        if minor is None and real and real[3] is not None and int(real[2]) == release.major:
            release = CudaRelease(release.major, int(real[3]))
            evidence += f", which is {real_file}"
        return RuntimeNeed(release, evidence)
    if binary.cuda is not None and binary.cuda.toolkit:
        return RuntimeNeed(
            CudaRelease.parse(binary.cuda.toolkit),
            f"no libcudart in DT_NEEDED: a static cudart; CUDA {binary.cuda.toolkit}'s nvcc "
            "compiled its device code",
        )
    return None


def _cuda_libraries(
    binary: BinaryFacts, loader: LoaderPath
) -> dict[str, tuple[Found | None, Finding]]:
    """Each CUDA library `binary` needs, by stem: where the loader finds it, and the
    finding that says so (or says what to install)."""
    result: dict[str, tuple[Found | None, Finding]] = {}
    for library in binary.needed:
        soname = _SONAME.match(library)
        if soname is None or soname[1] not in _CUDA_LIBRARIES:
            continue
        found = loader.find(
            library, origin=binary.path.parent, elf_class=binary.elf_class,
            machine=binary.machine, rpath=binary.rpath, runpath=binary.runpath,
        )  # fmt: skip
        name = binary.path.name
        if found is not None:
            finding = Finding(True, f"{name}: {library} is found ({found.rule}: {found.path})")
        else:
            searched = ", ".join(loader.rules(binary.elf_class))
            finding = Finding(
                False,
                f"{name}: {library} is not on the loader path ({searched}): it cannot start; "
                + _install_hint(soname[1], int(soname[2])),
            )
        result[soname[1]] = (found, finding)
    return result


def _install_hint(stem: str, major: int) -> str:
    component = _CUDA_LIBRARIES[stem]
    if component is None:
        return (
            "it is the NVIDIA driver's library: install the driver, or build with "
            "GGML_CUDA_NO_VMM=ON, which does not link it"
        )
    what = "cuBLAS" if component == "cublas" else "runtime"
    return (
        f"install CUDA {major}'s {what} (the toolkit's, or `pip install "
        f"{shlex.quote(pypi_requirement(component, major))}`) and put its lib folder on "
        "LD_LIBRARY_PATH"
    )
