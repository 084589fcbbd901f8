"""Where fetch-cpp puts a build, and the names that find it again: one rule, both ways.

Every build has its own directory under `$XDG_CACHE_HOME/bitnet_cpp/` (`cpp_cache_root`):

    <ref>-<rev>-<backend>[-native]/

`<ref>` is a pinned reference (`llama.cpp`, `bitnet.cpp`); `<rev>` the pin's short
revision (`pin_revision`), the `--rev`/`--tag` given, or `local` for a `--source` tree;
`<backend>` is `cpu` or `cuda`; `-native` marks `--native` (GGML_NATIVE=ON). Three readers
depend on the name: `cpp/build.py` builds there, crossval's `cpp:` specs find builds by it
(`parse_build_name`, used by `crossval/backends.py:find_build`), and
`nix/build-directory.nix` spells it for the Nix packages, which install what their
`fetch-cpp --source` build left there (tests/test_issue12_cpp.py evaluates that file
against `directory_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bitnet_xtask.cache import cpp_cache_root
from bitnet_xtask.cpp.pins import GithubPin, Pin

BACKENDS = ("cpu", "cuda")
#: The `<rev>` of a `--source` build: the tree's NAR hash, not its name, is its identity.
LOCAL = "local"
NATIVE = "-native"
#: Written last, only after a successful build: a directory without one holds no build.
RECEIPT = "receipt.json"
#: One builder per directory (`filelock.FileLock`); clean-cache takes it before removing one.
LOCK = ".lock"

_REV = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
#: A `--rev`/`--tag` fetch-cpp accepts, and so a `<rev>` in a directory name.
REVISION = re.compile(rf"^{_REV}$")
#: A git commit id, abbreviated (git's minimum is 4, its default 7) or full (40 hex).
COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")

_BACKEND = "|".join(BACKENDS)
#: After `<ref>`, a variant alone: `-cuda`, `-native`, `-cpu-native`, or nothing.
_VARIANT = re.compile(rf"^(?:-(?P<backend>{_BACKEND}))?(?P<native>{NATIVE})?$")
#: After `<ref>`, a whole directory name's tail: `-<rev>-<backend>[-native]`. A tag may hold
#: `-` (`b6000-rc1`), so `<rev>` is everything up to the last backend.
_EXACT = re.compile(rf"^-(?P<rev>{_REV})-(?P<backend>{_BACKEND})(?P<native>{NATIVE})?$")


def pin_revision(pin: Pin) -> str:
    """The `<rev>` of a pin's build: a GitHub commit's first 12 digits, or the upstream
    commit a PyPI sdist vendors (llama-cpp-python's `vendor/llama.cpp`), else its version."""
    return pin.rev[:12] if isinstance(pin, GithubPin) else pin.upstream.get("rev", pin.version)


def directory_name(ref: str, revision: str, backend: str, *, native: bool = False) -> str:
    """`<ref>-<rev>-<backend>[-native]`, the one spelling of a build directory's name."""
    return f"{ref}-{revision}-{backend}{NATIVE if native else ''}"


def build_directory(ref: str, revision: str, backend: str, *, native: bool = False) -> Path:
    """The build directory in the cache."""
    return cpp_cache_root() / directory_name(ref, revision, backend, native=native)


@dataclass(frozen=True)
class BuildName:
    """A build as a `cpp:` spec names it; `revision` None means "whichever build of this
    variant the cache has" (the pin's first, then the newest)."""

    ref: str
    backend: str = "cpu"
    native: bool = False
    revision: str | None = None

    @property
    def pattern(self) -> str:
        """The directory name, or a glob over every revision's when none was named."""
        return directory_name(self.ref, self.revision or "*", self.backend, native=self.native)

    def __str__(self) -> str:
        """`llama.cpp cpu-native` for a variant, the directory name for a named build."""
        if self.revision is not None:
            return self.pattern
        return f"{self.ref} {self.backend}{NATIVE if self.native else ''}"

    def fetch_command(self, pinned: str) -> str:
        """The fetch-cpp command line that builds this name, for "build it first" hints;
        `pinned` is the pin's own revision, which plain `fetch-cpp` builds."""
        argv = ["xtask fetch-cpp --ref", self.ref]
        if self.revision == LOCAL:
            argv.append("--source DIR")
        elif self.revision not in (None, pinned):
            flag = "--rev" if COMMIT.match(str(self.revision)) else "--tag"
            argv.append(f"{flag} {self.revision} --hash sha256-...=")
        if self.backend != "cpu":
            argv.append(f"--backend {self.backend}")
        if self.native:
            argv.append("--native")
        return " ".join(argv)


def parse_build_name(name: str, refs: Iterable[str]) -> BuildName | None:
    """What a `cpp:<name>` means, or None when it names no build fetch-cpp can make:
    `<ref>[-cpu|-cuda][-native]` (a variant) or a build directory's own name
    `<ref>-<rev>-<backend>[-native]` (exactly that build)."""
    for ref in sorted(refs, key=len, reverse=True):  # the longest first: no ref shadows one
        if name != ref and not name.startswith(f"{ref}-"):
            continue
        tail = name[len(ref) :]
        if variant := _VARIANT.match(tail):
            return BuildName(ref, variant["backend"] or "cpu", bool(variant["native"]))
        if exact := _EXACT.match(tail):
            return BuildName(ref, exact["backend"], bool(exact["native"]), exact["rev"])
    return None
