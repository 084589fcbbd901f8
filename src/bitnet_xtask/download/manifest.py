"""`--manifest FILE`: many files of one repository in one run.

Two forms, picked by the first non-blank character:
- text: one file per line, `path [sha256]`; blank lines and `#` comments are skipped;
- JSON (`[` or `{`): a list of `{"file": "path", "sha256": "hex"}` objects (`sha256`
  optional, no other keys: a misspelt `"sha"` would silently skip the verification).

The file is read through `bitnet_xtask.inputs`: a FIFO or device (`/dev/zero`) is refused
before it is read, the size is bounded, and text that is not UTF-8 or JSON nested too
deeply is a usage error (exit 2), like every other problem here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bitnet_xtask.errors import UsageError
from bitnet_xtask.inputs import parse_json, read_text

from .options import FileSpec

JSON_HINT = 'expected a list like [{"file": "model.gguf", "sha256": "<64 hex digits>"}]'
_KEYS = frozenset({"file", "sha256"})


def read_manifest(path: Path) -> list[FileSpec]:
    """Parse a manifest; every problem names the file and the line (or entry)."""
    text = read_text(path, what="manifest")
    if text.lstrip().startswith(("[", "{")):
        specs = _from_json(path, text)
    else:
        specs = _from_text(path, text)
    if not specs:
        raise UsageError(f"manifest {path} lists no files")
    return specs


def _from_text(path: Path, text: str) -> list[FileSpec]:
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
    return specs


def _from_json(path: Path, text: str) -> list[FileSpec]:
    data = parse_json(text, what=f"manifest {path}")
    if not isinstance(data, list):
        raise UsageError(
            f"{path}: invalid JSON manifest: a JSON {_kind(data)}, not a list of files",
            JSON_HINT,
        )
    return [_entry(path, index, entry) for index, entry in enumerate(data)]


def _entry(path: Path, index: int, entry: Any) -> FileSpec:
    where = f"{path}: invalid JSON manifest: entry {index}"
    if not isinstance(entry, dict):
        raise UsageError(f"{where} is a JSON {_kind(entry)}, not an object", JSON_HINT)
    if unknown := sorted(set(entry) - _KEYS):
        raise UsageError(f"{where} has unknown keys {unknown}", JSON_HINT)
    name, sha256 = entry.get("file"), entry.get("sha256")
    if not isinstance(name, str) or not name:
        raise UsageError(f'{where}: "file" must be a non-empty string, got {name!r}', JSON_HINT)
    if sha256 is not None and not isinstance(sha256, str):
        raise UsageError(f'{where}: "sha256" must be a string, got {sha256!r}', JSON_HINT)
    try:
        return FileSpec(name, sha256)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}", exc.hint) from None


def _kind(value: Any) -> str:
    """A JSON value's kind, in JSON's words."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (dict, "object"), (list, "list"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "number"
