"""LogitsFile: blocks of rows read from .npy and raw files, equal to the whole matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitnet_xtask.crossval.logits_file import LogitsFile
from bitnet_xtask.crossval.metrics import compare_logits


def test_npy_and_raw_files_read_the_same_rows(tmp_path: Path) -> None:
    matrix = np.random.default_rng(0).standard_normal((37, 11)).astype(np.float32)
    np.save(tmp_path / "m.npy", matrix)
    matrix.tofile(tmp_path / "m.f32")
    for logits in (LogitsFile.npy(tmp_path / "m.npy"), LogitsFile.raw(tmp_path / "m.f32", 37, 11)):
        assert logits.shape == (37, 11) and logits.ndim == 2
        assert np.array_equal(logits[0:37], matrix)
        assert np.array_equal(logits[5:9], matrix[5:9])
        assert np.array_equal(logits[30:99], matrix[30:])  # clipped like an array slice
    whole = compare_logits(matrix, matrix + 0.5)
    blocks = compare_logits(LogitsFile.npy(tmp_path / "m.npy"), matrix + 0.5, chunk_positions=4)
    assert np.allclose(whole.max_abs_diff, blocks.max_abs_diff)
    assert np.allclose(whole.kl, blocks.kl)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="expected C-ordered"):
        LogitsFile.npy(tmp_path / "v.npy")
    np.zeros((4, 3), np.float32).tofile(tmp_path / "short.f32")
    with pytest.raises(ValueError, match="expected 5 x 3"):
        LogitsFile.raw(tmp_path / "short.f32", 5, 3)
    np.save(tmp_path / "cut.npy", np.zeros((8, 8), np.float64))
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-64])
    with pytest.raises(ValueError, match="shorter than its header"):
        LogitsFile.npy(tmp_path / "cut.npy")
    with pytest.raises(IndexError, match="contiguous"):
        LogitsFile.raw(tmp_path / "short.f32", 4, 3)[::2]
