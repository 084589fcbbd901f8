"""The reference forward pass: the model definitions of `definitions`, in NumPy.

crossval compares engines against this module, so it is written to be read, as the
executable specification of the architectures: one small function per step, nothing
fused; the only state is the KV cache of incremental decoding (`KVCache`), one separate
step. It follows each model's definition, its Hugging Face transformers implementation
(`definitions`: the modeling file, the classes, the config fields, and which GGUF key
carries each choice), applied to the tensors of the GGUF file as they are (llama.cpp's
converter permutes a llama checkpoint's Q/K rows for its RoPE, which is why the file's
RoPE is NORM).

- llama (LlamaForCausalLM): x += W_o attn(rope(W_q h), rope(W_k h), W_v h) with
  h = rmsnorm(x); x += W_down (act(W_gate h) * W_up h) with h = rmsnorm(x), act = SiLU;
  the head is `output.weight`, or `token_embd.weight` when the file has none (tied).
- bitnet (BitNetForCausalLM): the same, plus an RMSNorm on the attention output before
  W_o (`attn_sub_norm`) and one on the gated FFN before W_down (`ffn_sub_norm`). The
  activation is squared ReLU, relu(x)^2 (BitNetConfig.hidden_act "relu2"): no GGUF key
  says so (upstream's converter writes none), so it is the definition of the family
  the file claims. RoPE is NEOX on the file; the head is always `token_embd.weight`.
  Each projection may have a one-element `*.scale` tensor that multiplies its output.
- bitnet-b1.58 and bitnet-25 (BitNet b1.58 2B-4T, as microsoft/BitNet's converter names
  it): bitnet's graph with the BitLinear quantization its checkpoints declare: every
  projection's input is quantized to int8 per token (`bitlinear`), the weights are the
  file's ternary values times their scale, and the head is `output.weight` when the file
  has one, else the embeddings (2B-4T is tied).

Where an engine's graph differs from the definition, `engine_graphs` records it with
its source line: llama.cpp's and bitnet.cpp's `bitnet` graphs compute SiLU
(src/models/bitnet.cpp:132 at 0c1e57098), and a file without a RoPE base gets 10000
from every engine where BitNetConfig's default is 500000. `load_model(..., graph="llama.cpp")` runs
that graph instead: the same forward pass with the engine's recorded facts in place of
the definition's choices, named as such in `ReferenceModel.choices()`; never the default.

Precision: weights are exactly what the file holds (ggml's own dequantization, or
ternary codes and their scale), activations are float64, quantized to int8 where the
definition quantizes them (the integer products then are exact), and the logits come
back as float32, llama.cpp's output type. An engine differs from this by its own
rounding (an f16 KV cache, activations quantized inside quantized matrix products),
which crossval's tolerance profiles account for. Weights are read from the
memory-mapped file when a step first needs them and kept up to a budget
(DEFAULT_WEIGHT_CACHE_BYTES; `reference_weights` is the memory plan), so a small model
is read once and a large one still runs, re-reading what did not fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_xtask.crossval.definitions import (
    DEFINITIONS,
    GRAPH_CHOICES,
    Activation,
    Graph,
    RopeType,
)
from bitnet_xtask.crossval.engine_graphs import ChosenGraph, GraphName, choose_graph
from bitnet_xtask.crossval.gguf_file import GGUFFile
from bitnet_xtask.crossval.reference_weights import (
    Matrix,
    ReferenceFile,
    Ternary,
    WeightStore,
)
from bitnet_xtask.errors import UsageError, XtaskError

Floats = npt.NDArray[np.float64]
Logits = npt.NDArray[np.float32]

Tracer = Callable[[str, npt.NDArray[Any], str], None]
"""Called with (name, tensor, op) at each step of the prompt's evaluation (`--trace`):
the names and ops are llama.cpp's graph's (`trace_map`), the tensor positions first."""


def _untraced(name: str, tensor: npt.NDArray[Any], op: str) -> None:
    """The tracer of an evaluation nobody traces."""


DEFAULT_WEIGHT_CACHE_BYTES = 2 << 30
"""How many bytes of weights (float32, or int8 ternary codes) a model keeps between steps
and calls: 2 GiB holds BitNet b1.58 2B-4T's 2.08 G ternary codes."""

PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
"""The per-layer matrices; each may come with a one-element `blk.N.<name>.scale`."""


# --- hyperparameters ------------------------------------------------------------------


@dataclass(frozen=True)
class Hparams:
    """What the forward pass takes from the metadata (and n_vocab from token_embd)."""

    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_rot: int
    rope_type: RopeType
    rope_freq_base: float
    rope_freq_scale: float
    rms_eps: float


def _unsupported(path: Path, what: str) -> UsageError:
    return UsageError(
        f"{path}: {what}",
        hint=f"the reference implements the model definitions of {', '.join(DEFINITIONS)}",
    )


@dataclass(frozen=True)
class _Keys:
    """The `<arch>.*` metadata of one file, each value checked for its kind as it is read
    (a count is a whole number >= 1, a real number is finite): the header is the user's
    file, and a zero head count or a string where a number belongs must be refused by
    name, not fail as a ZeroDivisionError. Absent keys take llama.cpp's defaults."""

    gguf: GGUFFile
    path: Path
    arch: str

    def scalar(self, key: str, default: float | str | None = None) -> Any:
        value = self.gguf.metadata(f"{self.arch}.{key}")
        if value is None and default is None:
            raise _unsupported(self.path, f"the required key {self.arch}.{key} is missing")
        if isinstance(value, list):
            raise _unsupported(self.path, f"{self.arch}.{key} varies by layer")
        return default if value is None else value

    def count(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.scalar(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _unsupported(
                self.path, f"{self.arch}.{key} is {value!r}, not a whole number >= {minimum}"
            )
        return value

    def real(self, key: str, default: float | None = None) -> float:
        value = self.scalar(key, default)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value)):
            raise _unsupported(self.path, f"{self.arch}.{key} is {value!r}, not a finite number")
        return float(value)


def _refuse_unimplemented(keys: _Keys) -> None:
    """What the two graphs do not do: experts, RoPE scaling other than linear."""
    if keys.count("expert_count", 0, minimum=0) > 0:
        raise _unsupported(keys.path, "mixture-of-experts models are not implemented")
    scaling = keys.scalar("rope.scaling.type", "linear")
    if scaling not in ("none", "linear"):
        raise _unsupported(keys.path, f"RoPE scaling {scaling!r} is not implemented")


