"""A CUDA build and the driver it meets: the CUDA runtime a binary needs against what the
driver runs (NVIDIA's table, on every recording in tests/fixtures/gpu), the CUDA
libraries the loader must find, fetch-cpp finding nvcc's toolkit and cuBLAS, and
(XTASK_TEST_CUDA_BUILD=1) the pinned llama.cpp's CUDA backend compiled for real and
judged by preflight against real recordings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GPU_FIXTURES, Xtask, build_nvml_standin
from references import cache_home

from bitnet_xtask.cpp.build import BuildRequest, build_reference
from bitnet_xtask.cpp.cuda_toolkit import CudaToolkit, find_cuda_toolkit, toolkit_folders
from bitnet_xtask.cpp.pins import SdistPin
from bitnet_xtask.errors import UsageError
from bitnet_xtask.gpu.cuda_compat import (
    CudaRelease,
    DriverSide,
    RuntimeNeed,
    cuda_supported_by_driver,
    judge_runtime,
)
from bitnet_xtask.gpu.elf import read_binary
from bitnet_xtask.gpu.fit import runtime_need
from bitnet_xtask.gpu.loader import LoaderPath
from bitnet_xtask.gpu.nvidia import parse_banner

# Every plain `nvidia-smi` recording, and the newest CUDA major its banner states (read
# off the recordings by eye, as their README lists them: not computed by the code).
BANNERS = {
    "nvidia-smi_A100-80GB-PCIe-MIG_560.35.03.txt": 12,
    "nvidia-smi_A100-SXM4-40GB_550.144.03.txt": 12,
    "nvidia-smi_A100-SXM4-40GBx8_450.102.04.txt": 11,
    "nvidia-smi_H100-80GB-HBM3-MIG_590.48.01.txt": 13,
    "nvidia-smi_H100-80GB-HBM3_590.48.01.txt": 13,
    "nvidia-smi_H200x8_570.133.20.txt": 12,
    "nvidia-smi_L40S_580.126.09.txt": 13,
    "nvidia-smi_RTX2080SUPER-windows_591.86.txt": 13,
    "nvidia-smi_RTX2080SUPER-windows_610.62.txt": 13,
    "nvidia-smi_RTX2080SUPER_595.71.05.txt": 13,
    "nvidia-smi_RTX2080SUPER_610.57.04.txt": 13,
    "nvidia-smi_RTX4070_535.146.02.txt": 12,
    "nvidia-smi_TeslaP40_440.33.01.txt": 10,
}
H100 = "H100-80GB-HBM3_590.48.01"


def test_every_banner_recording_is_listed() -> None:
    assert sorted(p.name for p in GPU_FIXTURES.glob("nvidia-smi_*.txt")) == sorted(BANNERS)


def _driver(recording: str) -> DriverSide:
    banner = parse_banner((GPU_FIXTURES / recording).read_text(errors="replace"))
    return DriverSide(banner.cuda_version, banner.driver_version, "nvidia-smi")


@pytest.mark.parametrize("recording", sorted(BANNERS))
@pytest.mark.parametrize("need", [11, 12, 13])
def test_the_runtime_fit_on_every_recording(recording: str, need: int) -> None:
    verdict = judge_runtime(RuntimeNeed(CudaRelease(need), "DT_NEEDED"), _driver(recording))
    assert verdict is not None
    ok, message = verdict
    assert ok == (need <= BANNERS[recording]), message
    assert f"needs the CUDA {need}.x runtime (DT_NEEDED)" in message
    if not ok:
        assert "update the driver to >= " in message


@pytest.mark.parametrize("recording", sorted(r for r in BANNERS if "windows" not in r))
def test_nvidia_s_table_agrees_with_what_each_driver_reports(recording: str) -> None:
    """The driver -> CUDA major table (used when a driver reports no CUDA version) gives
    what each real Linux driver said of itself (the table is of Linux drivers)."""
    driver = _driver(recording)
    assert driver.driver_version is not None and driver.cuda_version is not None
    derived = cuda_supported_by_driver(driver.driver_version)
    assert derived is not None and derived.major == BANNERS[recording]
    if derived.major < 11:  # before minor version compatibility: the minor too
        assert str(derived) == driver.cuda_version


def test_the_verdict_names_both_versions_and_what_to_do() -> None:
    """The issue's case: a CUDA 13 build on a machine whose driver is still 550 (the
    A100 recording's driver)."""
    need = RuntimeNeed(CudaRelease(13), "DT_NEEDED libcudart.so.13")
    assert judge_runtime(need, _driver("nvidia-smi_A100-SXM4-40GB_550.144.03.txt")) == (
        False,
        "needs the CUDA 13.x runtime (DT_NEEDED libcudart.so.13), but driver 550.144.03 runs "
        'CUDA 12.4 at most (reported by nvidia-smi): it would fail to start ("CUDA driver '
        'version is insufficient for CUDA runtime version"); update the driver to >= 580, '
        "or build with CUDA 12",
    )


