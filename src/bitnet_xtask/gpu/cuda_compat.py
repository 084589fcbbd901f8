"""Whether an NVIDIA driver can run a binary's CUDA runtime: NVIDIA's rule, in one table.

A CUDA application loads the runtime (cudart) it was built with; that runtime refuses to
start on a driver older than it supports ("CUDA driver version is insufficient for CUDA
runtime version"), long after the build looked fine. Since CUDA 11, NVIDIA's *minor
version compatibility* lets any runtime of one major release run on every driver at or
above that major's minimum, with a limited feature set (PTX built by a newer toolkit
than the driver cannot be JIT-compiled); before CUDA 11, each minor release needed its
own toolkit's driver. Drivers are backward compatible: a newer major runs older runtimes.

Source of the table: NVIDIA, "CUDA Compatibility", section Minor Version Compatibility,
Table 1 "CUDA Toolkit 11.x, 12.x, and 13.x Minimum and Maximum Required Driver Versions"
(https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html:
13.x >= 580, 12.x >= 525, 11.x >= 450), with the exact Linux x86_64 drivers of the CUDA
Toolkit Release Notes' minor-version table (12.x >= 525.60.13, 11.x >= 450.80.02), and
Table 2 there for CUDA 10.x (10.2 >= 440.33, 10.1 >= 418.39, 10.0 >= 410.48). These are
Linux driver numbers; Windows drivers are numbered differently (12.x >= 527.41).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The oldest Linux driver that runs every runtime of a CUDA major (minor version
#: compatibility, CUDA 11 and newer).
MINIMUM_DRIVER_FOR_MAJOR: dict[int, str] = {13: "580", 12: "525.60.13", 11: "450.80.02"}
#: Before CUDA 11 there was no minor version compatibility: each minor had its driver.
MINIMUM_DRIVER_FOR_RELEASE: dict[tuple[int, int], str] = {
    (10, 2): "440.33",
    (10, 1): "418.39",
    (10, 0): "410.48",
}
FIRST_MINOR_COMPATIBLE_MAJOR = 11

_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def version_tuple(text: str) -> tuple[int, ...]:
    """`"525.60.13"` as `(525, 60, 13)`; a ValueError for anything that is not one."""
    if not _VERSION.match(text.strip()):
        raise ValueError(f"not a version number: {text!r}")
    return tuple(int(part) for part in text.strip().split("."))


@dataclass(frozen=True)
class CudaRelease:
    """A CUDA version, `minor` None where only the major is known."""

    major: int
    minor: int | None = None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}" if self.minor is not None else f"{self.major}.x"

    @classmethod
    def parse(cls, text: str) -> CudaRelease:
        """`"12.4"` (nvidia-smi, NVML), `"13"` or `"13.0.88"` (the last part is dropped)."""
        parts = version_tuple(text)
        return cls(parts[0], parts[1] if len(parts) > 1 else None)


def cuda_supported_by_driver(driver_version: str) -> CudaRelease | None:
    """The newest CUDA a Linux driver runs, by NVIDIA's table: only the major for CUDA 11
    and newer (the driver itself says the minor: nvidia-smi's "CUDA Version"); None for a
    driver older than every row, or a version that is not one."""
    try:
        driver = version_tuple(driver_version)
    except ValueError:
        return None
    for major, minimum in sorted(MINIMUM_DRIVER_FOR_MAJOR.items(), reverse=True):
        if driver >= version_tuple(minimum):
            return CudaRelease(major)
    for (major, minor), minimum in sorted(MINIMUM_DRIVER_FOR_RELEASE.items(), reverse=True):
        if driver >= version_tuple(minimum):
            return CudaRelease(major, minor)
    return None


def minimum_driver(release: CudaRelease) -> str | None:
    """The oldest Linux driver that runs `release`'s runtime, None where the table has no row."""
    if release.major >= FIRST_MINOR_COMPATIBLE_MAJOR:
        return MINIMUM_DRIVER_FOR_MAJOR.get(release.major)
    return MINIMUM_DRIVER_FOR_RELEASE.get((release.major, release.minor or 0))


@dataclass(frozen=True)
class RuntimeNeed:
    """The CUDA runtime a binary loads, and how that was found (said in every verdict)."""

    release: CudaRelease
    evidence: str  # "DT_NEEDED libcudart.so.13", "static cudart: CUDA 13.0 compiled it"


@dataclass(frozen=True)
class DriverSide:
    """What the driver says it supports: its CUDA version and its own version."""

    cuda_version: str | None  # nvidia-smi's "CUDA Version", NVML's cudaDriverVersion
    driver_version: str | None
    source: str | None = None  # which probe said so: "nvml", "nvidia-smi"

    def supported(self) -> tuple[CudaRelease, str] | None:
        """The newest CUDA this driver runs and where that came from; None if unknown."""
        if self.cuda_version:
            try:
                reported = f"reported by {self.source}" if self.source else "as reported"
                return CudaRelease.parse(self.cuda_version), reported
            except ValueError:
                pass
        if self.driver_version and (derived := cuda_supported_by_driver(self.driver_version)):
            return derived, "by NVIDIA's minimum drivers; no CUDA version was reported"
        return None


def judge_runtime(need: RuntimeNeed, driver: DriverSide) -> tuple[bool, str] | None:
    """Whether the driver runs the runtime a binary needs, in words that name both
    versions (and the next step when it does not); None when the driver's side is
    unknown (nothing is claimed either way)."""
    supported = driver.supported()
    if supported is None:
        return None
    release, how = supported
    driver_name = f"driver {driver.driver_version}" if driver.driver_version else "the driver"
    needs = f"needs the CUDA {need.release} runtime ({need.evidence})"
    has = f"{driver_name} runs CUDA {release} at most ({how})"
    if _runs(need.release, release):
        detail = ""
        if (
            need.release.major == release.major
            and need.release.minor is not None
            and release.minor is not None
            and need.release.minor > release.minor
        ):
            detail = (
                "; through minor version compatibility, whose limits apply: PTX from the newer "
                "toolkit cannot be JIT-compiled by this driver"
            )
        return True, f"{needs}; {has}{detail}"
    minimum = minimum_driver(need.release)
    update = f"update the driver to >= {minimum}" if minimum else "update the driver"
    # Any runtime of the driver's major runs on it (minor version compatibility).
    older = str(release.major) if release.major >= FIRST_MINOR_COMPATIBLE_MAJOR else str(release)
    return (
        False,
        f'{needs}, but {has}: it would fail to start ("CUDA driver version is insufficient '
        f'for CUDA runtime version"); {update}, or build with CUDA {older}',
    )


def _runs(need: CudaRelease, supported: CudaRelease) -> bool:
    if supported.major != need.major:
        return supported.major > need.major
    if need.major >= FIRST_MINOR_COMPATIBLE_MAJOR:
        return True
    return (supported.minor or 0) >= (need.minor or 0)


def pypi_distribution(component: str, major: int) -> str:
    """The PyPI distribution that carries a CUDA `component` ("cublas", "cuda-runtime") of
    one major: CUDA 13 dropped the `-cu<major>` suffix (`nvidia-cublas` 13.x, its files
    under `nvidia/cu13/`); older majors keep it (`nvidia-cublas-cu12`, `nvidia/cublas/`)."""
    return f"nvidia-{component}" if major >= 13 else f"nvidia-{component}-cu{major}"


def pypi_requirement(component: str, major: int) -> str:
    """What to `pip install` for that component: pinned to the major where the name does
    not say it."""
    name = pypi_distribution(component, major)
    return f"{name}=={major}.*" if major >= 13 else name
