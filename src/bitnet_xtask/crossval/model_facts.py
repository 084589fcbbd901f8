"""What crossval knows about a model before any backend runs it, from the file itself.

The GGUF header is always read (`gguf_file.GGUFFile`, bounded): a model that is not a
regular file, whose header is corrupt or whose tensors run past its end is refused
here (exit 2), before any backend runs. Architecture and quantization come from that
header, whoever wrote the file; gen-fixtures' JSON beside a fixture is recorded as the
model's metadata, not trusted for either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_xtask.crossval.gguf_file import GGUFFile
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fs import hash_file


@dataclass(frozen=True)
class ModelLimits:
    """What bounds the input a model takes, from its GGUF header (None: not stated)."""

    context_length: int | None
    longest_token_bytes: int | None


@dataclass(frozen=True)
class ModelFacts:
    """A model as the receipt describes it, and its input limits (not in the receipt)."""

    path: Path
    sha256: str
    size_bytes: int
    arch: str | None
    quant: str | None
    metadata: dict[str, Any] | None  # gen-fixtures' JSON beside the model, when there is one
    limits: ModelLimits

    @property
    def name(self) -> str:
        return self.path.name

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "arch": self.arch,
            "quant": self.quant,
            "metadata": self.metadata,
        }


def _sidecar(path: Path) -> dict[str, Any] | None:
    """gen-fixtures' metadata beside a model; anything else there (not a regular file,
    not JSON, too large or too deep) is not ours to read."""
    from bitnet_xtask.inputs import read_json

    try:
        loaded = read_json(path, what="model metadata")
    except UsageError:
        return None
    return loaded if isinstance(loaded, dict) else None


def inspect_model(model: Path) -> ModelFacts:
    """Path, sha256, size, architecture, quantization (`GGUFFile.quantization`), the
    metadata beside the model and its input limits."""
    reader = GGUFFile(model)
    arch = reader.metadata("general.architecture")
    return ModelFacts(
        path=model,
        sha256=hash_file(model),
        size_bytes=reader.size,
        arch=None if arch is None else str(arch),
        quant=reader.quantization(),
        metadata=_sidecar(model.with_suffix(".json")),
        limits=ModelLimits(reader.context_length(), reader.longest_token_bytes()),
    )