def test_before_cuda_11_each_minor_needs_its_own_driver() -> None:
    p40 = _driver("nvidia-smi_TeslaP40_440.33.01.txt")  # CUDA 10.2
    fits = judge_runtime(RuntimeNeed(CudaRelease(10, 1), "x"), p40)
    too_new = judge_runtime(RuntimeNeed(CudaRelease(11, 0), "x"), p40)
    assert fits is not None and fits[0]
    assert too_new is not None and not too_new[0]
    assert "update the driver to >= 450.80.02, or build with CUDA 10.2" in too_new[1]
    unknown_minor = DriverSide(None, "418.40", None)  # no CUDA version reported: derived
    verdict = judge_runtime(RuntimeNeed(CudaRelease(10, 2), "x"), unknown_minor)
    assert verdict is not None and not verdict[0]
    assert "runs CUDA 10.1 at most (by NVIDIA's minimum drivers" in verdict[1]


def test_minor_version_compatibility_runs_a_newer_minor_and_says_its_limit() -> None:
    l40s = _driver("nvidia-smi_L40S_580.126.09.txt")  # CUDA 13.0
    verdict = judge_runtime(RuntimeNeed(CudaRelease(13, 2), "x"), l40s)
    assert verdict is not None and verdict[0]
    assert "minor version compatibility" in verdict[1] and "PTX" in verdict[1]


def test_an_unknown_driver_claims_nothing() -> None:
    need = RuntimeNeed(CudaRelease(13), "x")
    assert judge_runtime(need, DriverSide(None, None)) is None
    assert judge_runtime(need, DriverSide(None, "300.1")) is None  # older than every row
    assert cuda_supported_by_driver("not a version") is None


# --- real binaries: nvcc's, and gcc's against a cuBLAS-named library --------------------

KERNEL = "__global__ void k(float* x) { x[threadIdx.x] *= 2; }\nint main() { return 0; }\n"


