"""gen-fixtures: determinism, metadata, the combinations, I2_S, and real engines loading it all.

The engine tests run the project's harness (`xtask-logits`) of the session's real builds
(conftest: `llama_bin`, `bitnet_bin`; bitnet.cpp is skipped, with the reason, when its
sources are not available here).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
import pytest
from gguf.quants import dequantize

from bitnet_xtask import __version__
from bitnet_xtask.fixtures import ARCHS, QUANTS, SIZES, FixtureSpec, generate_fixture
from bitnet_xtask.fixtures.encode import encode
from bitnet_xtask.fixtures.i2s import QK_I2_S, packed_nbytes, quantize_i2_s, unpack_i2_s
from bitnet_xtask.fixtures.spec import GGML_TYPES
from bitnet_xtask.fixtures.vocab import SPACE, build_vocab
from bitnet_xtask.fixtures.weights import Role, TensorPlan, tensor_values

VALID = [(a, q) for a in ARCHS for q in QUANTS if not (a == "llama" and q == "i2_s")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ternary(shape: tuple[int, ...], scale: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(-1, 2, size=shape) * scale).astype(np.float32)


def dequantize_i2_s(
    raw: npt.NDArray[np.uint8] | bytes, shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    """The weights an I2_S tensor holds: codes times the scale."""
    codes, scale = unpack_i2_s(raw, shape)
    values: npt.NDArray[np.float32] = codes.astype(np.float32) * scale
    return values


# --- determinism ----------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "quant"), [("llama", "q4_0"), ("bitnet", "i2_s")])
def test_same_arguments_give_identical_bytes(tmp_path: Path, arch: str, quant: str) -> None:
    first = generate_fixture("tiny", arch, quant, 7, tmp_path / "a")
    second = generate_fixture("tiny", arch, quant, 7, tmp_path / "b")
    assert first.model.read_bytes() == second.model.read_bytes()
    assert first.metadata.read_bytes() == second.metadata.read_bytes()
    assert first.sha256 == second.sha256 == _sha256(first.model)


def test_regenerating_in_place_replaces_the_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    first = generate_fixture("tiny", "llama", "f16", 1, tmp_path)
    second = generate_fixture("tiny", "llama", "f16", 1, tmp_path)
    assert first.sha256 == second.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "llama-tiny-f16-seed1.gguf",
        "llama-tiny-f16-seed1.json",
    ]


def test_a_different_seed_gives_different_weights(tmp_path: Path) -> None:
    one = generate_fixture("tiny", "bitnet", "tq2_0", 1, tmp_path)
    two = generate_fixture("tiny", "bitnet", "tq2_0", 2, tmp_path)
    assert one.sha256 != two.sha256
    tensors_one = {t.name: t.data for t in gguf.GGUFReader(one.model).tensors}
    tensors_two = {t.name: t.data for t in gguf.GGUFReader(two.model).tensors}
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_sub_norm.weight"):
        assert not np.array_equal(tensors_one[name], tensors_two[name]), name


# --- contents -------------------------------------------------------------------------


def test_metadata_describes_the_file(tmp_path: Path) -> None:
    result = generate_fixture("tiny", "llama", "q8_0", 3, tmp_path)
    meta = json.loads(result.metadata.read_text())
    hp = SIZES["tiny"]
    assert result.model.name == meta["file"] == "llama-tiny-q8_0-seed3.gguf"
    assert result.metadata == tmp_path / "llama-tiny-q8_0-seed3.json"
    assert meta["sha256"] == result.sha256 == _sha256(result.model)
    assert meta["size_bytes"] == result.size_bytes == result.model.stat().st_size
    assert (meta["arch"], meta["size"], meta["quant"], meta["seed"]) == ("llama", "tiny", "q8_0", 3)
    assert meta["generator"]["version"] == __version__
    assert meta["engines"] == ["llama.cpp", "bitnet.cpp"]
    assert meta["hparams"]["n_embd"] == hp.n_embd
    assert meta["hparams"]["n_embd_kv"] == hp.n_embd_kv

    reader = gguf.GGUFReader(result.model)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(meta["tensors"])
    for name, described in meta["tensors"].items():
        assert tensors[name].tensor_type.name.lower() == described["type"]
        assert list(reversed(tensors[name].shape.tolist())) == described["shape"]
    assert meta["tensors"]["blk.0.attn_q.weight"]["type"] == "q8_0"
    assert meta["tensors"]["token_embd.weight"]["type"] == "f32"
    assert meta["tensors"]["blk.1.ffn_norm.weight"]["type"] == "f32"

    def field(key: str) -> object:
        found = reader.get_field(key)
        assert found is not None, key
        return found.contents()

    assert field("general.architecture") == "llama"
    assert field("llama.embedding_length") == hp.n_embd
    assert field("llama.attention.head_count_kv") == hp.n_head_kv
    assert field("llama.rope.dimension_count") == hp.head_dim
    assert field("tokenizer.ggml.model") == "llama"
    assert len(field("tokenizer.ggml.tokens")) == hp.n_vocab  # type: ignore[arg-type]


def test_bitnet_has_sub_norms_and_a_tied_head(tmp_path: Path) -> None:
    meta = json.loads(generate_fixture("tiny", "bitnet", "f32", 0, tmp_path).metadata.read_text())
    hp = SIZES["tiny"]
    assert meta["tensors"]["blk.0.attn_sub_norm.weight"]["shape"] == [hp.n_embd]
    assert meta["tensors"]["blk.0.ffn_sub_norm.weight"]["shape"] == [hp.n_ff]
    assert "output.weight" not in meta["tensors"]
    assert meta["ternary"] is True


@pytest.mark.parametrize("size", list(SIZES))
def test_every_size_fits_every_block_size(size: str) -> None:
    hp = SIZES[size]
    for width in (hp.n_embd, hp.n_ff):
        assert width % 256 == 0  # TQ1_0/TQ2_0 QK_K; also covers I2_S (128) and Q8_0/Q4_0 (32)
    assert hp.head_dim * hp.n_head == hp.n_embd
    assert hp.n_head % hp.n_head_kv == 0 and hp.n_head_kv < hp.n_head  # grouped-query


def test_ternary_weights_survive_the_ternary_formats_exactly() -> None:
    spec = FixtureSpec.parse("tiny", "bitnet", "tq1_0", 5)
    plan = TensorPlan("blk.0.ffn_up.weight", (512, 256), Role.PROJECTION)
    values = tensor_values(spec, plan)
    scale = np.abs(values).max()
    assert set(np.unique(values / scale).tolist()) == {-1.0, 0.0, 1.0}
    for type_name in ("tq1_0", "tq2_0"):
        stored = encode(values, type_name)
        back = dequantize(stored.data, GGML_TYPES[type_name]).reshape(values.shape)
        np.testing.assert_array_equal(back, values)
    np.testing.assert_array_equal(encode(values, "f16").data.astype(np.float32), values)


def test_the_vocabulary_holds_words_and_bytes() -> None:
    vocab = build_vocab(SIZES["tiny"].n_vocab)
    assert len(vocab.tokens) == len(vocab.scores) == len(vocab.token_types) == 384
    assert vocab.tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert vocab.tokens[3 + 0x0A] == "<0x0A>"
    assert len(set(vocab.tokens)) == len(vocab.tokens)
    pieces = {
        t
        for t, kind in zip(vocab.tokens, vocab.token_types, strict=True)
        if kind == gguf.TokenType.NORMAL
    }
    for word in ("Hello", "world"):
        assert all(SPACE + word[:k] in pieces for k in range(len(word) + 1))


# --- combinations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "arch", "quant", "seed", "message"),
    [
        ("huge", "llama", "f32", 0, "unknown size 'huge'"),
        ("tiny", "gpt2", "f32", 0, "unknown arch 'gpt2'"),
        ("tiny", "llama", "q5_k", 0, "unknown quant 'q5_k'"),
        ("tiny", "llama", "i2_s", 0, "use arch bitnet"),
        ("tiny", "llama", "f32", -1, "seed must be"),
    ],
)
def test_invalid_requests_are_rejected(
    tmp_path: Path, size: str, arch: str, quant: str, seed: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        generate_fixture(size, arch, quant, seed, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- I2_S -----------------------------------------------------------------------------


def test_i2s_round_trip_is_exact_for_ternary_times_scale() -> None:
    weights = _ternary((6, 3 * QK_I2_S), 0.046875)
    packed = quantize_i2_s(weights)
    assert packed.dtype == np.uint8
    assert packed.size == packed_nbytes(weights.size) == weights.size // 4 + 32
    np.testing.assert_array_equal(dequantize_i2_s(packed, weights.shape), weights)
    np.testing.assert_array_equal(dequantize_i2_s(packed.tobytes(), weights.shape), weights)


def test_i2s_layout_matches_bitnet_cpp() -> None:
    """Weight j of a 128-block: byte j % 32, bits 7-6 for j < 32 ... bits 1-0 for j >= 96."""
    weights = np.zeros((1, QK_I2_S), dtype=np.float32)
    weights[0, 0] = 2.5  # code 2 -> bits 7-6 of byte 0
    weights[0, 33] = -2.5  # code 0 -> bits 5-4 of byte 1
    weights[0, 127] = 1.0  # code 2 -> bits 1-0 of byte 31
    packed = quantize_i2_s(weights)
    zero_codes = 0b01010101
    assert packed[0] == (zero_codes & 0b00111111) | (2 << 6)
    assert packed[1] == (zero_codes & 0b11001111) | (0 << 4)
    assert packed[31] == (zero_codes & 0b11111100) | 2
    assert set(packed[2:31].tolist()) == {zero_codes}
    assert packed[32:36].tobytes() == np.float32(2.5).tobytes()
    assert packed[36:].tolist() == [0] * 28


def test_i2s_keeps_only_signs_like_llama_quantize() -> None:
    weights = np.array([[0.5, -3.0, 1e-7, 2.0] * 32], dtype=np.float32)
    expected = np.array([[3.0, -3.0, 0.0, 3.0] * 32], dtype=np.float32)
    np.testing.assert_array_equal(dequantize_i2_s(quantize_i2_s(weights), weights.shape), expected)


def test_i2s_refuses_partial_blocks_and_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of 128"):
        quantize_i2_s(np.ones((2, 96), dtype=np.float32))
    with pytest.raises(ValueError, match="takes 64 bytes"):
        dequantize_i2_s(b"\0" * 63, (1, 128))


# --- real engines ---------------------------------------------------------------------


def _run_fixture(binary: Path, tmp_path: Path, arch: str, quant: str) -> None:
    fixture = generate_fixture("tiny", arch, quant, 0, tmp_path / "models")
    out = tmp_path / "run"
    args = ["--model", str(fixture.model), "--prompt", "Hello world", "--out", str(out)]
    proc = subprocess.run(
        [str(binary), *args, "--n-predict", "2", "--threads", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n_vocab"] == SIZES["tiny"].n_vocab
    assert summary["n_tokens"] == 3  # <s> ▁Hello ▁world
    logits = np.fromfile(out / "logits.f32", dtype="<f4").reshape(3, -1)
    assert np.isfinite(logits).all()
    assert (logits.std(axis=1) > 0.5).all()  # well conditioned: neither flat ...
    assert np.abs(logits).max() < 100.0  # ... nor blowing up


@pytest.mark.parametrize(("arch", "quant"), [c for c in VALID if c[1] != "i2_s"])
def test_upstream_llama_cpp_runs_the_fixture(
    llama_bin: Path, tmp_path: Path, arch: str, quant: str
) -> None:
    _run_fixture(llama_bin / "xtask-logits", tmp_path, arch, quant)


@pytest.mark.parametrize(("arch", "quant"), VALID)
def test_bitnet_cpp_runs_the_fixture(
    bitnet_bin: Path, tmp_path: Path, arch: str, quant: str
) -> None:
    _run_fixture(bitnet_bin / "xtask-logits", tmp_path, arch, quant)
