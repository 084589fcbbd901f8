"""A GGUF file's header, read as if it were hostile: gguf-py's GGUFReader, bounded.

gguf-py's reader (0.19) trusts the header. It slices its memory map wherever a count
or length points, so a count past the end of the file gives an empty slice and then an
IndexError (`n_tensors = 2**62`), a field cut short a NumPy "changing to a larger
dtype" error, and an array of arrays nested a thousand deep a RecursionError. GGUFFile
keeps GGUFReader's parsing and metadata access and adds the checks llama.cpp's own
loader makes (`gguf_init_from_file_impl` and `gguf_reader` in ggml/src/gguf.cpp at
0c1e57098: every read bounded by the bytes left in the file, no arrays of arrays, at
most GGML_MAX_DIMS = 4 dimensions, no duplicate keys or tensor names), plus one more:
every tensor's data must lie inside the file, so a truncated download is refused when
it is opened, not halfway through a forward pass. Only a regular file is opened (a
FIFO would block, `/dev/zero` has no end).

Every refusal is a `GGUFFormatError` (a usage error, exit 2) that names the file; a
file cut short says `truncated at byte N`, N being its size.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import (
    GGML_QUANT_SIZES,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    LlamaFileType,
    ReaderField,
)

from bitnet_xtask.errors import UsageError
from bitnet_xtask.inputs import open_regular

I2_S_TYPE_ID = 36
"""GGML_TYPE_I2_S in bitnet.cpp's ggml.h; gguf-py has no name for it."""
FILE_TYPE_GUESSED = 1024
"""LLAMA_FTYPE_GUESSED (llama.h): or-ed into a file type llama.cpp guessed."""

HEADER_BYTES = 4 + 4 + 8 + 8
"""Magic, version, tensor count, key count."""
MIN_KV_BYTES = 8 + 4 + 1
"""The smallest key/value pair: key length, value type, a one-byte value."""
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
"""The smallest tensor info: name length, n_dims, type, offset."""
MAX_DIMS = 4
"""GGML_MAX_DIMS."""


class GGUFFormatError(UsageError):
    """The file is not a GGUF that can be read: not regular, cut short, or its header
    claims more than the file holds (exit 2)."""


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lies in the file, with its ggml type as the raw id."""

    name: str
    shape: tuple[int, ...]  # NumPy order, rows first: ggml's ne reversed
    type_id: int
    offset: int  # absolute, in bytes


def tensor_nbytes(shape: tuple[int, ...], type_id: int) -> int | None:
    """The bytes a tensor of `shape` takes in ggml type `type_id` (`ggml_nbytes`; for I2_S
    bitnet.cpp's packing), or None for a type this reader does not know (the reference
    refuses it by name when it needs it). ValueError when the shape is not a whole number
    of the type's blocks (gguf.cpp refuses a row that is not, as dequantizing would)."""
    n_elements = math.prod(shape)
    if type_id == I2_S_TYPE_ID:
        from bitnet_xtask.fixtures.i2s import QK_I2_S, packed_nbytes

        width = shape[-1] if shape else 1
        if width % QK_I2_S:  # the kernel reads row r at byte r * ne0 / 4
            raise ValueError(f"rows of {width} are not whole I2_S blocks of {QK_I2_S}")
        return packed_nbytes(n_elements)
    try:
        qtype = GGMLQuantizationType(type_id)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        return None
    if (shape[-1] if shape else 1) % block_size:
        raise ValueError(f"rows of {shape[-1]} are not whole {qtype.name} blocks of {block_size}")
    return n_elements // block_size * type_size