def _nvcc(work: Path, name: str, *flags: str) -> Path:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: no real CUDA binary to judge")
    (work / "k.cu").write_text(KERNEL)
    subprocess.run(
        ["nvcc", *flags, "-o", str(work / name), str(work / "k.cu")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return work / name


@pytest.fixture(scope="module")
def shared_cudart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable that NEEDs libcudart.so.<major> (sm_90 cubin + PTX)."""
    return _nvcc(tmp_path_factory.mktemp("cudart"), "shared", "-arch=sm_90", "-cudart", "shared")


@pytest.fixture(scope="module")
def static_cudart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nvcc's default: cudart linked in statically, so no libcudart in DT_NEEDED."""
    return _nvcc(tmp_path_factory.mktemp("static"), "static", "-arch=sm_90")


def _nvcc_release() -> str:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"release ([0-9]+\.[0-9]+)", out.stdout)
    assert match is not None
    return match[1]


def preflight(xtask: Xtask, binary: Path, banner: str, query: str, **env: str) -> tuple[int, str]:
    run = xtask.run(
        "preflight", "--binary", str(binary),
        env=xtask.standin_env(
            XTASK_TEST_SMI_BANNER=str(GPU_FIXTURES / banner),
            XTASK_TEST_SMI_QUERY=str(GPU_FIXTURES / query), **env,
        ),
    )  # fmt: skip
    return run.code, run.stdout + run.stderr


def test_a_shared_cudart_build_on_an_old_driver_is_refused(
    xtask: Xtask, shared_cudart: Path
) -> None:
    major = _nvcc_release().split(".")[0]
    code, out = preflight(
        xtask, shared_cudart, "nvidia-smi_A100-SXM4-40GB_550.144.03.txt",
        f"nvidia-smi-query_{H100}.csv",
    )  # fmt: skip
    fits = int(major) <= 12
    assert code == (0 if fits else 1), out
    assert f"needs the CUDA {major}" in out and f"(DT_NEEDED libcudart.so.{major}" in out
    assert "runs CUDA 12.4 at most (reported by nvidia-smi)" in out


def test_nvml_s_cuda_version_is_what_the_driver_runs(
    xtask: Xtask, shared_cudart: Path, tmp_path: Path
) -> None:
    """NVML answers first where the driver ships it: the A100 recording's driver 550
    (CUDA 12.4) on an H100, through the NVML stand-in."""
    libdir = build_nvml_standin(
        tmp_path, 'NAME="NVIDIA H100 80GB HBM3"', 'DRIVER="550.144.03"', "CUDA=12040",
        "COUNT=1", "MEM_MIB=81559", "MAJOR=9", "MINOR=0", "MIG=0",
    )  # fmt: skip
    run = xtask.run("preflight", "--binary", str(shared_cudart),
                    env=xtask.env(LD_LIBRARY_PATH=str(libdir)))  # fmt: skip
    major = int(_nvcc_release().split(".")[0])
    assert run.code == (0 if major <= 12 else 1), run.stdout + run.stderr
    assert "driver 550.144.03 runs CUDA 12.4 at most (reported by nvml)" in run.stdout


def test_a_static_cudart_build_is_judged_by_its_compiler(xtask: Xtask, static_cudart: Path) -> None:
    facts = read_binary(static_cudart)
    assert not [n for n in facts.needed if n.startswith("libcudart")]
    release = _nvcc_release()
    assert facts.cuda is not None and facts.cuda.toolkit == release
    code, out = preflight(
        xtask, static_cudart, f"nvidia-smi_{H100}.txt", f"nvidia-smi-query_{H100}.csv"
    )
    assert f"needs the CUDA {release} runtime (no libcudart in DT_NEEDED: a static cudart" in out
    assert "runs CUDA 13.1 at most" in out
    assert code == (0 if int(release.split(".")[0]) <= 13 else 1), out


@pytest.fixture(scope="module")
def cublas_user(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A gcc-built program that NEEDs `libcublas.so.13` (RUNPATH $ORIGIN), and the real
    shared library of that name it was linked against, in a folder of its own."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    work = tmp_path_factory.mktemp("cublas")
    (work / "lib").mkdir()
    (work / "bin").mkdir()
    (work / "blas.c").write_text("int cublasCreate_v2(void) { return 0; }\n")
    (work / "main.c").write_text(
        "int cublasCreate_v2(void);\nint main(void) { return cublasCreate_v2(); }\n"
    )
    library = work / "lib" / "libcublas.so.13"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libcublas.so.13", "-o", str(library),
         str(work / "blas.c")], check=True, timeout=60,
    )  # fmt: skip
    program = work / "bin" / "uses-cublas"
    subprocess.run(
        ["gcc", "-o", str(program), str(work / "main.c"), str(library), "-Wl,-rpath,$ORIGIN"],
        check=True, timeout=60,
    )  # fmt: skip
    return program, library