def _heads(keys: _Keys) -> tuple[int, int, int, int]:
    """n_embd, n_head, n_head_kv and head_dim, checked to fit together."""
    n_embd = keys.count("embedding_length")
    n_head = keys.count("attention.head_count")
    head_dim = keys.count("attention.key_length", n_embd // n_head)
    if keys.count("attention.value_length", head_dim) != head_dim:
        raise _unsupported(keys.path, "key and value heads of different sizes are not implemented")
    n_head_kv = keys.count("attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise _unsupported(
            keys.path, f"{n_head} query heads do not share {n_head_kv} KV heads evenly"
        )
    return n_embd, n_head, n_head_kv, head_dim


def _layers_and_rope(keys: _Keys, n_tensors: int, head_dim: int) -> tuple[int, int]:
    """n_layer (each layer has nine tensors or more) and n_rot (within a head; all of it
    for llama's NORM RoPE)."""
    n_layer = keys.count("block_count")
    if n_layer > n_tensors:
        raise _unsupported(keys.path, f"{n_layer} layers, but the file holds only "
                                      f"{n_tensors} tensors")  # fmt: skip
    n_rot = keys.count("rope.dimension_count", head_dim)
    if n_rot > head_dim or n_rot % 2 or (keys.arch == "llama" and n_rot != head_dim):
        raise _unsupported(
            keys.path, f"rope.dimension_count {n_rot} does not fit heads of {head_dim}"
        )
    return n_layer, n_rot


def architecture(gguf: GGUFFile, path: Path) -> str:
    """The file's `general.architecture`, one of the `definitions` the reference implements."""
    arch = gguf.metadata("general.architecture")
    if not isinstance(arch, str) or arch not in DEFINITIONS:
        raise _unsupported(path, f"architecture {arch!r} is not one the reference implements")
    return arch


def read_hparams(gguf: GGUFFile, path: Path, graph: Graph | None = None) -> Hparams:
    """The hyperparameters, with llama.cpp's defaults for the optional keys (`_Keys`),
    except the RoPE base, whose default is `graph`'s (the definition's when None)."""
    arch = architecture(gguf, path)
    graph = graph or DEFINITIONS[arch].graph
    keys = _Keys(gguf, path, arch)
    _refuse_unimplemented(keys)
    embedding = gguf.tensor_infos.get("token_embd.weight")
    if embedding is None or len(embedding.shape) != 2:
        raise _unsupported(path, "the tensor token_embd.weight is missing or not a matrix")
    n_embd, n_head, n_head_kv, head_dim = _heads(keys)
    n_layer, n_rot = _layers_and_rope(keys, len(gguf.tensor_infos), head_dim)
    factor = keys.real("rope.scaling.factor", 0.0)
    return Hparams(
        arch=arch,
        n_vocab=embedding.shape[0],
        n_ctx_train=keys.count("context_length"),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=keys.count("feed_forward_length"),
        n_rot=n_rot,
        rope_type=graph.rope,
        rope_freq_base=keys.real("rope.freq_base", graph.rope_freq_base_default),
        rope_freq_scale=1.0 if factor == 0.0 else 1.0 / factor,
        rms_eps=keys.real("attention.layer_norm_rms_epsilon"),
    )


def tensor_shapes(hp: Hparams) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional) tensor names with their NumPy shapes, as llama.cpp loads them.

    A matrix is (out, in): y = x @ W.T, which is ggml_mul_mat(W, x).
    """
    q_dim, kv_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    graph = DEFINITIONS[hp.arch].graph
    required: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (hp.n_vocab, hp.n_embd),
        "output_norm.weight": (hp.n_embd,),
    }
    optional: dict[str, tuple[int, ...]] = {}
    if graph.head == "output_else_token_embd":
        optional["output.weight"] = (hp.n_vocab, hp.n_embd)
    if hp.arch == "llama":
        optional["rope_freqs.weight"] = (hp.n_rot // 2,)  # llama 3's per-frequency divisors
    for il in range(hp.n_layer):
        blk = f"blk.{il}."
        matrices = {
            "attn_q": (q_dim, hp.n_embd),
            "attn_k": (kv_dim, hp.n_embd),
            "attn_v": (kv_dim, hp.n_embd),
            "attn_output": (hp.n_embd, q_dim),
            "ffn_gate": (hp.n_ff, hp.n_embd),
            "ffn_up": (hp.n_ff, hp.n_embd),
            "ffn_down": (hp.n_embd, hp.n_ff),
        }
        required.update({f"{blk}{m}.weight": shape for m, shape in matrices.items()})
        optional.update({f"{blk}{m}.scale": (1,) for m in PROJECTIONS})
        required[f"{blk}attn_norm.weight"] = (hp.n_embd,)
        required[f"{blk}ffn_norm.weight"] = (hp.n_embd,)
        if graph.sub_norms:
            required[f"{blk}attn_sub_norm.weight"] = (q_dim,)
            required[f"{blk}ffn_sub_norm.weight"] = (hp.n_ff,)
    return required, optional


def _check_tensors(gguf: GGUFFile, hp: Hparams, path: Path) -> None:
    """Every tensor the graph needs is there with its shape, and no other is (as llama.cpp)."""
    required, optional = tensor_shapes(hp)
    expected = {**optional, **required}
    present = gguf.tensor_infos
    missing = sorted(set(required) - set(present))
    unknown = sorted(set(present) - set(expected))
    if missing:
        raise _unsupported(path, f"tensors missing: {', '.join(missing[:5])}")
    if unknown:
        raise _unsupported(path, f"tensors the {hp.arch} graph does not use: {unknown[:5]}")
    for name, info in present.items():
        if info.shape != expected[name]:
            raise _unsupported(path, f"{name} has shape {info.shape}, expected {expected[name]}")


# --- the steps of the graph -----------------------------------------------------------


def rms_norm(x: Floats, weight: npt.NDArray[np.float32], eps: float) -> Floats:
    """ggml_rms_norm then ggml_mul: x / sqrt(mean(x^2) + eps) * weight, per row."""
    normed: Floats = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return normed * weight.astype(np.float64)


def linear(x: Floats, weight: Matrix) -> Floats:
    """x @ W.T, which is ggml_mul_mat(W, x) for W of shape (out, in).

    The explicit cast to float64 keeps NumPy on BLAS (a mixed-type product is ~6x slower).
    """
    if isinstance(weight, Ternary):
        y: Floats = (x @ weight.codes.astype(np.float64).T) * weight.scale
        return y
    product: Floats = x @ weight.astype(np.float64).T
    return product


def quantize_activations(x: Floats) -> tuple[Floats, Floats]:
    """BitLinear's input quantization, per token (row): q = clamp(round(x * s), -128, 127)
    with s = 127 / max|x| (max|x| clamped to 1e-5): transformers' `ActQuant.forward` and
    `BitLinear.activation_quant` (integrations/bitnet.py:233-238, 174-178). Returns the
    integers q (as floats) and s per row, shape (n, 1); x is about q / s. NumPy's round,
    like torch's, rounds halves to even."""
    scale: Floats = 127.0 / np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
    q: Floats = np.clip(np.round(x * scale), -128.0, 127.0)
    return q, scale


