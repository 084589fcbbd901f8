"""`--manifest FILE`: many files of one repository in one run.

Two forms, picked by the first non-blank character:
- text: one file per line, `path [sha256]`; blank lines and `#` comments are skipped;
- JSON: a list of `{"file": "path", "sha256": "hex"}` objects (`sha256` optional).
"""

from __future__ import annotations

import json
from pathlib import Path

from bitnet_xtask.errors import UsageError

from .api import FileSpec


def read_manifest(path: Path) -> list[FileSpec]:
    """Parse a manifest; every problem names the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror}") from None
    if text.lstrip().startswith("["):
        return _from_json(path, text)
    specs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) > 2:
            raise UsageError(f"{path}:{number}: expected `path [sha256]`, got {raw.strip()!r}")
        try:
            specs.append(FileSpec(fields[0], fields[1] if len(fields) == 2 else None))
        except UsageError as exc:
            raise UsageError(f"{path}:{number}: {exc.message}") from None
    if not specs:
        raise UsageError(f"manifest {path} lists no files")
    return specs


def _from_json(path: Path, text: str) -> list[FileSpec]:
    try:
        entries = json.loads(text)
        specs = [FileSpec(str(e["file"]), e.get("sha256")) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"{path}: invalid JSON manifest ({exc})",
            'expected [{"file": "model.gguf", "sha256": "..."}]',
        ) from None
    if not specs:
        raise UsageError(f"manifest {path} lists no files")
    return specs