def test_cublas_is_looked_for_where_the_loader_looks(
    xtask: Xtask, cublas_user: tuple[Path, Path]
) -> None:
    program, library = cublas_user
    assert read_binary(program).runpath == ("$ORIGIN",)
    if [row for row in LoaderPath.of_this_machine().cache if row[0] == library.name]:
        pytest.skip(f"this machine's ld.so.cache lists {library.name}: it is always found")
    run = xtask.run("preflight", "--binary", str(program), env=xtask.env(BITNET_GPU_FAKE="none"))
    assert run.code == 1
    assert "uses-cublas: libcublas.so.13 is not on the loader path" in run.stdout
    assert "pip install 'nvidia-cublas==13.*'" in run.stdout
    found = xtask.env(BITNET_GPU_FAKE="none", LD_LIBRARY_PATH=str(library.parent))
    run = xtask.run("preflight", "--binary", str(program), env=found)
    assert f"✓ uses-cublas: libcublas.so.13 is found (LD_LIBRARY_PATH: {library})" in run.stdout
    beside = program.parent / library.name
    try:
        beside.write_bytes(b"not an ELF file")  # ld.so passes over it, and so do we
        run = xtask.run(
            "preflight", "--binary", str(program), env=xtask.env(BITNET_GPU_FAKE="none")
        )
        assert "libcublas.so.13 is not on the loader path" in run.stdout
        shutil.copyfile(library, beside)
        run = xtask.run(
            "preflight", "--binary", str(program), env=xtask.env(BITNET_GPU_FAKE="none")
        )
        assert f"libcublas.so.13 is found (DT_RUNPATH: {beside})" in run.stdout
    finally:
        beside.unlink(missing_ok=True)


def test_before_cuda_11_the_soname_names_the_minor(tmp_path: Path) -> None:
    """A CUDA 10 build NEEDs libcudart.so.10.2: that binary needs 10.2, which a 10.1
    driver does not run."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / "rt.c").write_text("int cudaRuntimeGetVersion(int* v) { return *v = 0; }\n")
    (tmp_path / "main.c").write_text(
        "int cudaRuntimeGetVersion(int*);\n"
        "int main(void) { int v; return cudaRuntimeGetVersion(&v); }\n"
    )
    runtime = tmp_path / "libcudart.so.10.2"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcudart.so.10.2", "-o",
                    str(runtime), str(tmp_path / "rt.c")], check=True, timeout=60)  # fmt: skip
    program = tmp_path / "cuda10"
    subprocess.run(["gcc", "-o", str(program), str(tmp_path / "main.c"), str(runtime)],
                   check=True, timeout=60)  # fmt: skip
    need = runtime_need(read_binary(program))
    assert need == RuntimeNeed(CudaRelease(10, 2), "DT_NEEDED libcudart.so.10.2")
    verdict = judge_runtime(need, DriverSide(None, "418.40"))  # a 10.1 driver
    assert verdict is not None and not verdict[0]
    assert "update the driver to >= 440.33, or build with CUDA 10.1" in verdict[1]
    assert judge_runtime(need, _driver("nvidia-smi_TeslaP40_440.33.01.txt")) is not None


# --- fetch-cpp's side: nvcc's toolkit, cuBLAS, the driver library -----------------------


def _nvcc_or_skip() -> int:
    """nvcc's CUDA major; the test skips without nvcc."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    return int(_nvcc_release().split(".")[0])


def _installed_or_skip(toolkit: CudaToolkit) -> None:
    if not toolkit.cublas.source.startswith("PyPI's"):
        pytest.skip(f"cuBLAS is installed here ({toolkit.cublas.source}): wheels not looked at")


def test_this_machine_s_toolkit_is_found_as_nvcc_reports_it(tmp_path: Path) -> None:
    _nvcc_or_skip()
    try:
        toolkit = find_cuda_toolkit()
    except UsageError as exc:
        pytest.skip(f"no cuBLAS for this nvcc here: {exc.message}")
    assert toolkit.release.startswith(_nvcc_release() + ".")
    include_dirs, _ = toolkit_folders(toolkit.nvcc)
    assert any((d / "cuda_runtime.h").is_file() for d in include_dirs)
    flags = toolkit.cmake_flags(tmp_path)
    assert f"-DCUDA_cublas_LIBRARY={toolkit.cublas.library}" in flags
    assert toolkit.cublas.library.name.startswith("libcublas.so")
    assert "stubs" not in toolkit.cublas.library.parts
    assert ("-DGGML_CUDA_NO_VMM=ON" in flags) == (toolkit.driver_library is None)
    assert toolkit.to_receipt()["vmm"] == (toolkit.driver_library is not None)
    assert f"cuBLAS from {toolkit.cublas.source}" in toolkit.summary()
    assert ("without VMM" in toolkit.summary()) == (toolkit.driver_library is None)


