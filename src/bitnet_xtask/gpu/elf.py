"""What a built binary was compiled for, read from its ELF file (pyelftools).

A CUDA build that lacks kernels for the GPU it runs on fails only at the first launch
("no kernel image is available for execution on the device"). The answer is in the
file already: `.nv_fatbin` holds one cubin per real SM architecture and optional PTX
that the driver can JIT for newer ones. We read those, plus `DT_NEEDED` (which runtime
libraries it loads) and the ggml backends compiled in, so preflight can say so first.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from bitnet_xtask import fs
from bitnet_xtask.errors import UsageError, XtaskError

FATBIN_MAGIC = 0xBA55ED50
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, payload size
_ENTRY_HEADER = struct.Struct("<HHIQIIHHI")  # kind, flags, hdr size, size, csize, ?, ver, arch
_KIND_PTX, _KIND_CUBIN = 1, 2
# nvcc writes its banner into the device code it compiles (the PTX header, the cubin's
# .note.nv.tkinfo): readable where the fat binary is not compressed.
_NVCC_BANNER = re.compile(rb"Cuda compilation tools, release ([0-9]+\.[0-9]+)")

# Libraries and symbols that name a ggml backend.
_BACKEND_LIBS = {
    "libcudart": "cuda",
    "libcublas": "cuda",
    "libggml-cuda": "cuda",
    "libamdhip64": "hip",
    "libhipblas": "hip",
    "librocblas": "hip",
    "libggml-hip": "hip",
    "libvulkan": "vulkan",
    "libggml-vulkan": "vulkan",
    "libggml-metal": "metal",
    "libggml-blas": "blas",
    "libopenblas": "blas",
    "libggml-cpu": "cpu",
}
_BACKEND_SYMBOLS = {
    "ggml_backend_cuda_init": "cuda",
    "ggml_backend_vk_init": "vulkan",
    "ggml_backend_metal_init": "metal",
    "ggml_backend_blas_init": "blas",
    "ggml_backend_cpu_init": "cpu",
    "ggml_backend_sycl_init": "sycl",
}


@dataclass(frozen=True)
class CudaCode:
    """Device code embedded in `.nv_fatbin`: real cubins and JIT-able PTX, by SM number."""

    cubin_sms: tuple[int, ...] = ()
    ptx_sms: tuple[int, ...] = ()
    toolkit: str | None = None  # the CUDA release whose nvcc compiled it ("13.0")

    def runs_on(self, sm: int) -> tuple[bool, str]:
        """Can a GPU of compute capability `sm` (e.g. 90) run this code, and how?

        A cubin runs on its own major architecture at an equal or newer minor version;
        PTX is JIT-compiled by the driver for any equal or newer architecture.
        """
        if any(c // 10 == sm // 10 and c <= sm for c in self.cubin_sms):
            return True, f"cubin for sm_{max(c for c in self.cubin_sms if c // 10 == sm // 10)}"
        if any(p <= sm for p in self.ptx_sms):
            return True, f"PTX for compute_{max(p for p in self.ptx_sms if p <= sm)} (JIT)"
        return False, "no kernels for this compute capability and no PTX to JIT"


@dataclass(frozen=True)
class BinaryFacts:
    """What one ELF file says about how it was built."""

    path: Path
    elf_class: int
    machine: str
    needed: tuple[str, ...]
    backends: tuple[str, ...]
    cuda: CudaCode | None = None
    notes: tuple[str, ...] = field(default=())
    rpath: tuple[str, ...] = ()  # DT_RPATH folders, as written ($ORIGIN unexpanded)
    runpath: tuple[str, ...] = ()  # DT_RUNPATH folders

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "class": f"ELF{self.elf_class}",
            "machine": self.machine,
            "needed": list(self.needed),
            "backends": list(self.backends),
            "cuda": None
            if self.cuda is None
            else {
                "cubin_sms": list(self.cuda.cubin_sms),
                "ptx_sms": list(self.cuda.ptx_sms),
                "toolkit": self.cuda.toolkit,
            },
            "notes": list(self.notes),
            "rpath": list(self.rpath),
            "runpath": list(self.runpath),
        }


def parse_fatbin(data: bytes) -> CudaCode:
    """Walk the fat binary containers in `.nv_fatbin` and list their architectures."""
    cubins: set[int] = set()
    ptx: set[int] = set()
    pos = 0
    while pos + _FATBIN_HEADER.size <= len(data):
        magic, _version, header_size, payload_size = _FATBIN_HEADER.unpack_from(data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # containers are 8-byte aligned; skip padding
            continue
        if header_size < _FATBIN_HEADER.size:
            break  # a header that claims no room for itself: stop, never loop in place
        entry = pos + header_size
        end = min(entry + payload_size, len(data))
        while entry + _ENTRY_HEADER.size <= end:
            kind, _flags, entry_header, size, *_rest, arch = _ENTRY_HEADER.unpack_from(data, entry)
            if entry_header < _ENTRY_HEADER.size:
                break
            if kind == _KIND_CUBIN:
                cubins.add(arch)
            elif kind == _KIND_PTX:
                ptx.add(arch)
            entry += entry_header + size
        pos += header_size + payload_size
    banner = _NVCC_BANNER.search(data)
    toolkit = banner[1].decode() if banner else None
    return CudaCode(tuple(sorted(cubins)), tuple(sorted(ptx)), toolkit)


def _library_stem(name: str) -> str:
    return name.split(".so", 1)[0]


def open_binary(path: Path) -> IO[bytes]:
    """`path` opened for reading if it is a regular file (after links: `fs.open_regular`),
    else a `UsageError` in a binary's words."""
    try:
        fd = fs.open_regular(path, follow_links=True)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except fs.NotRegularFileError as exc:
        raise UsageError(
            f"{path} is {exc.kind}, not a binary",
            "point --binary at a built executable, shared library or build directory",
        ) from None
    except XtaskError as exc:
        raise UsageError(
            f"cannot read {path}: {fs.os_reason(exc)}", "check its permissions, or leave it out"
        ) from None
    return os.fdopen(fd, "rb")


