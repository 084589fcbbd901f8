"""ELF facts on real binaries: the system's, one gcc builds here, one nvcc builds here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GPU_FIXTURES, Xtask

from bitnet_xtask.errors import UsageError
from bitnet_xtask.gpu.elf import CudaCode, parse_fatbin, read_binary

KERNEL = """
__global__ void scale(float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
extern "C" void launch(float* x, float a, int n) { scale<<<(n + 255) / 256, 256>>>(x, a, n); }
"""


@pytest.fixture(scope="session")
def cuda_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CUDA shared library: cubin for sm_80, PTX for compute_90."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: no real CUDA object to inspect")
    work = tmp_path_factory.mktemp("cuda")
    (work / "k.cu").write_text(KERNEL)
    library = work / "libscale.so"
    subprocess.run(
        ["nvcc", "-shared", "-Xcompiler", "-fPIC", "-cudart", "shared",
         "-gencode", "arch=compute_80,code=sm_80",
         "-gencode", "arch=compute_90,code=compute_90",
         "-o", str(library), str(work / "k.cu")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return library


@pytest.fixture(scope="session")
def gcc_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    work = tmp_path_factory.mktemp("gcc")
    (work / "main.c").write_text(
        "#include <math.h>\nint ggml_backend_cpu_init(void) { return 0; }\n"
        "int main(int c, char** v) { return (int)sqrt((double)c) + ggml_backend_cpu_init(); }\n"
    )
    binary = work / "prog"
    subprocess.run(
        ["gcc", "-O1", "-o", str(binary), str(work / "main.c"), "-lm"], check=True, timeout=60
    )
    return binary


def test_cuda_library_lists_its_cubin_and_ptx_architectures(cuda_library: Path) -> None:
    facts = read_binary(cuda_library)
    assert facts.cuda is not None
    assert (facts.cuda.cubin_sms, facts.cuda.ptx_sms) == ((80,), (90,))
    # nvcc's banner in the device code names the release that compiled it
    version = subprocess.run(
        ["nvcc", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"release {facts.cuda.toolkit}," in version
    assert "cuda" in facts.backends
    assert any(lib.startswith("libcudart.so") for lib in facts.needed)
    assert facts.elf_class == 64 and facts.machine == "x64"


@pytest.mark.parametrize(
    ("sm", "runs", "how"),
    [(80, True, "cubin for sm_80"), (86, True, "cubin for sm_80"), (90, True, "PTX"),
     (120, True, "PTX"), (75, False, "no kernels"), (70, False, "no kernels")],
)  # fmt: skip
def test_which_gpus_the_cuda_library_can_run_on(
    cuda_library: Path, sm: int, runs: bool, how: str
) -> None:
    code = read_binary(cuda_library).cuda
    assert code is not None
    ok, reason = code.runs_on(sm)
    assert ok is runs and how in reason


def test_gcc_binary_and_system_library(gcc_binary: Path) -> None:
    facts = read_binary(gcc_binary)
    assert "libm.so.6" in facts.needed and "libc.so.6" in facts.needed
    assert facts.backends == ("cpu",)  # found by its ggml_backend_cpu_init symbol
    assert facts.cuda is None
    libc = read_binary(mapped_libc())
    assert libc.backends == () and libc.elf_class == 64


def mapped_libc() -> Path:
    """The C library this process runs on, wherever the system keeps it (Debian's
    /lib/<triplet>/, a Nix store path in the flake's sandbox)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("no /proc/self/maps here: cannot tell which libc this process maps")
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        # libc.so.6 itself (glibc >= 2.34), or the libc-2.31.so it used to link to
        if len(fields) == 6 and re.fullmatch(r"libc(\.so\.\d+|-[\d.]+\.so)", Path(fields[5]).name):
            return Path(fields[5])
    pytest.skip("this process maps no glibc libc.so (a static or musl Python)")


def test_fatbin_parser_survives_padding_and_truncation(cuda_library: Path) -> None:
    from elftools.elf.elffile import ELFFile

    with cuda_library.open("rb") as handle:
        section = ELFFile(handle).get_section_by_name(".nv_fatbin")
        assert section is not None
        data = section.data()
    whole = parse_fatbin(data)
    assert parse_fatbin(bytes(24) + data + bytes(40)) == whole
    for cut in (3, 17, len(data) // 3, len(data) - 5):
        parse_fatbin(data[:cut])  # a damaged section must not raise
    assert parse_fatbin(b"") == CudaCode()


@pytest.mark.parametrize("kind", ["truncated", "random", "text", "empty", "directory", "missing"])
def test_bad_files_get_a_clear_usage_error(tmp_path: Path, gcc_binary: Path, kind: str) -> None:
    path = tmp_path / kind
    if kind == "truncated":
        path.write_bytes(gcc_binary.read_bytes()[:300])
    elif kind == "random":
        path.write_bytes(b"\x7fELF" + os.urandom(2000))
    elif kind == "text":
        path.write_text("#!/bin/sh\necho hi\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(UsageError) as err:
        read_binary(path)
    assert str(path) in err.value.message


def test_preflight_cli_reports_elf_facts_as_json(xtask: Xtask, cuda_library: Path) -> None:
    import json

    run = xtask.run(
        "preflight", "--binary", str(cuda_library), "--format", "json",
        env=xtask.env(BITNET_GPU_FAKE="none"),
    )  # fmt: skip
    report = json.loads(run.stdout)
    (binary,) = report["compiled"]["binaries"]
    assert {k: binary["cuda"][k] for k in ("cubin_sms", "ptx_sms")} == {
        "cubin_sms": [80],
        "ptx_sms": [90],
    }
    assert report["ok"] is False and run.code == 1  # a CUDA build, and no CUDA here
    assert "no cuda runtime here" in report["fit"][0]["message"]


def test_preflight_cli_rejects_a_non_elf_binary(xtask: Xtask, tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + bytes(100))
    run = xtask.run("preflight", "--binary", str(bogus))
    assert run.code == 2 and "not a readable ELF binary" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("gpu", "capability", "fits", "how"),
    [
        ("RTX2080SUPER_610.57.04", "7.5", False, "no kernels for this compute capability"),
        ("H100-80GB-HBM3_590.48.01", "9.0", True, "PTX for compute_90 (JIT)"),
    ],
)
def test_preflight_fit_of_a_cuda_build_on_recorded_gpus(
    xtask: Xtask, cuda_library: Path, gpu: str, capability: str, fits: bool, how: str
) -> None:
    """The message users otherwise get at the first launch, before the run."""
    env = xtask.standin_env(
        XTASK_TEST_SMI_BANNER=str(GPU_FIXTURES / f"nvidia-smi_{gpu}.txt"),
        XTASK_TEST_SMI_QUERY=str(GPU_FIXTURES / f"nvidia-smi-query_{gpu}.csv"),
    )
    run = xtask.run("preflight", "--binary", str(cuda_library.parent), env=env)
    assert run.code == (0 if fits else 1), run.stdout + run.stderr
    assert f"compute capability {capability}): {how}" in run.stdout
    assert "Compiled: GPU ✓ (cuda), CPU ✓" in run.stdout