def _wheel(root: Path, folder: str, major: int) -> Path:
    """A PyPI cuBLAS wheel's layout under `root/nvidia/<folder>/` (files, not libraries:
    the search goes by names, as CMake's does), with a header that must not be used."""
    wheel = root / "nvidia" / folder
    (wheel / "lib").mkdir(parents=True)
    (wheel / "include").mkdir()
    for header in ("cublas_v2.h", "cublasLt.h", "cuda_runtime.h"):
        (wheel / "include" / header).write_text("")
    for name in ("libcublas", "libcublasLt"):
        (wheel / "lib" / f"{name}.so.{major}").write_bytes(b"")
    return wheel


def test_without_cublas_it_says_what_is_missing_and_what_to_install(tmp_path: Path) -> None:
    major = _nvcc_or_skip()
    _wheel(tmp_path, "cublas", major - 1)  # only another major's wheel
    try:
        toolkit = find_cuda_toolkit(env={}, wheel_roots=[tmp_path / "nvidia"])
    except UsageError as exc:
        assert "no cuBLAS for nvcc" in exc.message and f"(CUDA {major}) in this" in exc.message
        assert "no libcublas.so with libcublasLt.so in /" in exc.message  # the folders
        assert "pip install" in (exc.hint or "") and "CUDAToolkit_ROOT" in (exc.hint or "")
    else:
        _installed_or_skip(toolkit)
        raise AssertionError(f"another major's wheel was used: {toolkit.cublas}")


def test_cublas_from_a_wheel_of_nvcc_s_major_is_handed_to_cmake(tmp_path: Path) -> None:
    major = _nvcc_or_skip()
    _wheel(tmp_path, "cublas", major - 1)  # another major's wheel: passed over
    wheel = _wheel(tmp_path, f"cu{major}", major)
    toolkit = find_cuda_toolkit(env={}, wheel_roots=[tmp_path / "nvidia"])
    _installed_or_skip(toolkit)
    assert toolkit.cublas.library == wheel / "lib" / f"libcublas.so.{major}"
    assert toolkit.cublas.source.startswith("PyPI's nvidia-cublas")
    build = tmp_path / "build dir"  # a space: the flag quotes it
    flags = toolkit.cmake_flags(build)
    assert f"-DCUDA_cublasLt_LIBRARY={wheel / 'lib' / f'libcublasLt.so.{major}'}" in flags
    assert f"-DCMAKE_CUDA_FLAGS_INIT=-I'{build / 'cublas-include'}'" in flags
    assert not [f for f in flags if f.startswith("-DCMAKE_CUDA_COMPILER")]  # CMake's own
    toolkit.link_headers(build)
    linked = {p.name: p.resolve() for p in (build / "cublas-include").iterdir()}
    assert linked == {  # only cuBLAS's: the wheel's cuda_runtime.h must not shadow nvcc's
        "cublas_v2.h": (wheel / "include" / "cublas_v2.h").resolve(),
        "cublasLt.h": (wheel / "include" / "cublasLt.h").resolve(),
    }


def test_cublas_and_the_driver_library_under_cudatoolkit_root(tmp_path: Path) -> None:
    """Where a Nix build's cuBLAS is (nixpkgs' libcublas, reached only through
    CUDAToolkit_ROOT): the real libraries, never the stubs nvcc.profile lists first."""
    _nvcc_or_skip()
    root = tmp_path / "libcublas"
    for folder in (root / "lib", root / "lib" / "stubs"):
        folder.mkdir(parents=True)
        for name in ("libcublas.so", "libcublasLt.so"):
            (folder / name).write_bytes(b"")
    (root / "lib" / "stubs" / "libcuda.so").write_bytes(b"")
    env = {"CUDAToolkit_ROOT": f"{tmp_path / 'elsewhere'};{root}"}
    toolkit = find_cuda_toolkit(env=env, wheel_roots=[])
    if toolkit.cublas.library.parent != root / "lib":
        pytest.skip(f"cuBLAS is installed here ({toolkit.cublas.source}): found first")
    assert toolkit.cublas.source == f"the CUDA toolkit ({root / 'lib'})"
    if toolkit.driver_library == root / "lib" / "stubs" / "libcuda.so":
        assert f"-DCUDA_cuda_driver_LIBRARY={toolkit.driver_library}" in toolkit.cmake_flags(
            tmp_path
        )


