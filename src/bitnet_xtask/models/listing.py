"""`models list`: the catalog, and which of its files are on disk (by size: no hashing,
so listing a 100 GB folder is instant; `models verify` reads the bytes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .catalog import Catalog, ModelEntry

Presence = Literal["present", "partial", "absent"]


@dataclass(frozen=True)
class ListedModel:
    entry: ModelEntry
    files_present: int
    size: int | None  # every file's size summed, when the catalog pins them all

    @property
    def presence(self) -> Presence:
        if self.files_present == len(self.entry.files):
            return "present"
        return "partial" if self.files_present else "absent"


def list_models(catalog: Catalog, models_dir: Path) -> list[ListedModel]:
    """Every catalog entry, sorted by name, with how many of its files are here."""
    return [_listed(catalog.entries[name], models_dir) for name in sorted(catalog.entries)]


def _listed(entry: ModelEntry, models_dir: Path) -> ListedModel:
    present = sum(
        1 for file in entry.files if _has_size(entry.local_path(models_dir, file), file.size)
    )
    sizes = [file.size for file in entry.files]
    total = None if any(size is None for size in sizes) else sum(s for s in sizes if s is not None)
    return ListedModel(entry, present, total)


def _has_size(path: Path, size: int | None) -> bool:
    """A file is here when it exists with the pinned size (any size when none is pinned)."""
    try:
        return path.is_file() and (size is None or path.stat().st_size == size)
    except OSError:
        return False
