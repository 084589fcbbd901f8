"""`models verify`: is every file on disk the bytes the catalog (or the lock) pins?

Every file is read and hashed again, never taken from the sha256 cache: verification
is the check a cache could only assume (a flipped bit keeps the size and the mtime).
The expected bytes are the catalog's pins, else what the lock recorded for the same
request; a file pinned by neither is reported `unpinned`, and checked for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bitnet_xtask.errors import CheckFailedError, HashMismatchError
from bitnet_xtask.fs import hash_file

from .catalog import Catalog, CatalogFile, ModelEntry
from .lock import LockedModel, Lockfile

Status = Literal["ok", "mismatch", "missing", "unpinned"]


@dataclass(frozen=True)
class FileCheck:
    """One file (or archive member) against its pin."""

    model: str
    path: Path
    status: Status
    expected_size: int | None
    expected_sha256: str | None
    size: int | None = None
    sha256: str | None = None

    @property
    def problem(self) -> str | None:
        """What is wrong, in words (None when nothing is)."""
        if self.status == "missing":
            return f"{self.path}: missing"
        if self.status != "mismatch":
            return None
        if self.expected_size is not None and self.size != self.expected_size:
            return f"{self.path}: {self.size:,} bytes, expected {self.expected_size:,}"
        return f"{self.path}: sha256 {self.sha256}, expected {self.expected_sha256}"


@dataclass(frozen=True)
class Verification:
    checks: tuple[FileCheck, ...]
    named: bool  # the models were named: every file of each must be here

    @property
    def ok(self) -> bool:
        """Nothing differs, and (for named models) nothing is missing."""
        failing = ("mismatch", "missing") if self.named else ("mismatch",)
        return not any(c.status in failing for c in self.checks)

    def raise_for_problems(self) -> None:
        """Exit 13 naming every file whose bytes differ; else exit 1 for a named model's
        missing files (without names, a partly fetched model's missing files are listed,
        not failed: `models fetch` resumes them)."""
        wrong = [c.problem for c in self.checks if c.status == "mismatch"]
        missing = [c.problem for c in self.checks if c.status == "missing" and self.named]
        if wrong:
            raise HashMismatchError(
                f"{len(wrong)} file(s) differ from their pins: " + "; ".join(map(str, wrong)),
                "fetch them again: xtask models fetch NAME (a file that is not its pin is "
                "downloaded afresh, and replaced only once the new bytes verify)",
            )
        if missing:
            raise CheckFailedError(
                f"{len(missing)} file(s) of the named models are not here: "
                + "; ".join(map(str, missing)),
                "fetch them: xtask models fetch NAME",
            )


def verify_models(
    catalog: Catalog, lock: Lockfile, models_dir: Path, names: tuple[str, ...] = ()
) -> Verification:
    """Check the named models (each file must be here), or every catalog model that has
    a file on disk."""
    entries = catalog.select(names)
    checks: list[FileCheck] = []
    for entry in entries:
        found = list(_checks(entry, lock.models.get(entry.name), models_dir))
        if names or any(check.status != "missing" for check in found):
            checks.extend(found)
    return Verification(tuple(checks), named=bool(names))


def _checks(entry: ModelEntry, held: LockedModel | None, models_dir: Path) -> Iterator[FileCheck]:
    usable = held if held is not None and held.drift(entry) is None else None
    for file in entry.files:
        size, sha256 = _pin(file, usable)
        yield _check(entry.name, entry.local_path(models_dir, file), size, sha256)
        if file.archive is None:
            continue
        locked = usable.file(file.path) if usable is not None else None
        members = file.contents or (locked.contents if locked is not None else ())
        unpacked = entry.unpacked_dir(models_dir, file)
        for member in members:
            yield _check(entry.name, unpacked / member.path, member.size, member.sha256)


def _pin(file: CatalogFile, held: LockedModel | None) -> tuple[int | None, str | None]:
    """The catalog's pins, completed by the lock's record of the same request."""
    locked = held.file(file.path) if held is not None else None
    if locked is None:
        return file.size, file.sha256
    return (
        file.size if file.size is not None else locked.size,
        file.sha256 if file.sha256 is not None else locked.sha256,
    )


def _check(model: str, path: Path, size: int | None, sha256: str | None) -> FileCheck:
    try:
        actual = path.stat().st_size if path.is_file() else None
    except OSError:
        actual = None
    if actual is None:
        return FileCheck(model, path, "missing", size, sha256)
    if size is None and sha256 is None:
        return FileCheck(model, path, "unpinned", None, None, actual)
    if size is not None and actual != size:
        return FileCheck(model, path, "mismatch", size, sha256, actual)
    digest = hash_file(path)
    status: Status = "ok" if sha256 is None or digest == sha256 else "mismatch"
    return FileCheck(model, path, status, size, sha256, actual, digest)
