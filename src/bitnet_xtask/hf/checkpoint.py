"""What a Hugging Face checkpoint directory is, read with json alone (no torch).

A checkpoint is a directory with `config.json` and its weights: `model.safetensors`, or
the shards `model.safetensors.index.json` lists (transformers' own order:
`modeling_utils.py` looks for the single file first). Only safetensors are read: a
pickled `pytorch_model.bin` runs code when it is loaded. Its family is what transformers
would build from `model_type` (`AutoModelForCausalLM` dispatches on it); only the
families bitnet-xtask knows how to compare are accepted. Every problem is a usage error
(exit 2) that names the directory and the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_xtask import fs
from bitnet_xtask.errors import UsageError
from bitnet_xtask.inputs import read_json

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: The tokenizer files transformers reads, hashed into the identity when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json")  # fmt: skip
#: model_type -> the transformers class of each supported family.
FAMILIES = {"llama": "LlamaForCausalLM", "bitnet": "BitNetForCausalLM"}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory, checked: its config, family and weights files."""

    directory: Path
    config: dict[str, Any]
    family: str  # a key of FAMILIES
    weights: tuple[Path, ...]  # the safetensors files, in the index's order of names
    index: Path | None  # model.safetensors.index.json, when the weights are sharded

    @property
    def quantization(self) -> dict[str, Any] | None:
        """The quantization settings the config declares (`quantization_config`)."""
        declared = self.config.get("quantization_config")
        return declared if isinstance(declared, dict) else None

    @property
    def dtype(self) -> str | None:
        """The dtype the config declares (`dtype`; `torch_dtype` before transformers 5)."""
        declared = self.config.get("dtype", self.config.get("torch_dtype"))
        return declared if isinstance(declared, str) else None

    def files(self) -> tuple[Path, ...]:
        """Every file the checkpoint is made of: config, index, weights, tokenizer."""
        tokenizer = (self.directory / name for name in TOKENIZER_FILES)
        index = () if self.index is None else (self.index,)
        return (self.directory / CONFIG, *index, *self.weights,
                *(path for path in tokenizer if path.is_file()))  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """What the checkpoint is, for a receipt: the sha256 of each of its files (by
        name), its family, and the dtype and quantization it declares."""
        return {
            "family": self.family,
            "model_type": self.config.get("model_type"),
            "architectures": self.config.get("architectures"),
            "sha256": {path.name: _hash(path) for path in self.files()},
            "dtype": self.dtype,
            "quantization": self.quantization,
        }


def _hash(path: Path) -> str:
    try:
        return fs.hash_file(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _family(config: dict[str, Any], path: Path) -> str:
    model_type, architectures = config.get("model_type"), config.get("architectures")
    family = model_type if isinstance(model_type, str) else None
    named = architectures if isinstance(architectures, list) else []
    if family not in FAMILIES or (named and FAMILIES[family] not in named):
        supported = ", ".join(f"{kind} ({cls})" for kind, cls in FAMILIES.items())
        raise UsageError(
            f"{path}: unsupported model family (model_type {model_type!r}, "
            f"architectures {architectures!r})",
            f"supported families: {supported}",
        )
    return family


def shard_names(index: Path) -> list[str]:
    """The shard files a `model.safetensors.index.json` names in its `weight_map`, each
    once, in order; each must be a `.safetensors` file beside the index (what fetching
    and reading a checkpoint both rely on)."""
    loaded = read_json(index, what="the safetensors index")
    weight_map = loaded.get("weight_map") if isinstance(loaded, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UsageError(f"{index} has no weight_map", "a sharded checkpoint's index lists "
                         "every tensor's file under weight_map")  # fmt: skip
    names = list(dict.fromkeys(weight_map.values()))
    for name in names:
        beside = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
        if not (beside and name.endswith(".safetensors")):
            raise UsageError(
                f"{index} names the shard {name!r}, not a .safetensors file beside it",
                "only checkpoints whose shards sit beside their index are supported",
            )
    return names


def _shards(index: Path) -> tuple[Path, ...]:
    """The files an index's `weight_map` names, each a file of the checkpoint directory."""
    names = shard_names(index)
    missing = [name for name in names if not (index.parent / name).is_file()]
    if missing:
        raise UsageError(
            f"{index} lists shards that are not in {index.parent}: {', '.join(missing)}",
            "fetch every shard the index lists",
        )
    return tuple(index.parent / name for name in names)


def read_checkpoint(directory: Path) -> Checkpoint:
    """The checkpoint at `directory`, checked; UsageError (exit 2) for anything else."""
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise UsageError(f"checkpoint {directory} {what}",
                         "give a Hugging Face checkpoint directory (config.json and "
                         "model.safetensors)")  # fmt: skip
    if not (directory / CONFIG).exists():
        raise UsageError(
            f"{directory} has no {CONFIG}: a checkpoint dir needs config.json",
            "give the directory transformers' save_pretrained writes (config.json, "
            "model.safetensors and the tokenizer files)",
        )
    config = read_json(directory / CONFIG, what="the checkpoint config")
    if not isinstance(config, dict):
        raise UsageError(f"{directory / CONFIG} is not a JSON object",
                         "config.json holds the model's settings as one object")  # fmt: skip
    family = _family(config, directory / CONFIG)
    if (directory / WEIGHTS).exists():
        if not (directory / WEIGHTS).is_file():
            raise UsageError(f"{directory / WEIGHTS} is not a regular file")
        return Checkpoint(directory, config, family, (directory / WEIGHTS,), None)
    if (directory / INDEX).exists():
        index = directory / INDEX
        return Checkpoint(directory, config, family, _shards(index), index)
    raise UsageError(
        f"{directory} has no weights: neither {WEIGHTS} nor {INDEX}",
        "only safetensors weights are read (a pickled pytorch_model.bin runs code when "
        "loaded); save with save_pretrained(safe_serialization=True)",
    )