def bitlinear(x: Floats, weight: Matrix) -> Floats:
    """A BitLinear projection: int8 activations (`quantize_activations`) times the weights,
    (q @ W.T) / s, which is transformers' F.linear(ActQuant(x), W) (integrations/bitnet.py
    :269-281). For a ternary W the integer product q @ codes.T is computed in float32,
    exactly: every partial sum is a whole number of magnitude at most 128 * 2 * width,
    below 2**24 for rows narrower than 65536, so one matrix is widened to 4 bytes a
    weight, not 8 (wider rows take the float64 path).
    """
    q, scale = quantize_activations(x)
    if isinstance(weight, Ternary) and weight.shape[-1] < 65536:
        product = q.astype(np.float32) @ weight.codes.astype(np.float32).T
        y: Floats = product.astype(np.float64) * (weight.scale / scale)
        return y
    return linear(q, weight) / scale


def silu(x: Floats) -> Floats:
    """x * sigmoid(x): transformers' ACT2FN["silu"], llama.cpp's ggml_silu."""
    return x / (1.0 + np.exp(-x))


def relu2(x: Floats) -> Floats:
    """relu(x)^2: transformers' ACT2FN["relu2"] (ReLUSquaredActivation, activations.py:206),
    llama.cpp's LLM_FFN_RELU_SQR (ggml_relu then ggml_sqr)."""
    positive: Floats = np.maximum(x, 0.0)
    return positive * positive


ACTIVATIONS: dict[Activation, Callable[[Floats], Floats]] = {"silu": silu, "relu2": relu2}
"""The FFN activations, by the name `definitions.Graph.ffn_activation` gives."""


