"""The reference's weights: read from the memory-mapped GGUF when a step needs them, kept
within a budget, in the smallest form that is still exact.

The memory plan (BitNet b1.58 2B-4T has 2.08 B ternary projection weights and a
128256 x 2560 embedding): no step ever holds a float copy of the whole model.

- A ternary matrix (every weight -1, 0 or 1 times one scale: I2_S always, an f32 or
  f16 file's projections when their values are) is kept as int8 codes plus the scale,
  one byte per weight; a product widens one matrix at a time (`bitlinear`).
- Other matrices are float32, as ggml dequantizes them.
- The cache (`WeightStore`) keeps what fits in its byte budget and reads the rest again
  from the file each time, so a model larger than the budget still runs.
- The embedding is read by rows (`rows`), and the head multiplies block by block
  (`blocks`) when the whole table does not fit the budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from bitnet_xtask.crossval.gguf_file import I2_S_TYPE_ID, GGUFFile, TensorInfo
from bitnet_xtask.errors import UsageError

Weights = npt.NDArray[np.float32]

HEAD_BLOCK_BYTES = 64 << 20
"""The float32 bytes of one block of head rows when the head is multiplied by blocks."""

_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
_READABLE = frozenset({*_FLOAT_TYPES, *quants._type_traits})
"""What gguf-py's `quants.dequantize` reads: f32, f16, and the types it has traits for
(gguf-py 0.19 `quants.py`: its dispatch on `_type_traits`)."""


@dataclass(frozen=True)
class Ternary:
    """A matrix whose weights are exactly `codes * scale`: int8 codes (-1, 0, 1; an I2_S
    file's unused code 3 reads as 2) and one float32 scale."""

    codes: npt.NDArray[np.int8]
    scale: float

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    def dequantize(self) -> Weights:
        values: Weights = self.codes.astype(np.float32) * np.float32(self.scale)
        return values


Matrix = Weights | Ternary
"""A projection as the reference keeps it."""
Rows = slice | npt.NDArray[np.int64]
"""Which rows of a matrix to read."""


class ReferenceFile(GGUFFile):
    """The model file as the reference reads it: the bounded header (`gguf_file`), and
    each tensor dequantized to float32, or to ternary codes. `load_model` has checked
    that every tensor's type is one this reads (`check_readable`)."""

    def check_readable(self) -> None:
        """UsageError (exit 2), naming the tensor, for a type the reference cannot read:
        before anything runs, not halfway through a forward pass."""
        for info in self.tensor_infos.values():
            if info.type_id == I2_S_TYPE_ID:
                continue
            try:
                qtype = GGMLQuantizationType(info.type_id)
            except ValueError:
                raise UsageError(
                    f"{self.path}: tensor {info.name} has ggml type id {info.type_id}, which "
                    "the reference cannot read",
                    hint="the reference reads the types gguf-py knows, and bitnet.cpp's i2_s",
                ) from None
            if qtype not in _READABLE:
                raise UsageError(
                    f"{self.path}: tensor {info.name} is {qtype.name}, which gguf-py cannot "
                    "dequantize",
                    hint="requantize the model to f32, f16, q8_0, q4_0, tq1_0, tq2_0 or i2_s",
                )

    def dequantize(self, name: str) -> Weights:
        """Tensor `name` as float32 in NumPy order, whatever its type in the file."""
        info = self.tensor_infos[name]
        return self.dequantize_rows(name, slice(None)).reshape(info.shape)

    def dequantize_rows(self, name: str, rows: Rows) -> Weights:
        """Rows `rows` (a slice or row numbers) of matrix `name` as float32, reading only
        those (an embedding lookup, a block of the head)."""
        info = self.tensor_infos[name]
        if info.type_id == I2_S_TYPE_ID:
            return self._i2_s(info, rows).dequantize()
        qtype = GGMLQuantizationType(info.type_id)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        row_bytes = info.shape[-1] // block_size * type_size
        n_rows = math.prod(info.shape[:-1])
        raw = self._bytes(info, n_rows * row_bytes).reshape(n_rows, row_bytes)[rows]
        values = quants.dequantize(raw, qtype)
        return np.asarray(values, dtype=np.float32).reshape(raw.shape[0], info.shape[-1])

    def matrix(self, name: str, ternary: bool) -> Matrix:
        """Matrix `name` as ternary codes when it is ternary (I2_S always; with `ternary`,
        an f32 or f16 matrix whose every weight is 0 or +-m for one m), else float32."""
        info = self.tensor_infos[name]
        if info.type_id == I2_S_TYPE_ID:
            return self._i2_s(info, slice(None))
        values = self.dequantize(name)
        if not ternary or info.type_id not in _FLOAT_TYPES or values.ndim != 2:
            return values
        magnitude = np.abs(values)
        scale = float(magnitude.max()) if magnitude.size else 0.0
        if scale == 0.0 or not np.all((magnitude == 0) | (magnitude == scale)):
            return values
        return Ternary(np.sign(values).astype(np.int8), scale)

    def _i2_s(self, info: TensorInfo, rows: Rows) -> Ternary:
        from bitnet_xtask.fixtures.i2s import packed_nbytes, unpack_i2_s

        raw = self._bytes(info, packed_nbytes(math.prod(info.shape)))
        codes, scale = unpack_i2_s(raw, info.shape, rows)
        return Ternary(codes, float(scale))

    def _bytes(self, info: TensorInfo, n_bytes: int) -> npt.NDArray[np.uint8]:
        """The tensor's data (inside the file: `GGUFFile` checked every extent)."""
        raw: npt.NDArray[np.uint8] = self.data[info.offset : info.offset + n_bytes]
        return raw


class WeightStore:
    """The tensors of one file as the forward pass asks for them, cached while the
    byte budget lasts (see the module)."""

    def __init__(self, gguf: ReferenceFile, budget_bytes: int, ternary: bool) -> None:
        self.gguf = gguf
        self.ternary = ternary  # keep ternary matrices as codes (BitLinear's graphs)
        self._cache: dict[str, Matrix] = {}
        self._room = budget_bytes

    def array(self, name: str) -> Weights:
        """A whole tensor as float32 (a norm's weight, a scale, a table that fits)."""
        found = self._cache.get(name)
        if isinstance(found, np.ndarray):
            return found
        values = self.gguf.dequantize(name)
        self._keep(name, values)
        return values

    def matrix(self, name: str) -> Matrix:
        """A projection: ternary codes when it is ternary and the graph keeps codes (or
        the file stores I2_S), else float32."""
        found = self._cache.get(name)
        if found is not None:
            return found
        matrix = self.gguf.matrix(name, self.ternary)
        self._keep(name, matrix)
        return matrix

    def rows(self, name: str, ids: npt.NDArray[np.int64]) -> Weights:
        """Rows `ids` of a matrix (the embedding lookup), read alone unless the whole
        matrix is cached already (as a tied head): a lookup never spends the budget."""
        found = self._cache.get(name)
        if isinstance(found, np.ndarray):
            return found[ids]
        return self.gguf.dequantize_rows(name, ids)

    def blocks(self, name: str) -> Iterator[Weights]:
        """Matrix `name` as float32 blocks of consecutive rows, in order: the whole of it
        when it fits the budget (and then cached), else blocks of HEAD_BLOCK_BYTES."""
        if name in self._cache or self._fits(name):
            yield self.array(name)
            return
        info = self.gguf.tensor_infos[name]
        step = max(1, HEAD_BLOCK_BYTES // (4 * info.shape[-1]))
        for start in range(0, info.shape[0], step):
            yield self.gguf.dequantize_rows(name, slice(start, start + step))

    def _fits(self, name: str) -> bool:
        return 4 * math.prod(self.gguf.tensor_infos[name].shape) <= self._room

    def _keep(self, name: str, value: Matrix) -> None:
        if value.nbytes <= self._room:
            self._cache[name] = value
            self._room -= value.nbytes
