"""Logits on disk, read a block of rows at a time.

A backend's logits can be larger than memory (2,048 positions x a 32k vocabulary is
262 MB of float32 per backend). A memory map would let the comparison slice them, but
every page it touched would stay resident and count against the process until the map
is closed; reading each block with an explicit read keeps only the block in memory.
Both `.npy` files and headerless row-major files (the harness's `logits.f32`) work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from bitnet_xtask.errors import UsageError
from bitnet_xtask.inputs import open_regular


def _open(path: Path) -> BinaryIO:
    """The regular file at `path`, for reading: an engine that left a FIFO or a device
    there must not block or feed us forever (ValueError, as for a malformed file)."""
    try:
        fd, _ = open_regular(path, what="logits file")
    except UsageError as exc:
        raise ValueError(exc.message) from None
    return os.fdopen(fd, "rb")


@dataclass(frozen=True)
class LogitsFile:
    """A (n_rows, n_vocab) matrix at `offset` in `path`; slicing rows reads them."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype[Any]
    offset: int = 0

    @property
    def ndim(self) -> int:
        return 2

    @classmethod
    def raw(cls, path: Path, n_rows: int, n_vocab: int, dtype: str = "<f4") -> LogitsFile:
        """A headerless row-major file; its size must be exactly the matrix."""
        matrix = cls(path, (n_rows, n_vocab), np.dtype(dtype))
        expected = n_rows * n_vocab * matrix.dtype.itemsize
        with _open(path) as handle:
            size = os.fstat(handle.fileno()).st_size
        if size != expected:
            raise ValueError(f"{path} has {size} bytes, expected {n_rows} x {n_vocab} floats")
        return matrix

    @classmethod
    def npy(cls, path: Path) -> LogitsFile:
        """A C-ordered 2-D `.npy` file (its header says shape and dtype)."""
        with _open(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{path} holds a {'Fortran-ordered ' * fortran}{shape} array, "
                             "expected C-ordered (n_tokens, n_vocab)")  # fmt: skip
        matrix = cls(path, (int(shape[0]), int(shape[1])), np.dtype(dtype), offset)
        if size < offset + shape[0] * shape[1] * matrix.dtype.itemsize:
            raise ValueError(f"{path} is shorter than its header says")
        return matrix

    def __getitem__(self, rows: slice) -> npt.NDArray[Any]:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("LogitsFile reads contiguous blocks of rows only")
        count = max(0, stop - start)
        # Through the same checked open as the constructors: the path is opened again for
        # every block, and a FIFO or device swapped in since must not block or feed us.
        with _open(self.path) as handle:
            handle.seek(self.offset + start * self.shape[1] * self.dtype.itemsize)
            block = np.fromfile(handle, dtype=self.dtype, count=count * self.shape[1])
        if block.size != count * self.shape[1]:
            raise ValueError(f"{self.path} is shorter than {self.shape[0]} rows: it changed")
        return block.reshape(count, self.shape[1])