def check_layout(elf: ELFFile, size: int) -> None:
    """Every table and every section or segment the header promises lies inside the file.

    pyelftools reads the tables lazily, so a program-header offset of 2**60 goes unnoticed
    unless something asks for a segment; the kernel would refuse to load such a file
    (ELF gABI: e_phoff/e_shoff are file offsets, each table e_*num entries of
    e_*entsize bytes), so it must not be reported as a binary that fits.
    """
    header = elf.header

    def inside(offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > size:
            raise ELFError(
                f"{what} at offset {offset:,} (+{length:,} bytes) lies outside the "
                f"{size:,}-byte file"
            )

    segments = elf.num_segments()
    if segments:
        if header["e_phentsize"] != elf.structs.Elf_Phdr.sizeof():
            raise ELFError(f"program header entries of {header['e_phentsize']} bytes")
        inside(header["e_phoff"], segments * header["e_phentsize"], "the program header table")
    sections = elf.num_sections()
    if sections:
        inside(header["e_shoff"], sections * header["e_shentsize"], "the section header table")
    for index, segment in enumerate(elf.iter_segments()):
        inside(segment["p_offset"], segment["p_filesz"], f"segment {index}")
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOBITS":
            inside(section["sh_offset"], section["sh_size"], f"section {section.name!r}")


def read_binary(path: Path) -> BinaryFacts:
    """Read the facts of one ELF file; a clear `UsageError` for anything else (not a
    regular file, unreadable, not ELF, or an ELF whose tables point outside the file)."""
    try:
        with open_binary(path) as handle:
            elf = ELFFile(handle)
            check_layout(elf, os.fstat(handle.fileno()).st_size)
            needed: list[str] = []
            paths: dict[str, list[str]] = {"DT_RPATH": [], "DT_RUNPATH": []}
            symbols: set[str] = set()
            cuda: CudaCode | None = None
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    # pyelftools sets `needed` on DT_NEEDED tags at run time.
                    needed += [tag.needed for tag in section.iter_tags("DT_NEEDED")]  # type: ignore[attr-defined]
                    for kind, folders in paths.items():
                        for tag in section.iter_tags(kind):
                            text = tag.rpath if kind == "DT_RPATH" else tag.runpath  # type: ignore[attr-defined]
                            folders += [f for f in text.split(":") if f]
                if isinstance(section, SymbolTableSection):
                    symbols.update(
                        s.name for s in section.iter_symbols() if s.name in _BACKEND_SYMBOLS
                    )
                if section.name == ".nv_fatbin":
                    cuda = parse_fatbin(section.data())
            facts = (elf.elfclass, elf.get_machine_arch())
    except (ELFError, struct.error, ValueError, OverflowError, OSError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        raise UsageError(
            f"{path} is not a readable ELF binary ({detail})",
            "point --binary at a built executable or shared library",
        ) from None
    backends = {
        backend
        for lib in needed
        for prefix, backend in _BACKEND_LIBS.items()
        if _library_stem(lib).startswith(prefix)
    }
    backends |= {_BACKEND_SYMBOLS[s] for s in symbols}
    if cuda is not None and (cuda.cubin_sms or cuda.ptx_sms):
        backends.add("cuda")
    notes = []
    if cuda is not None and not cuda.cubin_sms and not cuda.ptx_sms:
        notes.append(".nv_fatbin present but no device code found in it")
    return BinaryFacts(
        path=path,
        elf_class=facts[0],
        machine=facts[1],
        needed=tuple(needed),
        backends=tuple(sorted(backends)),
        cuda=cuda,
        notes=tuple(notes),
        rpath=tuple(paths["DT_RPATH"]),
        runpath=tuple(paths["DT_RUNPATH"]),
    )