def test_cudacxx_is_read_as_cmake_reads_it(tmp_path: Path) -> None:
    _nvcc_or_skip()
    with pytest.raises(UsageError, match=r"missing nvcc \(the CUDA toolkit\)"):
        find_cuda_toolkit(env={"CUDACXX": str(tmp_path / "no-nvcc")})
    with pytest.raises(UsageError, match="cannot be read as a command"):
        find_cuda_toolkit(env={"CUDACXX": "nvcc '-ccbin"})
    try:
        toolkit = find_cuda_toolkit(env={"CUDACXX": "nvcc -ccbin gcc"})
    except UsageError as exc:
        pytest.skip(f"no cuBLAS for this nvcc here: {exc.message}")
    assert toolkit.nvcc[1:] == ("-ccbin", "gcc")  # its arguments kept for the probes
    assert toolkit.to_receipt()["nvcc"].endswith("nvcc -ccbin gcc")


# --- XTASK_TEST_CUDA_BUILD=1: the pinned llama.cpp's CUDA backend, compiled here ------


@pytest.mark.timeout(3600)
def test_fetch_cpp_builds_the_cuda_backend_and_preflight_judges_it(
    request: pytest.FixtureRequest, xtask: Xtask, tmp_path: Path
) -> None:
    """`fetch-cpp --backend cuda --cuda-arch 90` on a machine with nvcc, cuBLAS from PyPI
    and no driver: it compiles, and preflight on the result says what each recorded
    machine would do with it."""
    if os.environ.get("XTASK_TEST_CUDA_BUILD") != "1":
        pytest.skip(
            "XTASK_TEST_CUDA_BUILD=1 compiles the pinned llama.cpp's CUDA backend "
            "(about 290 build steps: 1730 s on 2 cores here)"
        )
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    try:
        find_cuda_toolkit()
    except UsageError as exc:
        pytest.skip(f"{exc.message} ({exc.hint})")
    pin: SdistPin = request.getfixturevalue("local_pin")
    cuda_90 = BuildRequest(backend="cuda", cuda_archs=("90",))
    with cache_home(tmp_path):
        result = build_reference(cuda_90, pins={"llama.cpp": pin})
        again = build_reference(cuda_90, pins={"llama.cpp": pin})
    assert result.built and not again.built
    receipt = json.loads((result.directory / "receipt.json").read_text())
    cuda = receipt["cuda"]
    major = int(cuda["toolkit"].split(".")[0])
    assert cuda["runtime_major"] == major
    library = result.bin_dir / "libggml-cuda.so"  # a link to libggml-cuda.so.<version>
    evidence = cuda["runtime_evidence"][library.resolve().name]
    assert evidence == f"DT_NEEDED libcudart.so.{major}"
    flags = receipt["inputs"]["cmake_flags"]
    assert ("-DGGML_CUDA_NO_VMM=ON" in flags) == (not cuda["vmm"])
    facts = read_binary(library)
    assert facts.cuda is not None
    assert (facts.cuda.cubin_sms, facts.cuda.ptx_sms) == ((90,), (90,))
    assert f"libcublas.so.{major}" in facts.needed

    code, out = preflight(xtask, library, f"nvidia-smi_{H100}.txt", f"nvidia-smi-query_{H100}.csv")
    assert code == (0 if major <= 13 else 1), out
    assert f"libcublas.so.{major} is found (DT_RUNPATH: " in out
    assert "runs CUDA 13.1 at most" in out
    assert "compute capability 9.0): cubin for sm_90" in out

    code, out = preflight(
        xtask, library, "nvidia-smi_A100-SXM4-40GB_550.144.03.txt", f"nvidia-smi-query_{H100}.csv"
    )
    assert "runs CUDA 12.4 at most" in out
    assert code == (0 if major <= 12 else 1), out
    if major == 13:
        assert "update the driver to >= 580, or build with CUDA 12" in out

    code, out = preflight(
        xtask, library, "nvidia-smi_L40S_580.126.09.txt", "nvidia-smi-query_L40S_595.80.csv"
    )
    assert code == 1, out
    assert "compute capability 8.9): no kernels for this compute capability" in out
