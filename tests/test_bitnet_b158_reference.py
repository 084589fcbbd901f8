"""The NumPy reference on BitNet b1.58 2B-4T's architecture (`bitnet-b1.58`, `bitnet-25`):
BitLinear's int8 activations as transformers computes them, ternary weights kept as
codes, the head by blocks, incremental decoding, and the bad files it refuses (exit 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from test_crossval_reference import TOKENS, Dims, hf_name, model_tensors, write_gguf

from bitnet_xtask.crossval.metrics import compare_logits
from bitnet_xtask.crossval.reference import (
    PROJECTIONS,
    KVCache,
    bitlinear,
    linear,
    load_model,
    quantize_activations,
)
from bitnet_xtask.crossval.reference_weights import Ternary
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures.b158_gguf import weight_quant
from bitnet_xtask.fixtures.hf_checkpoint import ONLINE_BITNET
from bitnet_xtask.fixtures.i2s import quantize_i2_s

Floats = npt.NDArray[np.float32]
DIMS = Dims(n_vocab=300, n_embd=128, n_layer=2, n_head=4, n_head_kv=2, n_ff=256)


def master_tensors(seed: int = 4) -> dict[str, Floats]:
    """Full-precision master weights of a bitnet-b1.58 model (GGUF names), tied head."""
    return model_tensors("bitnet", DIMS, seed=seed)


def is_projection(name: str) -> bool:
    """A GGUF name of one of the seven projections (blk.N.<projection>.weight)."""
    return name.split(".")[-2] in PROJECTIONS


def converted(master: dict[str, Floats]) -> dict[str, Floats]:
    """The GGUF's tensors: the seven projections ternarized as the converter does
    (`b158_gguf.weight_quant`, checked against the converter's own in test_b158_fixtures)."""
    return {name: weight_quant(w) if is_projection(name) else w for name, w in master.items()}


def write_b158(path: Path, tensors: dict[str, Floats], arch: str = "bitnet-b1.58") -> Path:
    return write_gguf(path, arch, tensors, DIMS, rope_base=500000.0)


# --- the steps --------------------------------------------------------------------------


def test_activation_quantization_is_transformers_act_quant() -> None:
    torch = pytest.importorskip("torch")
    from transformers.integrations.bitnet import ActQuant

    x = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32) * 3
    x[2] = 0.0  # an all-zero row: max|x| is clamped to 1e-5, as in ActQuant
    q, scale = quantize_activations(x.astype(np.float64))
    assert set(np.unique(q)) <= set(range(-128, 128)) and np.abs(q).max() == 127
    theirs = ActQuant.apply(torch.tensor(x)).numpy()  # type: ignore[no-untyped-call]
    np.testing.assert_allclose(q / scale, theirs, rtol=1e-6, atol=1e-7)


def test_bitlinear_is_exact_integers_times_the_scales() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 2, size=(64, 256)).astype(np.int8)
    weight = Ternary(codes, 0.125)
    x = rng.standard_normal((5, 256))
    q, scale = quantize_activations(x)
    expected = (q @ codes.astype(np.float64).T) * (0.125 / scale)  # the integers, exactly
    np.testing.assert_array_equal(bitlinear(x, weight), expected)
    np.testing.assert_allclose(bitlinear(x, weight.dequantize()), expected, rtol=1e-12)
    assert not np.allclose(linear(x, weight), expected, rtol=1e-4)  # unquantized differs


# --- the model ------------------------------------------------------------------------