class GGUFFile(GGUFReader):
    """gguf.GGUFReader, bounded (see the module), keeping tensor types as raw ids.

    GGUFReader converts each tensor's type id to `GGMLQuantizationType` and refuses the
    whole file when one is unknown, which bitnet.cpp's I2_S (36) is. This reader records
    the tensor infos instead and leaves `tensors` empty; metadata works as in GGUFReader.
    It overrides GGUFReader's private `_get`, `_get_field_parts`, `_build_fields`,
    `_build_tensor_info` and `_build_tensors` steps (checked with gguf-py 0.19).
    """

    tensor_infos: dict[str, TensorInfo]

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        fd, info = open_regular(self.path, what="model")
        try:
            self.size = info.st_size
            if self.size < HEADER_BYTES:
                raise self._error(
                    f"truncated at byte {self.size}: a GGUF header is {HEADER_BYTES} bytes"
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                # np.memmap takes an open file as well as a path: the one checked above.
                super().__init__(handle)  # type: ignore[arg-type]
        except GGUFFormatError:
            raise
        except (ValueError, KeyError, OSError) as exc:  # gguf-py: bad magic, version, type;
            raise self._error(str(exc)) from None  # KeyError: a duplicate key
        finally:
            os.close(fd)

    def _error(self, detail: str) -> GGUFFormatError:
        return GGUFFormatError(
            f"cannot read {self.path} as GGUF: {detail}",
            "is it a complete GGUF file? download or generate it again",
        )

    # --- GGUFReader's steps, bounded ------------------------------------------------------

    def _get(
        self,
        offset: int,
        dtype: npt.DTypeLike,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> npt.NDArray[Any]:
        count = int(count)
        end = int(offset) + np.dtype(dtype).itemsize * count
        if end > len(self.data):
            raise self._error(
                f"truncated at byte {len(self.data)}: the header reads bytes {offset} to {end} "
                "(the file is cut short, or a length in it is corrupt)"
            )
        return super()._get(offset, dtype, count, override_order)

    def _room(self, count: int, offset: int, item_bytes: int, what: str) -> None:
        """Refuse a count that the bytes left after `offset` cannot hold."""
        size = len(self.data)
        if count * item_bytes <= size - offset:
            return
        if count > size:  # no file of this size could hold them: a corrupt count
            raise self._error(
                f"the header declares {count:,} {what} at byte {offset}, more than a "
                f"{size:,}-byte file can hold: the header is corrupt"
            )
        raise self._error(
            f"truncated at byte {size}: the header declares {count:,} {what} at byte {offset}, "
            f"which take at least {count * item_bytes:,} bytes"
        )

    def _get_field_parts(
        self, orig_offs: int, raw_type: int
    ) -> tuple[int, list[npt.NDArray[Any]], list[int], list[GGUFValueType]]:
        if raw_type == GGUFValueType.ARRAY:
            item_type = int(self._get(orig_offs, np.uint32)[0])
            length = int(self._get(orig_offs + 4, np.uint64)[0])
            if item_type == GGUFValueType.ARRAY:
                raise self._error(f"an array of arrays at byte {orig_offs} (llama.cpp refuses it)")
            self._room(length, orig_offs + 12, self._item_bytes(item_type), "array items")
        return super()._get_field_parts(orig_offs, raw_type)

    def _item_bytes(self, raw_type: int) -> int:
        if raw_type == GGUFValueType.STRING:
            return 8
        try:
            return np.dtype(self.gguf_scalar_to_np[GGUFValueType(raw_type)]).itemsize
        except (ValueError, KeyError):
            return 1  # an unknown type: GGUFReader refuses it by name

    def _build_fields(self, offs: int, count: int) -> int:
        self._room(int(count), offs, MIN_KV_BYTES, "metadata keys")
        return super()._build_fields(offs, count)

    def _build_tensor_info(self, offs: int, count: int) -> tuple[int, list[ReaderField]]:
        self._room(int(count), offs, MIN_TENSOR_INFO_BYTES, "tensors")
        return super()._build_tensor_info(offs, count)

    def _build_tensors(self, start_offs: int, fields: list[ReaderField]) -> None:
        infos: dict[str, TensorInfo] = {}
        for field in fields:
            _name_len, name_data, n_dims, dims, raw_type, offset = field.parts
            name = bytes(name_data).decode("utf-8")
            if name in infos:
                raise self._error(f"duplicate tensor {name!r}")
            if int(n_dims[0]) > MAX_DIMS:
                raise self._error(f"tensor {name!r} has {int(n_dims[0])} dimensions (at most 4)")
            shape = tuple(int(d) for d in reversed(dims.tolist()))
            if any(d >= 1 << 63 for d in shape):
                raise self._error(f"tensor {name!r} has a negative dimension: {shape}")
            info = TensorInfo(name, shape, int(raw_type[0]), start_offs + int(offset[0]))
            self._check_extent(info)
            infos[name] = info
        self._check_disjoint(infos.values())
        self.tensor_infos = infos

    def _check_extent(self, info: TensorInfo) -> None:
        try:
            nbytes = tensor_nbytes(info.shape, info.type_id)
        except ValueError as exc:
            raise self._error(f"tensor {info.name} of shape {info.shape}: {exc}") from None
        if nbytes is None:
            return
        end = info.offset + nbytes
        if end > self.size:
            raise self._error(
                f"truncated at byte {self.size}: tensor {info.name} runs past the end of the "
                f"file (its data is bytes {info.offset} to {end})"
            )

    def _check_disjoint(self, infos: Iterable[TensorInfo]) -> None:
        """Each tensor's data ends before the next one's starts: a GGUF stores no sizes,
        so a tensor written with the wrong size (an I2_S tensor without its 32-byte scale
        block) shows as one running into the next."""
        ordered = sorted(infos, key=lambda info: info.offset)
        for info, following in pairwise(ordered):
            nbytes = tensor_nbytes(info.shape, info.type_id)
            if nbytes is None or info.offset + nbytes <= following.offset:
                continue
            rule = " (n/4 + 32 for I2_S)" if info.type_id == I2_S_TYPE_ID else ""
            raise self._error(
                f"tensor {info.name} of shape {info.shape} needs {nbytes} bytes{rule}, but "
                f"the next tensor, {following.name}, starts "
                f"{following.offset - info.offset} bytes after it"
            )

    # --- what callers use -----------------------------------------------------------------

    def metadata(self, key: str) -> Any:
        """The value of a metadata key (a str, number or list), or None when absent."""
        field = self.get_field(key)
        if field is None:
            return None
        try:
            return field.contents()
        except UnicodeDecodeError:
            raise self._error(f"the value of {key} is not UTF-8") from None

    def quantization(self) -> str | None:
        """The weights' quantization, named from the file's own type information, the way
        llama.cpp reads it (`llama_model_loader`, src/llama-model-loader.cpp at 0c1e57098):
        `general.file_type` (gguf-py's LlamaFileType, which is llama.h's llama_ftype:
        15 -> `q4_k_m`), else the type most tensors have (`q4_k`). None when neither says.

        A file holding I2_S tensors is bitnet.cpp's, whose file type 40 means I2_S where
        upstream's means Q1_0: it is `i2_s` whatever its file type says.
        """
        counts = Counter(info.type_id for info in self.tensor_infos.values())
        if I2_S_TYPE_ID in counts:
            return "i2_s"
        file_type = self.metadata("general.file_type")
        if type(file_type) is int:
            try:
                name = LlamaFileType(file_type & ~FILE_TYPE_GUESSED).name
            except ValueError:
                pass
            else:
                return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
        if not counts:
            return None
        majority = max(counts, key=counts.__getitem__)
        try:
            return GGMLQuantizationType(majority).name.lower()
        except ValueError:
            return None

    def context_length(self) -> int | None:
        """`<arch>.context_length`, the context the model was trained for, when present."""
        value = self.metadata(f"{self.metadata('general.architecture')}.context_length")
        return value if type(value) is int and value > 0 else None

    def longest_token_bytes(self) -> int | None:
        """The UTF-8 length of the vocabulary's longest token (None without a vocabulary):
        no token covers more text than that, which bounds a prompt's token count from
        below before it is tokenized."""
        field = self.get_field("tokenizer.ggml.tokens")
        if field is None or not field.data:
            return None
        return max(int(field.parts[i].size) for i in field.data)
