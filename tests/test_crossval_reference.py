"""crossval.reference: the NumPy forward pass on GGUF files written here, against
transformers (the model's definition) and against llama.cpp.

The comparison with llama.cpp runs the session's real build (conftest `llama_bin`) on
hand-written models that gen-fixtures does not make (tied embeddings, other widths) and
on a bitnet fixture; the fixtures of every quant type are compared through crossval in
test_crossval_cli. On `llama` the definition and llama.cpp's graph agree; on `bitnet`
they differ in the FFN activation alone (engine_graphs), which these tests measure.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
import pytest

from bitnet_xtask.crossval.definitions import RopeType
from bitnet_xtask.crossval.engine_graphs import GraphName, choose_graph
from bitnet_xtask.crossval.metrics import (
    PROFILES,
    LogitsComparison,
    compare_greedy,
    compare_logits,
    verdict,
)
from bitnet_xtask.crossval.reference import (
    PROJECTIONS,
    Hparams,
    ReferenceModel,
    causal_attention,
    load_model,
    relu2,
    rms_norm,
    rope,
    rope_angles,
    silu,
)
from bitnet_xtask.errors import UsageError, XtaskError
from bitnet_xtask.fixtures import generate_fixture
from bitnet_xtask.fixtures.i2s import GGML_TYPE_I2_S
from bitnet_xtask.fixtures.twin_check import permute

Floats = npt.NDArray[np.float32]
TOKENS = [1, 17, 250, 3, 99, 4, 120, 64, 8, 299, 42, 42, 7, 180, 33, 5]


@dataclass(frozen=True)
class Dims:
    n_vocab: int = 300
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128


def model_tensors(arch: str, dims: Dims = Dims(), seed: int = 0) -> dict[str, Floats]:
    """Seeded float32 weights: unit-RMS projections, norms near 1, llama with its own head."""
    rng = np.random.default_rng(seed)
    d = dims
    head_dim = d.n_embd // d.n_head

    def matrix(rows: int, cols: int) -> Floats:
        return (rng.standard_normal((rows, cols)) / math.sqrt(cols)).astype(np.float32)

    def norm(n: int) -> Floats:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    tensors = {
        "token_embd.weight": rng.standard_normal((d.n_vocab, d.n_embd)).astype(np.float32),
        "output_norm.weight": norm(d.n_embd),
    }
    if arch == "llama":
        tensors["output.weight"] = matrix(d.n_vocab, d.n_embd) * np.float32(4.0)
    for il in range(d.n_layer):
        blk = f"blk.{il}."
        tensors |= {
            f"{blk}attn_norm.weight": norm(d.n_embd),
            f"{blk}attn_q.weight": matrix(d.n_embd, d.n_embd),
            f"{blk}attn_k.weight": matrix(d.n_head_kv * head_dim, d.n_embd),
            f"{blk}attn_v.weight": matrix(d.n_head_kv * head_dim, d.n_embd),
            f"{blk}attn_output.weight": matrix(d.n_embd, d.n_embd),
            f"{blk}ffn_norm.weight": norm(d.n_embd),
            f"{blk}ffn_gate.weight": matrix(d.n_ff, d.n_embd),
            f"{blk}ffn_up.weight": matrix(d.n_ff, d.n_embd),
            f"{blk}ffn_down.weight": matrix(d.n_embd, d.n_ff),
        }
        if arch == "bitnet":
            tensors[f"{blk}attn_sub_norm.weight"] = norm(d.n_embd)
            tensors[f"{blk}ffn_sub_norm.weight"] = norm(d.n_ff)
    return tensors


def write_gguf(
    path: Path,
    arch: str,
    tensors: dict[str, Floats],
    dims: Dims = Dims(),
    extra_keys: dict[str, float | str] | None = None,
    rope_base: float | None = 10000.0,
    i2_s: Mapping[str, npt.NDArray[np.uint8]] | None = None,
) -> Path:
    """An f32 GGUF that llama.cpp loads: hparams plus a minimal SPM tokenizer. The tensors
    named in `i2_s` are stored as those bytes instead, as ggml type 36 (I2_S) of the
    tensor's shape."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(256)
    writer.add_embedding_length(dims.n_embd)
    writer.add_block_count(dims.n_layer)
    writer.add_feed_forward_length(dims.n_ff)
    writer.add_head_count(dims.n_head)
    writer.add_head_count_kv(dims.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    if rope_base is not None:
        writer.add_rope_freq_base(rope_base)
    for key, value in (extra_keys or {}).items():
        if isinstance(value, str):
            writer.add_string(f"{arch}.{key}", value)
        else:
            writer.add_float32(f"{arch}.{key}", value)
    # <unk> <s> </s>, the 256 byte tokens llama.cpp's SPM loader looks up, then pieces.
    pieces = [f"\u2581p{i}" for i in range(dims.n_vocab - 259)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces])
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    packed = i2_s or {}
    for name, values in tensors.items():
        if name in packed:
            raw = packed[name].view(np.int8)  # gguf-py takes a byte tensor's shape as given
            writer.add_tensor(name, raw, raw_shape=values.shape, raw_dtype=GGML_TYPE_I2_S)  # type: ignore[arg-type]
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(params=["llama", "bitnet"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def model_path(tmp_path: Path, arch: str) -> Path:
    return write_gguf(tmp_path / f"{arch}.gguf", arch, model_tensors(arch))


# --- the forward pass ------------------------------------------------------------------


def test_logits_shape_and_hparams(model_path: Path, arch: str) -> None:
    model = load_model(model_path)
    hp = model.hparams
    assert (hp.arch, hp.n_vocab, hp.n_layer, hp.head_dim, hp.n_rot) == (arch, 300, 2, 16, 16)
    assert hp.rope_type == {"llama": "norm", "bitnet": "neox"}[arch]
    assert hp.rms_eps == pytest.approx(1e-5)
    logits = model.logits(TOKENS)
    assert logits.shape == (16, 300) and logits.dtype == np.float32
    assert np.isfinite(logits).all() and logits.std() > 0.5


def test_position_i_does_not_see_later_tokens(model_path: Path) -> None:
    model = load_model(model_path)
    full = model.logits(TOKENS)
    other_tail = model.logits(TOKENS[:8] + [2] * 8)
    np.testing.assert_allclose(full[:8], other_tail[:8], rtol=0, atol=1e-5)
    assert np.abs(full[8:] - other_tail[8:]).min(axis=1).max() > 0
    np.testing.assert_allclose(model.logits(TOKENS[:5]), full[:5], rtol=0, atol=1e-5)
    # ... while an earlier token does reach every later position.
    changed_first = model.logits([2, *TOKENS[1:]])
    assert (np.abs(changed_first - full).max(axis=1) > 1e-3).all()


def test_llama_without_output_weight_uses_the_embeddings(tmp_path: Path) -> None:
    tensors = model_tensors("llama")
    tied = {name: t for name, t in tensors.items() if name != "output.weight"}
    explicit = tied | {"output.weight": tied["token_embd.weight"].copy()}
    tied_logits = load_model(write_gguf(tmp_path / "tied.gguf", "llama", tied)).logits(TOKENS)
    explicit_model = load_model(write_gguf(tmp_path / "explicit.gguf", "llama", explicit))
    np.testing.assert_array_equal(tied_logits, explicit_model.logits(TOKENS))
    untied = load_model(write_gguf(tmp_path / "untied.gguf", "llama", tensors))
    assert not np.allclose(untied.logits(TOKENS), tied_logits)


def test_bitnet_has_no_output_weight(tmp_path: Path) -> None:
    tensors = model_tensors("bitnet") | {"output.weight": model_tensors("llama")["output.weight"]}
    path = write_gguf(tmp_path / "bitnet.gguf", "bitnet", tensors)
    with pytest.raises(XtaskError, match=r"tensors the bitnet graph does not use: \['output"):
        load_model(path)


def test_scale_tensors_multiply_their_projection(tmp_path: Path, arch: str) -> None:
    """blk.N.<m>.scale times W's output equals the product with W pre-scaled."""
    tensors = model_tensors(arch)
    scaled, prescaled = dict(tensors), dict(tensors)
    for il in range(Dims().n_layer):
        for i, m in enumerate(PROJECTIONS):
            factor = np.float32(2.0 ** (i % 3 - 1))  # powers of two: exact in float32
            scaled[f"blk.{il}.{m}.scale"] = np.array([factor], dtype=np.float32)
            prescaled[f"blk.{il}.{m}.weight"] = tensors[f"blk.{il}.{m}.weight"] * factor
    with_scales = load_model(write_gguf(tmp_path / "s.gguf", arch, scaled)).logits(TOKENS)
    folded = load_model(write_gguf(tmp_path / "p.gguf", arch, prescaled)).logits(TOKENS)
    np.testing.assert_allclose(with_scales, folded, rtol=1e-6, atol=1e-5)
    plain = load_model(write_gguf(tmp_path / "plain.gguf", arch, tensors)).logits(TOKENS)
    assert not np.allclose(with_scales, plain, atol=1e-3)


def test_rope_freqs_and_linear_scaling_read_from_the_file(tmp_path: Path) -> None:
    """Dividing every frequency by 2 (llama 3's rope_freqs) equals linear scaling by 2."""
    tensors = model_tensors("llama")
    freqs = tensors | {"rope_freqs.weight": np.full(8, 2.0, dtype=np.float32)}
    by_tensor = load_model(write_gguf(tmp_path / "f.gguf", "llama", freqs))
    linear: dict[str, float | str] = {"rope.scaling.type": "linear", "rope.scaling.factor": 2.0}
    by_key = load_model(write_gguf(tmp_path / "k.gguf", "llama", tensors, extra_keys=linear))
    assert by_key.hparams.rope_freq_scale == 0.5
    np.testing.assert_allclose(by_tensor.logits(TOKENS), by_key.logits(TOKENS), atol=1e-5)
    plain = load_model(write_gguf(tmp_path / "plain.gguf", "llama", tensors))
    assert not np.allclose(plain.logits(TOKENS), by_key.logits(TOKENS), atol=1e-3)


def test_weights_that_do_not_fit_the_cache_are_read_again(model_path: Path) -> None:
    uncached = load_model(model_path, weight_cache_bytes=0)
    np.testing.assert_array_equal(uncached.logits(TOKENS), load_model(model_path).logits(TOKENS))
    np.testing.assert_array_equal(uncached.logits(TOKENS), uncached.logits(TOKENS))


def test_greedy_is_the_argmax_fed_back(model_path: Path) -> None:
    model = load_model(model_path)
    tokens = TOKENS[:6]
    expected: list[int] = []
    for _ in range(4):
        expected.append(int(np.argmax(model.logits(tokens + expected)[-1])))
    assert model.greedy(tokens, 4) == expected
    assert model.greedy(tokens, 0) == []


def test_i2_s_reads_as_the_same_weights_as_tq2_0(tmp_path: Path) -> None:
    """Fixtures of one seed share ternary weights, which i2_s and tq2_0 both store exactly."""
    i2_s = generate_fixture("tiny", "bitnet", "i2_s", 3, tmp_path).model
    tq2_0 = generate_fixture("tiny", "bitnet", "tq2_0", 3, tmp_path).model
    tokens = [1, 50, 300, 7, 9]
    np.testing.assert_array_equal(load_model(i2_s).logits(tokens), load_model(tq2_0).logits(tokens))


# --- the model's definition ------------------------------------------------------------


def test_relu2_and_silu_are_the_definitions_activations() -> None:
    x = np.array([-3.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(relu2(x), [0.0, 0.0, 0.0, 0.25, 4.0])
    torch = pytest.importorskip("torch")
    activations = pytest.importorskip("transformers.activations")
    grid = np.linspace(-8.0, 8.0, 161)
    for name, ours in (("relu2", relu2), ("silu", silu)):
        theirs = activations.ACT2FN[name](torch.tensor(grid, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(ours(grid), theirs, rtol=1e-12, atol=1e-300)


def test_choices_say_what_was_used_and_why(tmp_path: Path) -> None:
    bitnet = write_gguf(tmp_path / "b.gguf", "bitnet", model_tensors("bitnet"))
    used = load_model(bitnet).choices()
    assert used["ffn_activation"]["value"] == "relu2"
    assert used["ffn_activation"]["from"].startswith("definition of bitnet: BitNetMLP.forward")
    assert used["ffn_activation"]["from"].endswith("; no GGUF key carries it")
    assert (used["sub_norms"]["value"], used["rope"]["value"]) == (True, "neox")
    assert used["head_tensor"]["value"] == "token_embd.weight"
    assert used["rms_norm_eps"]["value"] == pytest.approx(1e-5)
    assert used["rms_norm_eps"]["from"] == "bitnet.attention.layer_norm_rms_epsilon in the file"
    assert used["rope_freq_base"] == {"value": 10000.0, "from": "bitnet.rope.freq_base in the file"}
    assert used["activation_quant"]["value"] == "none"
    engine = load_model(bitnet, graph="llama.cpp").choices()
    assert engine["ffn_activation"]["value"] == "silu"
    assert engine["ffn_activation"]["from"].startswith(
        "llama.cpp 0c1e57098 src/models/bitnet.cpp:127-132: build_ffn(..., LLM_FFN_SILU"
    )
    assert "not the model's definition, which computes 'relu2'" in engine["ffn_activation"]["from"]
    assert engine["sub_norms"]["from"].endswith("(as the definition)")
    tied = {n: w for n, w in model_tensors("llama").items() if n != "output.weight"}
    llama = load_model(write_gguf(tmp_path / "l.gguf", "llama", tied)).choices()
    assert llama["ffn_activation"]["value"] == "silu"
    assert "LlamaConfig.hidden_act default 'silu'" in llama["ffn_activation"]["from"]
    assert (llama["sub_norms"]["value"], llama["rope"]["value"]) == (False, "norm")
    assert llama["head_tensor"]["value"] == "token_embd.weight"
    assert llama["activation_quant"]["value"] == "none"


def test_a_file_without_a_rope_base_takes_the_graphs_default(tmp_path: Path) -> None:
    """BitNetConfig's default_theta is 500000, llama.cpp's default base 10000."""
    path = write_gguf(tmp_path / "b.gguf", "bitnet", model_tensors("bitnet"), rope_base=None)
    definition = load_model(path)
    assert definition.hparams.rope_freq_base == 500000.0
    assert definition.choices()["rope_freq_base"]["from"].startswith(
        "the file has no bitnet.rope.freq_base: definition of bitnet: BitNetConfig.default_theta"
    )
    assert load_model(path, graph="llama.cpp").hparams.rope_freq_base == 10000.0


def test_an_engine_graph_without_facts_is_refused(model_path: Path) -> None:
    with pytest.raises(UsageError, match="no engine-graph facts for engine 'vllm'"):
        load_model(model_path, graph="vllm")  # type: ignore[arg-type]


HF_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_sub_norm": "self_attn.attn_sub_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_sub_norm": "mlp.ffn_sub_norm",
}


def hf_name(name: str) -> str:
    """GGUF tensor name -> the transformers state-dict key it converts from."""
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    stem = name.removesuffix(".weight")
    if stem in top:
        return f"{top[stem]}.weight"
    _, layer, role = stem.split(".")
    return f"model.layers.{layer}.{HF_NAMES[role]}.weight"


def hf_model(arch: str, tensors: dict[str, Floats], dims: Dims) -> Any:
    """transformers' model of `arch` holding `tensors` (GGUF names, checkpoint layout)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kind = {"llama": transformers.LlamaConfig, "bitnet": transformers.BitNetConfig}[arch]
    config = kind(
        vocab_size=dims.n_vocab, hidden_size=dims.n_embd, intermediate_size=dims.n_ff,
        num_hidden_layers=dims.n_layer, num_attention_heads=dims.n_head,
        num_key_value_heads=dims.n_head_kv, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings="output.weight" not in tensors, bos_token_id=1, eos_token_id=2,
        attn_implementation="eager",
    )  # fmt: skip
    model = {"llama": transformers.LlamaForCausalLM, "bitnet": transformers.BitNetForCausalLM}
    hf = model[arch](config).to(torch.float64).eval()
    state = {hf_name(n): torch.tensor(w, dtype=torch.float64) for n, w in tensors.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if config.tie_word_embeddings:
        hf.tie_weights()
    return hf


@pytest.mark.parametrize(("arch", "tied"), [("llama", False), ("llama", True), ("bitnet", True)])
def test_definition_matches_transformers(tmp_path: Path, arch: str, tied: bool) -> None:
    """The reference on a GGUF of a checkpoint's tensors computes transformers' logits
    (a bitnet GGUF has no output tensor: its checkpoint's head is tied)."""
    torch = pytest.importorskip("torch")
    dims = Dims()
    tensors = model_tensors(arch, dims, seed=9)
    if tied:
        tensors.pop("output.weight", None)
    hf = hf_model(arch, tensors, dims)
    in_file = dict(tensors)
    if arch == "llama":  # what LlamaModel.modify_tensors writes (conversion/llama.py:260-264)
        for il in range(dims.n_layer):
            q, k = f"blk.{il}.attn_q.weight", f"blk.{il}.attn_k.weight"
            in_file[q], in_file[k] = (
                permute(in_file[q], dims.n_head),
                permute(in_file[k], dims.n_head_kv),
            )
    ours = load_model(write_gguf(tmp_path / "m.gguf", arch, in_file, dims)).logits(TOKENS)
    with torch.no_grad():
        theirs = hf(torch.tensor([TOKENS])).logits[0].numpy()
    comparison = compare_logits(theirs, ours)
    assert float(comparison.max_abs_diff.max()) < 1e-4
    assert float(comparison.kl.max()) < 1e-8


# --- the steps, on known answers -------------------------------------------------------


def rope_hparams(n_rot: int, head_dim: int, rope_type: RopeType) -> Hparams:
    return Hparams(
        arch="llama" if rope_type == "norm" else "bitnet",
        n_vocab=8,
        n_ctx_train=16,
        n_embd=head_dim,
        n_layer=1,
        n_head=1,
        n_head_kv=1,
        head_dim=head_dim,
        n_ff=8,
        n_rot=n_rot,
        rope_type=rope_type,
        rope_freq_base=10000.0,
        rope_freq_scale=1.0,
        rms_eps=1e-5,
    )


@pytest.mark.parametrize(
    ("rope_type", "expected"),
    [
        ("norm", [math.cos(1), math.sin(1), 0.0, 0.0]),  # rotates (x0, x1)
        ("neox", [math.cos(1), 0.0, math.sin(1), 0.0]),  # rotates (x0, x2)
    ],
)
def test_rope_pairs(rope_type: RopeType, expected: list[float]) -> None:
    cos, sin = rope_angles(rope_hparams(4, 4, rope_type), np.arange(2), None)
    x = np.zeros((2, 1, 4))
    x[:, 0, 0] = 1.0
    out = rope(x, cos, sin, rope_type)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.0, 0.0])  # position 0: no rotation
    np.testing.assert_allclose(out[1, 0], expected)  # position 1, pair 0: theta = 1 rad


def test_rope_frequencies() -> None:
    hp = rope_hparams(4, 4, "norm")
    cos, _ = rope_angles(hp, np.arange(3), None)
    # theta[p, i] = p * base^(-2i/n_rot): pair 1 of a 4-wide rotation turns by p / 100.
    np.testing.assert_allclose(cos[:, 0, 1], np.cos([0.0, 0.01, 0.02]))
    scaled, _ = rope_angles(replace(hp, rope_freq_scale=0.5), np.arange(3), None)
    np.testing.assert_allclose(scaled[2], cos[1])
    divided, _ = rope_angles(hp, np.arange(3), np.array([1.0, 2.0], dtype=np.float32))
    np.testing.assert_allclose(divided[2, 0, 1], cos[1, 0, 1])


def test_partial_rope_leaves_the_rest_of_the_head() -> None:
    cos, sin = rope_angles(rope_hparams(2, 4, "neox"), np.arange(3), None)
    x = np.random.default_rng(0).standard_normal((3, 2, 4))
    out = rope(x, cos, sin, "neox")
    np.testing.assert_array_equal(out[..., 2:], x[..., 2:])
    assert not np.allclose(out[1:, :, :2], x[1:, :, :2])


def test_attention_groups_query_heads_onto_kv_heads() -> None:
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((3, 4, 8)), rng.standard_normal((3, 2, 8))
    v = rng.standard_normal((3, 2, 8))
    out = causal_attention(q, k, v, 1 / math.sqrt(8)).reshape(3, 4, 8)
    # Position 0 sees only itself: query heads 0-1 read KV head 0, heads 2-3 KV head 1.
    np.testing.assert_allclose(out[0], v[0, [0, 0, 1, 1]])
    scores = q[2, 3] @ k[:, 1].T / math.sqrt(8)
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(out[2, 3], weights @ v[:, 1])


def test_rms_norm() -> None:
    out = rms_norm(np.array([[3.0, 4.0]]), np.array([1.0, 2.0], dtype=np.float32), 0.5)
    np.testing.assert_allclose(out[0], [3 / math.sqrt(13.0), 8 / math.sqrt(13.0)])


# --- what the reference refuses --------------------------------------------------------


def test_unknown_architecture(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "gpt2.gguf", "gpt2", model_tensors("llama"))
    with pytest.raises(XtaskError, match="architecture 'gpt2' is not one the reference"):
        load_model(path)


def test_missing_and_misshapen_tensors(tmp_path: Path) -> None:
    tensors = model_tensors("bitnet")
    missing = {n: t for n, t in tensors.items() if n != "blk.1.ffn_sub_norm.weight"}
    with pytest.raises(XtaskError, match=r"tensors missing: blk\.1\.ffn_sub_norm\.weight"):
        load_model(write_gguf(tmp_path / "m.gguf", "bitnet", missing))
    bad = tensors | {"blk.0.attn_k.weight": tensors["blk.0.attn_q.weight"]}
    with pytest.raises(XtaskError, match=r"blk\.0\.attn_k\.weight has shape \(64, 64\)"):
        load_model(write_gguf(tmp_path / "s.gguf", "bitnet", bad))


def test_yarn_is_refused(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "y.gguf",
        "llama",
        model_tensors("llama"),
        extra_keys={"rope.scaling.type": "yarn"},
    )
    with pytest.raises(XtaskError, match="RoPE scaling 'yarn' is not implemented"):
        load_model(path)


def test_bad_tokens_and_files(model_path: Path, tmp_path: Path) -> None:
    model = load_model(model_path)
    with pytest.raises(XtaskError, match=r"token ids must lie in \[0, 300\)"):
        model.logits([1, 300])
    with pytest.raises(XtaskError, match="non-empty"):
        model.logits([])
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(model_path.read_bytes()[:-100])
    with pytest.raises(XtaskError, match="runs past the end of the file"):
        load_model(truncated).logits(TOKENS)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"definitely not a model")
    with pytest.raises(XtaskError, match=r"cannot read .* as GGUF"):
        load_model(not_gguf)


# --- against llama.cpp -----------------------------------------------------------------


def run_harness(
    harness: Path, model: Path, tokens: list[int], out: Path
) -> tuple[Floats, list[int]] | str:
    """llama.cpp's logits (N x V float32) and greedy continuation, or its error message."""
    ids = ",".join(map(str, tokens))
    command: list[str | Path] = [
        harness,
        "--model",
        model,
        "--tokens",
        ids,
        "--out",
        out,
        "--n-predict",
        "8",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        return proc.stderr.strip()
    n_vocab = json.loads((out / "tokens.json").read_text())["n_vocab"]
    logits = np.fromfile(out / "logits.f32", dtype="<f4").reshape(len(tokens), n_vocab)
    continuation: list[int] = json.loads((out / "continuation.json").read_text())["tokens"]
    return logits, continuation


def own_model(tmp_path: Path, name: str) -> Path:
    """A model written here (`llama`, `llama-tied`, `bitnet`), or gen-fixtures' tiny
    bitnet f32 (`fixture-bitnet`)."""
    if name == "fixture-bitnet":
        return generate_fixture("tiny", "bitnet", "f32", 3, tmp_path).model
    arch, _, variant = name.partition("-")
    tensors = model_tensors(arch, seed=5)
    if variant == "tied":
        del tensors["output.weight"]
    return write_gguf(tmp_path / f"{name}.gguf", arch, tensors)


def against_llama_cpp(
    llama_bin: Path, tmp_path: Path, path: Path, model: ReferenceModel
) -> tuple[LogitsComparison, list[str]]:
    """The reference's logits and greedy continuation against llama.cpp's on 24 tokens:
    the comparison, and the strict profile's failures (empty: it passes)."""
    tokens = [int(t) for t in np.random.default_rng(1).integers(3, model.hparams.n_vocab, 24)]
    result = run_harness(llama_bin / "xtask-logits", path, tokens, tmp_path / "out")
    if isinstance(result, str):
        pytest.fail(f"xtask-logits failed on {path.name}: {result}")
    cpp_logits, cpp_continuation = result
    comparison = compare_logits(model.logits(tokens), cpp_logits)
    greedy = compare_greedy(model.greedy(tokens, 8), cpp_continuation)
    judged = verdict(comparison, PROFILES["strict"], greedy)
    return comparison, [f.message() for f in judged.failures]


CASES: tuple[tuple[str, GraphName], ...] = (
    ("llama", "definition"),
    ("llama-tied", "definition"),
    ("bitnet", "llama.cpp"),
    ("fixture-bitnet", "llama.cpp"),
)


@pytest.mark.parametrize(("name", "graph"), CASES)
def test_matches_llama_cpp(llama_bin: Path, tmp_path: Path, name: str, graph: GraphName) -> None:
    """llama's definition is llama.cpp's graph; for bitnet, the `llama.cpp` variant is."""
    path = own_model(tmp_path, name)
    _, failures = against_llama_cpp(llama_bin, tmp_path, path, load_model(path, graph=graph))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["bitnet", "fixture-bitnet"])
def test_bitnet_definition_differs_from_llama_cpp_in_the_activation(
    llama_bin: Path, tmp_path: Path, name: str
) -> None:
    """llama.cpp computes SiLU where the definition computes relu^2: the definition fails
    against it by far, and with SiLU in its place it is the llama.cpp variant exactly."""
    path = own_model(tmp_path, name)
    definition = load_model(path)
    comparison, failures = against_llama_cpp(llama_bin, tmp_path, path, definition)
    assert failures, "relu^2 and SiLU FFNs should not agree within the strict profile"
    assert float(comparison.kl.max()) > 0.05
    chosen = choose_graph("bitnet")
    silu_graph = replace(chosen, graph=replace(chosen.graph, ffn_activation="silu"))
    swapped = ReferenceModel(definition.gguf, definition.hparams, chosen=silu_graph)
    tokens = TOKENS[:10]
    engine_graph = load_model(path, graph="llama.cpp")
    np.testing.assert_array_equal(swapped.logits(tokens), engine_graph.logits(tokens))