def hf_b158(tmp_path: Path, master: dict[str, Floats]) -> Any:
    """transformers' BitNetForCausalLM of `master`, loaded as a checkpoint declaring
    BitNet b1.58 2B-4T-bf16's quantization (AutoBitLinear, online): WeightQuant on every
    projection and ActQuant on its input, at run time."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from safetensors.torch import save_file

    d = DIMS
    config = transformers.BitNetConfig(
        vocab_size=d.n_vocab, hidden_size=d.n_embd, intermediate_size=d.n_ff,
        num_hidden_layers=d.n_layer, num_attention_heads=d.n_head,
        num_key_value_heads=d.n_head_kv, rms_norm_eps=1e-5, rope_theta=500000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        quantization_config=ONLINE_BITNET,
    )  # fmt: skip
    checkpoint = tmp_path / "hf"
    config.save_pretrained(checkpoint)
    state = {hf_name(n): torch.tensor(w) for n, w in master.items()}
    save_file(state, checkpoint / "model.safetensors", metadata={"format": "pt"})
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def test_the_definition_matches_transformers_with_bitnet_quantization(tmp_path: Path) -> None:
    """The reference on the converter's GGUF of a checkpoint computes transformers'
    logits for that checkpoint with its declared BitNet quantization. The residual
    difference is transformers' float32 against the reference's float64, through the
    int8 rounding of every projection's input: a few activations land on the other side
    of a rounding boundary. Without activation quantization the two differ by far more."""
    torch = pytest.importorskip("torch")
    master = master_tensors()
    hf = hf_b158(tmp_path, master)
    ours = load_model(write_b158(tmp_path / "m.gguf", converted(master)))
    assert ours.choices()["activation_quant"]["value"] == "int8_per_token"
    with torch.no_grad():
        theirs = hf(torch.tensor([TOKENS])).logits[0].numpy()
    comparison = compare_logits(theirs, ours.logits(TOKENS))
    print("max KL", comparison.kl.max(), "max |d|", comparison.max_abs_diff.max())
    assert float(comparison.kl.max()) < 1e-6, comparison.kl.max()
    assert comparison.top1_match.all()
    unquantized = load_model(write_gguf(tmp_path / "b.gguf", "bitnet", converted(master), DIMS))
    far = compare_logits(theirs, unquantized.logits(TOKENS))
    assert float(far.kl.max()) > 100 * float(comparison.kl.max())


@pytest.mark.parametrize("arch", ["bitnet-b1.58", "bitnet-25"])
def test_i2_s_and_f32_files_are_the_same_model(tmp_path: Path, arch: str) -> None:
    """The I2_S file's weights are kept as int8 codes plus a scale (one byte a weight),
    and so are the f32 file's ternary values: the same codes and scales, the same logits."""
    tensors = converted(master_tensors())
    f32 = load_model(write_b158(tmp_path / "f32.gguf", tensors, arch))
    i2_s = load_model(write_i2_s(tmp_path / "i2_s.gguf", tensors, arch))
    np.testing.assert_array_equal(i2_s.logits(TOKENS), f32.logits(TOKENS))
    kept = i2_s.weights.matrix("blk.0.ffn_up.weight")
    assert isinstance(kept, Ternary) and kept.codes.dtype == np.int8
    assert isinstance(f32.weights.matrix("blk.0.ffn_up.weight"), Ternary)  # ternary values
    assert i2_s.hparams.arch == arch


