"""Where the dynamic loader would find a binary's libraries, without loading them.

A CUDA build whose `libcublas.so.13` is not on the loader path fails before its first
line of code ("error while loading shared libraries"), so preflight asks the question
ld.so would, in ld.so's order (ld.so(8), "Rules"): the binary's DT_RPATH (only when it
has no DT_RUNPATH), LD_LIBRARY_PATH, its DT_RUNPATH, the ld.so.cache (`ldconfig -p`),
then the default folders. `$ORIGIN` is the binary's own folder (`$LIB` and
`$PLATFORM` are left as written, and a DT_RPATH inherited from the executable that loads
a library is not known here). A file of another ELF class or machine is passed over, as
ld.so passes it over.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from bitnet_xtask.gpu.probe import run_tool

_ORIGIN = re.compile(r"\$(ORIGIN\b|\{ORIGIN\})")
# `ldconfig -p`: "\tlibcudart.so.13 (libc6,x86-64) => /usr/local/cuda/lib/libcudart.so.13"
_CACHE_LINE = re.compile(r"^\s+(\S+)\s+\(([^)]*)\)\s+=>\s+(\S.*)$")
# e_machine values of the ELF gABI, by pyelftools' names for them.
_E_MACHINE = {"x64": 62, "AArch64": 183, "x86": 3, "ARM": 40, "RISC-V": 243, "64-bit PowerPC": 21}
_DEFAULT_DIRS = {64: ("/lib64", "/usr/lib64", "/lib", "/usr/lib"), 32: ("/lib", "/usr/lib")}
LDCONFIG_TIMEOUT = 5.0


@dataclass(frozen=True)
class Found:
    """A library the loader would load, and which rule found it."""

    path: Path
    rule: str  # "DT_RUNPATH", "LD_LIBRARY_PATH", "ld.so.cache", ...


@dataclass(frozen=True)
class LoaderPath:
    """The machine's side of the search: LD_LIBRARY_PATH, and the ld.so.cache, read the
    first time a name gets that far (a binary with no CUDA library never runs ldconfig)."""

    library_path: tuple[str, ...]

    @classmethod
    def of_this_machine(cls, env: Mapping[str, str] | None = None) -> LoaderPath:
        """This process's LD_LIBRARY_PATH and this machine's ld.so.cache."""
        env = os.environ if env is None else env
        return cls(tuple(d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d))

    @staticmethod
    def rules(elf_class: int) -> tuple[str, ...]:
        """The places searched, in order, as findings name them."""
        return ("DT_RPATH", "LD_LIBRARY_PATH", "DT_RUNPATH", "ld.so.cache",
                *_DEFAULT_DIRS.get(elf_class, ()))  # fmt: skip

    @cached_property
    def cache(self) -> tuple[tuple[str, str, str], ...]:
        """(name, flags, path) rows of `ldconfig -p`; none where it cannot run."""
        return _read_cache()

    def find(
        self, name: str, *, origin: Path, elf_class: int, machine: str,
        rpath: tuple[str, ...] = (), runpath: tuple[str, ...] = (),
    ) -> Found | None:  # fmt: skip
        """Where ld.so would find `name` (a DT_NEEDED entry) for a binary in `origin`."""
        for path, rule in self._candidates(name, origin, elf_class, machine, rpath, runpath):
            if _loadable(path, elf_class, machine):
                return Found(path, rule)
        return None

    def _candidates(
        self, name: str, origin: Path, elf_class: int, machine: str,
        rpath: tuple[str, ...], runpath: tuple[str, ...],
    ) -> Iterator[tuple[Path, str]]:  # fmt: skip
        """Every file ld.so would try for `name`, in its order, with the rule's name."""
        if "/" in name:  # ld.so takes it as a path, relative to the working directory
            yield Path(name).absolute(), "a path"
            return
        searches = [] if runpath else [("DT_RPATH", rpath)]
        searches += [("LD_LIBRARY_PATH", self.library_path), ("DT_RUNPATH", runpath)]
        for rule, folders in searches:
            for folder in folders:
                yield Path(_ORIGIN.sub(lambda _: str(origin), folder)) / name, rule
        for cached, flags, target in self.cache:
            if cached == name and _cache_fits(flags, machine):
                yield Path(target), "ld.so.cache"
        for folder in _DEFAULT_DIRS.get(elf_class, ()):
            yield Path(folder) / name, "default folders"


def _read_cache() -> tuple[tuple[str, str, str], ...]:
    ldconfig = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.access(p, os.X_OK)), None
    )
    if ldconfig is None:
        return ()
    output = run_tool([ldconfig, "-p"], LDCONFIG_TIMEOUT)
    rows = (_CACHE_LINE.match(line) for line in (output.stdout or "").splitlines())
    return tuple((m[1], m[2], m[3].strip()) for m in rows if m)


def _cache_fits(flags: str, machine: str) -> bool:
    """`(libc6,x86-64)` is a 64-bit x86 entry, `(libc6,AArch64)` an arm64 one; plain
    `(libc6)` a 32-bit one on those machines (elsewhere the file itself is checked)."""
    if machine == "x64":
        return "x86-64" in flags
    if machine == "AArch64":
        return "AArch64" in flags
    if machine == "64-bit PowerPC":
        return "64bit" in flags
    return True


def _loadable(path: Path, elf_class: int, machine: str) -> bool:
    """An ELF file of the binary's class and machine, as ld.so requires."""
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return False
    if {1: 32, 2: 64}.get(header[4]) != elf_class:
        return False
    wanted = _E_MACHINE.get(machine)
    e_machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return wanted is None or e_machine == wanted