def rope_angles(
    hp: Hparams, positions: npt.NDArray[np.int64], freq_factors: npt.NDArray[np.float32] | None
) -> tuple[Floats, Floats]:
    """cos and sin of theta[p, i] = p * freq_scale * base^(-2i/n_rot) / freq_factors[i]
    for each position p of `positions`.

    Shapes (n_pos, 1, n_rot/2), to broadcast over heads. ggml_rope_cache_init computes
    the same angles (in float32, iteratively); YaRN's ext_factor is 0 for linear scaling.
    """
    inv_freq = hp.rope_freq_base ** (-np.arange(0, hp.n_rot, 2, dtype=np.float64) / hp.n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    theta = positions.astype(np.float64)[:, None] * (hp.rope_freq_scale * inv_freq)
    return np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]


def rope(x: Floats, cos: Floats, sin: Floats, rope_type: RopeType) -> Floats:
    """Rotate the first n_rot dimensions of each head (x: n_pos, n_heads, head_dim).

    NORM pairs adjacent dimensions (2i, 2i+1); NEOX pairs i with i + n_rot/2. Dimensions
    past n_rot pass through.
    """
    n_rot = 2 * cos.shape[-1]
    if rope_type == "norm":
        first, second = np.arange(0, n_rot, 2), np.arange(1, n_rot, 2)
    else:
        first, second = np.arange(n_rot // 2), np.arange(n_rot // 2, n_rot)
    out: Floats = x.copy()
    out[..., first] = x[..., first] * cos - x[..., second] * sin
    out[..., second] = x[..., first] * sin + x[..., second] * cos
    return out


def causal_attention(q: Floats, k: Floats, v: Floats, kq_scale: float) -> Floats:
    """softmax(q k^T * scale + causal mask) v, with grouped-query heads.

    q: (n_new, n_head, d), the last n_new positions; k, v: (n_pos, n_head_kv, d), every
    position so far (n_pos >= n_new): query i is position n_pos - n_new + i and sees keys
    0 to that position. Query head h reads KV head h // (n_head / n_head_kv), as ggml's
    broadcasting mul_mat and flash attention do. Returns (n_new, n_head * d).
    """
    n_new, n_head, head_dim = q.shape
    n_pos = k.shape[0]
    group = n_head // k.shape[1]
    k = np.repeat(k, group, axis=1).transpose(1, 2, 0)  # (n_head, d, n_pos)
    v = np.repeat(v, group, axis=1).transpose(1, 0, 2)  # (n_head, n_pos, d)
    scores = (q.transpose(1, 0, 2) @ k) * kq_scale  # (n_head, n_new, n_pos)
    future = np.triu(np.ones((n_new, n_pos), dtype=bool), k=n_pos - n_new + 1)
    scores[:, future] = -np.inf
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    out: Floats = (weights @ v).transpose(1, 0, 2).reshape(n_new, n_head * head_dim)
    return out


@dataclass
class KVCache:
    """The keys (after RoPE) and values of every position evaluated so far, per layer:
    what incremental decoding keeps, so that a new token costs one position, not all."""

    keys: list[Floats]
    values: list[Floats]

    @classmethod
    def empty(cls, hp: Hparams) -> KVCache:
        none = np.zeros((0, hp.n_head_kv, hp.head_dim))
        return cls([none] * hp.n_layer, [none] * hp.n_layer)

    @property
    def n_pos(self) -> int:
        return int(self.keys[0].shape[0])

    def append(self, layer: int, k: Floats, v: Floats) -> tuple[Floats, Floats]:
        """Add the new positions' k and v to `layer`; returns all of its keys and values."""
        self.keys[layer] = np.concatenate([self.keys[layer], k])
        self.values[layer] = np.concatenate([self.values[layer], v])
        return self.keys[layer], self.values[layer]


# --- the model ------------------------------------------------------------------------


class ReferenceModel:
    """A GGUF of one of the `definitions`, evaluated by the reference forward pass of
    `chosen`'s graph (the model's definition unless an engine graph was asked for)."""

    def __init__(
        self,
        gguf: ReferenceFile,
        hparams: Hparams,
        weight_cache_bytes: int = DEFAULT_WEIGHT_CACHE_BYTES,
        chosen: ChosenGraph | None = None,
    ) -> None:
        self.gguf = gguf
        self.hparams = hparams
        self.chosen = chosen or choose_graph(hparams.arch)
        quantized = self.graph.quantizes_activations
        self.weights = WeightStore(gguf, weight_cache_bytes, ternary=quantized)
        self._product = bitlinear if quantized else linear

    @property
    def graph(self) -> Graph:
        return self.chosen.graph

    def _project(self, x: Floats, layer: int, matrix: str) -> Floats:
        """The projection blk.<layer>.<matrix> of x (`linear`, or `bitlinear` when the
        graph quantizes activations), times its scale tensor when the file has one."""
        y = self._product(x, self.weights.matrix(f"blk.{layer}.{matrix}.weight"))
        scale = f"blk.{layer}.{matrix}.scale"
        if scale in self.gguf.tensor_infos:
            y = y * self.weights.array(scale)[0]
        return y

    def _norm(self, x: Floats, name: str) -> Floats:
        return rms_norm(x, self.weights.array(name), self.hparams.rms_eps)

    def _attention(
        self, x: Floats, layer: int, rope: Rope, cache: KVCache, emit: Tracer = _untraced
    ) -> Floats:
        """The attention block's contribution to the residual stream of the new positions
        x; their keys and values join `cache`."""
        hp = self.hparams
        h = self._norm(x, f"blk.{layer}.attn_norm.weight")
        emit(f"attn_norm-{layer}", h, "MUL")
        n_new = x.shape[0]
        heads = {"q": hp.n_head, "k": hp.n_head_kv, "v": hp.n_head_kv}
        qkv = {}
        for name, count in heads.items():
            projected = self._project(h, layer, f"attn_{name}")
            emit(f"{name.upper()}cur-{layer}", projected, "MUL_MAT")
            qkv[name] = projected.reshape(n_new, count, hp.head_dim)
        q, k, v = rope.apply(qkv["q"]), rope.apply(qkv["k"]), qkv["v"]
        emit(f"Qcur-{layer}", q, "ROPE")
        emit(f"Kcur-{layer}", k, "ROPE")
        keys, values = cache.append(layer, k, v)
        a = causal_attention(q, keys, values, 1.0 / math.sqrt(hp.head_dim))
        emit(f"kqv_out-{layer}", a, "CONT")
        if self.graph.sub_norms:
            a = self._norm(a, f"blk.{layer}.attn_sub_norm.weight")
            emit(f"attn_sub_norm-{layer}", a, "MUL")
        out = self._project(a, layer, "attn_output")
        emit(f"attn_out-{layer}", out, "MUL_MAT")
        return out

    def _feed_forward(self, x: Floats, layer: int, emit: Tracer = _untraced) -> Floats:
        """The FFN block's contribution to the residual stream: act(gate) * up."""
        h = self._norm(x, f"blk.{layer}.ffn_norm.weight")
        emit(f"ffn_norm-{layer}", h, "MUL")
        act = ACTIVATIONS[self.graph.ffn_activation]
        gate, up = self._project(h, layer, "ffn_gate"), self._project(h, layer, "ffn_up")
        emit(f"ffn_gate-{layer}", gate, "MUL_MAT")
        emit(f"ffn_up-{layer}", up, "MUL_MAT")
        activated = act(gate)
        emit(f"ffn_act-{layer}", activated, self.graph.ffn_activation.upper())
        f = activated * up
        emit(f"ffn_gate_par-{layer}", f, "MUL")
        if self.graph.sub_norms:
            f = self._norm(f, f"blk.{layer}.ffn_sub_norm.weight")
            emit(f"ffn_sub_norm-{layer}", f, "MUL")
        out = self._project(f, layer, "ffn_down")
        emit(f"ffn_out-{layer}", out, "MUL_MAT")
        return out

    def head_tensor(self) -> str:
        """The output matrix: output.weight, else the token embeddings (always, for bitnet)."""
        if self.graph.head == "token_embd" or "output.weight" not in self.gguf.tensor_infos:
            return "token_embd.weight"
        return "output.weight"

    def _head(self, x: Floats) -> Logits:
        """The logits of the final hidden states, by blocks of the head's rows when the
        whole head does not fit the weight budget (`WeightStore.blocks`)."""
        blocks = [linear(x, block) for block in self.weights.blocks(self.head_tensor())]
        return np.concatenate(blocks, axis=-1).astype(np.float32)

    def _check(self, tokens: npt.NDArray[np.int64]) -> None:
        n_vocab = self.hparams.n_vocab
        if tokens.ndim != 1 or tokens.size == 0:
            raise XtaskError("the reference needs a non-empty sequence of token ids")
        if tokens.min() < 0 or tokens.max() >= n_vocab:
            raise XtaskError(f"token ids must lie in [0, {n_vocab}), the model's vocabulary")

    def forward(
        self,
        token_ids: Sequence[int],
        cache: KVCache,
        last_only: bool = False,
        emit: Tracer = _untraced,
    ) -> Logits:
        """Logits after each of `token_ids`, which follow the cache's positions: (n,
        n_vocab) float32, row i after token i (only the last row when `last_only`). The
        tokens' keys and values join `cache`; `emit` sees every step's tensor."""
        tokens = np.asarray(token_ids, dtype=np.int64)
        self._check(tokens)
        rope = Rope.at(self, np.arange(cache.n_pos, cache.n_pos + tokens.size))
        x: Floats = self.weights.rows("token_embd.weight", tokens).astype(np.float64)
        emit("inp_embd", x, "GET_ROWS")
        for layer in range(self.hparams.n_layer):
            x = x + self._attention(x, layer, rope, cache, emit)
            emit(f"ffn_inp-{layer}", x, "ADD")
            x = x + self._feed_forward(x, layer, emit)
            emit(f"l_out-{layer}", x, "ADD")
        normed = self._norm(x[-1:] if last_only else x, "output_norm.weight")
        emit("result_norm", normed, "MUL")
        logits = self._head(normed)
        emit("result_output", logits, "MUL_MAT")
        return logits

    def logits(self, token_ids: Sequence[int]) -> Logits:
        """Logits after each token: (len(token_ids), n_vocab) float32, row i after token i."""
        return self.forward(token_ids, KVCache.empty(self.hparams))

    def greedy(self, token_ids: Sequence[int], n: int) -> list[int]:
        """n tokens of greedy continuation: each the argmax (first maximum) of the last row,
        decoded incrementally (one position per token, the rest from the `KVCache`).

        The semantics of xtask-logits' continuation.json, so the two compare directly.
        """
        if n == 0:
            return []
        cache = KVCache.empty(self.hparams)
        return self._continue(self.forward(token_ids, cache, last_only=True)[-1], cache, n)

    def evaluate(
        self, token_ids: Sequence[int], n: int, emit: Tracer = _untraced
    ) -> tuple[Logits, list[int]]:
        """`logits(token_ids)` and `greedy(token_ids, n)`, from one pass over the prompt
        (whose steps `emit` sees; the continuation's are not traced)."""
        cache = KVCache.empty(self.hparams)
        logits = self.forward(token_ids, cache, emit=emit)
        return logits, self._continue(logits[-1], cache, n)

    def _continue(self, last: Logits, cache: KVCache, n: int) -> list[int]:
        """n greedy tokens after the logits `last`, each fed back through `cache`."""
        tokens: list[int] = []
        while len(tokens) < n:
            tokens.append(int(np.argmax(last)))
            if len(tokens) < n:
                last = self.forward(tokens[-1:], cache, last_only=True)[-1]
        return tokens

    def choices(self) -> dict[str, dict[str, Any]]:
        """What this forward pass used for each choice and where it came from, for the
        receipt: {"ffn_activation": {"value": "relu2", "from": "definition of bitnet:
        ..."}, ...}. The graph's choices (`definitions.Graph`), then what the file said."""
        used: dict[str, dict[str, Any]] = {
            c: {"value": getattr(self.graph, c), "from": self.chosen.sources[c]}
            for c in GRAPH_CHOICES
            if c != "rope_freq_base_default"
        }
        return used | _file_choices(self)


@dataclass(frozen=True)
class Rope:
    """The RoPE angles of a run of positions, and the rotation of the model's graph."""

    cos: Floats
    sin: Floats
    rope_type: RopeType

    @classmethod
    def at(cls, model: ReferenceModel, positions: npt.NDArray[np.int64]) -> Rope:
        factors = (
            model.weights.array("rope_freqs.weight")
            if "rope_freqs.weight" in model.gguf.tensor_infos
            else None
        )
        cos, sin = rope_angles(model.hparams, positions, factors)
        return cls(cos, sin, model.hparams.rope_type)

    def apply(self, x: Floats) -> Floats:
        return rope(x, self.cos, self.sin, self.rope_type)


def _file_choices(model: ReferenceModel) -> dict[str, dict[str, Any]]:
    """The choices the file's own metadata and tensors made (`choices`)."""
    hp, arch, infos = model.hparams, model.hparams.arch, model.gguf.tensor_infos
    base_key = f"{arch}.rope.freq_base"
    if model.gguf.metadata(base_key) is None:
        base_from = f"the file has no {base_key}: {model.chosen.sources['rope_freq_base_default']}"
    else:
        base_from = f"{base_key} in the file"
    head = model.head_tensor()
    if model.graph.head == "token_embd":
        head_from = f"the {arch} head is always token_embd.weight"
    elif head == "output.weight":
        head_from = "output.weight is in the file"
    else:
        head_from = "the file has no output.weight: tied embeddings"
    used: dict[str, dict[str, Any]] = {
        "head_tensor": {"value": head, "from": head_from},
        "rms_norm_eps": {
            "value": hp.rms_eps,
            "from": f"{arch}.attention.layer_norm_rms_epsilon in the file",
        },
        "rope_freq_base": {"value": hp.rope_freq_base, "from": base_from},
        "rope_freq_scale": {
            "value": hp.rope_freq_scale,
            "from": f"{arch}.rope.scaling.type and .factor in the file (absent: 1)",
        },
        "rope_freqs": {
            "value": "rope_freqs.weight" in infos,
            "from": "per-frequency divisors from the rope_freqs.weight tensor, when present",
        },
    }
    return used


def load_model(
    path: Path | str,
    weight_cache_bytes: int = DEFAULT_WEIGHT_CACHE_BYTES,
    graph: GraphName = "definition",
) -> ReferenceModel:
    """Open a GGUF of one of the `definitions` for the reference forward pass of the
    model's definition, or of an engine's graph of it (`engine_graphs.choose_graph`).

    Raises UsageError (exit 2), naming the key or tensor, for any other architecture or
    for tensors and metadata the definition does not account for, and for an engine
    graph no facts are recorded for; GGUFFormatError (a UsageError) for a file that is
    not a whole, well-formed GGUF.
    """
    path = Path(path)
    gguf = ReferenceFile(path)  # refuses, by name, anything but a whole, well-formed GGUF
    gguf.check_readable()
    chosen = choose_graph(architecture(gguf, path), graph)
    hparams = read_hparams(gguf, path, chosen.graph)
    _check_tensors(gguf, hparams, path)
    return ReferenceModel(gguf, hparams, weight_cache_bytes, chosen)