def write_i2_s(
    path: Path,
    tensors: dict[str, Floats],
    arch: str = "bitnet-b1.58",
    without_trailer: str | None = None,
) -> Path:
    """`write_b158` with the projections as I2_S (ggml type 36); the tensor named
    `without_trailer` is written as n/4 bytes, without its 32-byte scale block."""
    packed = {name: quantize_i2_s(w) for name, w in tensors.items() if is_projection(name)}
    if without_trailer is not None:
        packed[without_trailer] = packed[without_trailer][: tensors[without_trailer].size // 4]
    return write_gguf(path, arch, tensors, DIMS, rope_base=500000.0, i2_s=packed)


def test_incremental_decoding_is_the_whole_sequence_again(tmp_path: Path) -> None:
    model = load_model(write_b158(tmp_path / "m.gguf", converted(master_tensors())))
    full = model.logits(TOKENS)
    cache = KVCache.empty(model.hparams)
    first = model.forward(TOKENS[:10], cache)
    rest = [model.forward([t], cache)[0] for t in TOKENS[10:]]
    np.testing.assert_allclose(np.vstack([first, *rest]), full, rtol=1e-9, atol=1e-9)
    assert cache.n_pos == len(TOKENS)
    expected: list[int] = []
    for _ in range(5):
        expected.append(int(np.argmax(model.logits(TOKENS + expected)[-1])))
    assert model.greedy(TOKENS, 5) == expected
    logits, continuation = model.evaluate(TOKENS, 5)  # one prefill for both
    np.testing.assert_array_equal(logits, full)
    assert continuation == expected


def test_the_head_by_blocks_is_the_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no room in the weight budget the head is multiplied by blocks of rows."""
    import bitnet_xtask.crossval.reference_weights as weights

    path = write_b158(tmp_path / "m.gguf", converted(master_tensors()))
    whole = load_model(path).logits(TOKENS)
    monkeypatch.setattr(weights, "HEAD_BLOCK_BYTES", 7 * 4 * DIMS.n_embd)  # 7 rows a block
    blocked = load_model(path, weight_cache_bytes=0)
    blocks = list(blocked.weights.blocks("token_embd.weight"))
    assert [len(b) for b in blocks] == [7] * (DIMS.n_vocab // 7) + [DIMS.n_vocab % 7]
    np.testing.assert_array_equal(blocked.logits(TOKENS), whole)


def test_an_untied_head_is_output_weight(tmp_path: Path) -> None:
    tensors = converted(master_tensors())
    rng = np.random.default_rng(3)
    head = rng.standard_normal((DIMS.n_vocab, DIMS.n_embd)).astype(np.float32)
    untied = load_model(write_b158(tmp_path / "u.gguf", tensors | {"output.weight": head}))
    assert untied.choices()["head_tensor"]["value"] == "output.weight"
    tied = load_model(write_b158(tmp_path / "t.gguf", tensors))
    assert tied.choices()["head_tensor"]["from"] == "the file has no output.weight: tied embeddings"
    assert not np.allclose(untied.logits(TOKENS), tied.logits(TOKENS))


# --- bad files: exit 2, naming the tensor or key ----------------------------------------


def test_a_missing_sub_norm_is_named(tmp_path: Path) -> None:
    tensors = converted(master_tensors())
    del tensors["blk.1.ffn_sub_norm.weight"]
    with pytest.raises(UsageError, match=r"tensors missing: blk\.1\.ffn_sub_norm\.weight"):
        load_model(write_b158(tmp_path / "m.gguf", tensors))


def test_an_unknown_architecture_is_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "bitnet-2027", converted(master_tensors()), DIMS)
    with pytest.raises(UsageError, match="architecture 'bitnet-2027' is not one the reference"):
        load_model(path)


def test_an_i2_s_tensor_of_the_wrong_size_is_named(tmp_path: Path) -> None:
    """A tensor's size is where the next one starts: an I2_S tensor written without its
    32-byte scale block (n/4 bytes) runs into the next tensor."""
    from bitnet_xtask.crossval.gguf_file import GGUFFormatError

    tensors = converted(master_tensors())
    name = "blk.0.attn_q.weight"
    write_i2_s(tmp_path / "m.gguf", tensors, without_trailer=name)
    n = math.prod(tensors[name].shape)
    with pytest.raises(GGUFFormatError, match=rf"tensor {name} .*{n // 4 + 32} bytes"):
        load_model(tmp_path / "m.gguf")


def test_crossval_refuses_a_malformed_b158_file_before_running(tmp_path: Path) -> None:
    """Through the CLI: a bitnet-b1.58 GGUF without a sub-norm is exit 2, naming it."""
    import subprocess
    import sys

    tensors = converted(master_tensors())
    del tensors["blk.0.attn_sub_norm.weight"]
    model = write_b158(tmp_path / "m.gguf", tensors)
    ids = tmp_path / "ids.txt"
    ids.write_text("1 20 30\n")
    run = subprocess.run(
        [sys.executable, "-m", "bitnet_xtask", "crossval", "--model", str(model),
         "--tokens-file", str(ids), "--backend", "numpy", "--backend", "cmd:true {model}",
         "--receipt", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "tensors missing: blk.0.attn_sub_norm.weight" in run.stderr
    assert not (tmp_path / "r.json").exists()
