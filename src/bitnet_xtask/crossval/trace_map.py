"""The one map that ties every backend's intermediate tensors to the same steps.

A step is one operation of the model's graph, in graph order, named as llama.cpp's graph
names its output (`attn_norm-0`, `Qcur-0`, `ffn_out-1`, `result_norm`): the harness
captures those names through the eval callback, the NumPy reference emits them from its
steps (`reference.Tracer`), the `hf:` backend records the output (or the input) of the
transformers module that computes the step, and a `cmd:` engine writes them into its
`.npz`. Per step the map says:

- `names`: the names a trace may hold it under, the first its own (what the NumPy
  reference and the hf: backend write); of the tensors they hold, the step is the last
  in graph order (llama.cpp's `ffn_gate_s-N` after a scale, not `ffn_gate-N` before it;
  the activation is `ffn_silu-N` or `ffn_sqr(relu)-N`, whichever the engine computed);
- `ops`: which occurrence of a name it is (llama.cpp names a projection's product, its
  reshape and its RoPE output all `Qcur-N`; the op tells them apart);
- `hf`: the module, and whether its output or its input is the step's tensor;
- `inputs`: the steps it reads, so the comparison can re-run the reference's step on the
  candidate's inputs and tell error the step adds from error it inherits;
- `heads`: for per-head tensors, which head count splits the features.

The two engine generations name the same steps differently, and each name list holds
both (seen in real traces of both, tests/test_trace_harness.py):

- embeddings: `embd` upstream, `inp_embd` in the fork;
- the attention with its heads merged: `kqv_out-N` upstream (a RESHAPE of
  FLASH_ATTN_EXT); in the fork `kqv_merged_cont-N` (llama) or `kqv_out-N` (bitnet, CONT);
- W_o's output: `attn_out-N` upstream; in the fork `kqv_out-N` (llama, a MUL_MAT) or
  `attn_o_out-N` (bitnet);
- the activation: fused into the gated product upstream; `ffn_silu-N` (SILU) in the fork;
- act(gate) * up: `ffn_swiglu-N` (llama) or `ffn_sub_out-N` (bitnet), a SWIGLU, upstream;
  `ffn_gate_par-N` (llama) or `ffn_sub_out-N` (bitnet), a MUL, in the fork;
- W_down's output: `ffn_out-N` (llama) or `ffn_down-N` (bitnet) in both.

Where an engine fuses the activation into the gated product (upstream's SWIGLU), the
activation step is not in its trace and the gated product is where a wrong activation
shows; its op says which activation the engine computed (`ACTIVATION_OPS`).

Layouts: every tensor compares as (n_tokens, features) in the file's layout. Q and K of
a `llama` GGUF are in llama.cpp's layout, whose rows the converter permuted (each head's
two halves interleaved, conversion/llama.py:176-181 at 0c1e57098), so the hf: backend's
q_proj/k_proj outputs are permuted the same way (`to_file_layout`); the BitNet
converters do not permute (conversion/bitnet.py), and neither is done for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

ACTIVATION_OPS = {"SILU": "silu", "SWIGLU": "silu", "RELU2": "relu2", "SQR": "relu2",
                  "GELU": "gelu", "GEGLU": "gelu", "RELU": "relu", "REGLU": "relu"}  # fmt: skip
"""The FFN activation an op computes, as `definitions.Activation` names it: ggml's unary
and GLU ops (SWIGLU is silu(gate) * up), and the NumPy reference's `RELU2`."""

Side = Literal["output", "input"]
Heads = Literal["q", "kv"]


@dataclass(frozen=True)
class HFSource:
    """Where transformers computes a step: `module` (under the decoder layer for a block
    step, under the CausalLM model otherwise) and which side of its forward call."""

    module: str
    side: Side = "output"


@dataclass(frozen=True)
class Step:
    """One operation of the graph (`{layer}` in names stands for the block number)."""

    key: str  # the step's own name, as reports say it: "ffn_act"
    what: str  # in words
    names: tuple[str, ...]
    ops: tuple[str, ...] = ()
    hf: HFSource | None = None
    inputs: tuple[str, ...] = ()  # keys of steps; "residual" is the block's input stream
    heads: Heads | None = None
    sub_norm: bool = False  # only in graphs with BitNet's sub-norms
    block: bool = True


def _block(
    key: str,
    what: str,
    *,
    names: tuple[str, ...] | None = None,
    ops: tuple[str, ...] = (),
    hf: HFSource | None = None,
    inputs: tuple[str, ...] = (),
    heads: Heads | None = None,
    sub_norm: bool = False,
) -> Step:
    """A block's step, named `<key>-{layer}` unless `names` says otherwise."""
    return Step(key, what, names or (f"{key}-{{layer}}",), ops, hf, inputs, heads, sub_norm)


STEPS: tuple[Step, ...] = (
    Step("inp_embd", "the token embeddings", ("inp_embd", "embd"), ("GET_ROWS",),
         HFSource("model.embed_tokens"), block=False),
    _block("attn_norm", "the attention input's RMSNorm", ops=("MUL",),
           hf=HFSource("input_layernorm"), inputs=("residual",)),
    _block("q_proj", "the query projection", names=("Qcur-{layer}",), ops=("MUL_MAT", "MUL"),
           hf=HFSource("self_attn.q_proj"), inputs=("attn_norm",), heads="q"),
    _block("k_proj", "the key projection", names=("Kcur-{layer}",), ops=("MUL_MAT", "MUL"),
           hf=HFSource("self_attn.k_proj"), inputs=("attn_norm",), heads="kv"),
    _block("v_proj", "the value projection", names=("Vcur-{layer}",), ops=("MUL_MAT", "MUL"),
           hf=HFSource("self_attn.v_proj"), inputs=("attn_norm",), heads="kv"),
    _block("q_rope", "RoPE on the queries", names=("Qcur-{layer}",), ops=("ROPE",),
           inputs=("q_proj",), heads="q"),
    _block("k_rope", "RoPE on the keys", names=("Kcur-{layer}",), ops=("ROPE",),
           inputs=("k_proj",), heads="kv"),
    _block("kqv_out", "the attention (softmax(QK^T)V, heads merged)",
           names=("kqv_out-{layer}", "kqv_merged_cont-{layer}"), ops=("CONT", "RESHAPE"),
           hf=HFSource("self_attn.attn_sub_norm|self_attn.o_proj", "input"),
           inputs=("q_rope", "k_rope", "v_proj"), heads="q"),
    _block("attn_sub_norm", "the attention output's sub-norm", ops=("MUL",),
           hf=HFSource("self_attn.attn_sub_norm"), inputs=("kqv_out",), sub_norm=True),
    _block("attn_out", "the attention output projection", ops=("MUL_MAT", "MUL"),
           names=("attn_out-{layer}", "attn_o_out-{layer}", "kqv_out-{layer}"),
           hf=HFSource("self_attn.o_proj"), inputs=("attn_sub_norm|kqv_out",)),
    _block("ffn_inp", "the residual stream after attention", ops=("ADD",),
           hf=HFSource("post_attention_layernorm", "input"), inputs=("attn_out", "residual")),
    _block("ffn_norm", "the FFN input's RMSNorm", ops=("MUL",),
           hf=HFSource("post_attention_layernorm"), inputs=("ffn_inp",)),
    # upstream names a scaled product apart (build_ffn, llama-graph.cpp:1810, 1834)
    _block("ffn_gate", "the FFN gate projection", ops=("MUL_MAT", "MUL"),
           names=("ffn_gate-{layer}", "ffn_gate_s-{layer}"),
           hf=HFSource("mlp.gate_proj"), inputs=("ffn_norm",)),
    _block("ffn_up", "the FFN up projection", ops=("MUL_MAT", "MUL"),
           names=("ffn_up-{layer}", "ffn_up_s-{layer}"),
           hf=HFSource("mlp.up_proj"), inputs=("ffn_norm",)),
    _block("ffn_act", "the FFN activation",
           names=("ffn_act-{layer}", "ffn_silu-{layer}", "ffn_sqr(relu)-{layer}",
                  "ffn_gelu-{layer}", "ffn_relu-{layer}"),
           hf=HFSource("mlp.act_fn"), inputs=("ffn_gate",)),
    _block("ffn_gate_par", "the gated FFN activation, act(gate) * up",
           names=("ffn_gate_par-{layer}", "ffn_sub_out-{layer}", "ffn_swiglu-{layer}",
                  "ffn_geglu-{layer}"),
           hf=HFSource("mlp.ffn_sub_norm|mlp.down_proj", "input"), inputs=("ffn_gate", "ffn_up")),
    _block("ffn_sub_norm", "the gated FFN's sub-norm", ops=("MUL",),
           hf=HFSource("mlp.ffn_sub_norm"), inputs=("ffn_gate_par",), sub_norm=True),
    _block("ffn_out", "the FFN down projection", ops=("MUL_MAT", "MUL"),
           names=("ffn_out-{layer}", "ffn_down-{layer}"),
           hf=HFSource("mlp.down_proj"), inputs=("ffn_sub_norm|ffn_gate_par",)),
    _block("l_out", "the block's output (residual stream)", ops=("ADD",),
           hf=HFSource(""), inputs=("ffn_out", "ffn_inp")),
    Step("result_norm", "the final RMSNorm", ("result_norm",), ("MUL",),
         HFSource("model.norm"), inputs=("residual",), block=False),
    Step("result_output", "the logits", ("result_output",), ("MUL_MAT",),
         HFSource("lm_head"), inputs=("result_norm",), block=False),
)  # fmt: skip
"""Every step, in graph order; a block's steps repeat per block between `inp_embd` and
`result_norm`. `a|b` picks the first of the two the graph has (with sub-norms, `a`)."""


OWNERS = {name: next(s.key for s in STEPS if name in s.names) for s in STEPS for name in s.names}
"""Each name's first step in graph order: the step a tensor recorded under that name
without an op is (`Qcur-{layer}`: q_proj, not q_rope; `kqv_out-{layer}`: the attention,
not the fork's W_o output)."""


@dataclass(frozen=True)
class BoundStep:
    """A step of one model: its block (None outside the blocks), its names there, and
    its inputs resolved to other bound steps' labels."""

    step: Step
    layer: int | None
    names: tuple[str, ...]
    inputs: tuple[str, ...]
    hf_module: str | None  # resolved `a|b`; "" is the decoder layer itself
    untyped: frozenset[str]  # the names under which a tensor without an op is this step

    @property
    def label(self) -> str:
        """How reports name it: "block 0 ffn_act", "result_norm"."""
        return self.step.key if self.layer is None else f"block {self.layer} {self.step.key}"


def _pick(choice: str, sub_norms: bool) -> str:
    first, _, second = choice.partition("|")
    return second if second and not sub_norms else first


def bind(arch: str, n_layer: int) -> tuple[BoundStep, ...]:
    """The steps of an `arch` model of `n_layer` blocks, in graph order; ValueError for
    an architecture the map does not cover (the `definitions`')."""
    from bitnet_xtask.crossval.definitions import DEFINITIONS

    if arch not in DEFINITIONS:
        raise ValueError(f"no trace map for the {arch!r} architecture")
    sub_norms = DEFINITIONS[arch].graph.sub_norms
    steps = [s for s in STEPS if sub_norms or not s.sub_norm]
    bound: list[BoundStep] = []

    def label(key: str, layer: int | None) -> str:
        if key == "residual":
            if layer is None:
                return f"block {n_layer - 1} l_out"
            return "inp_embd" if layer == 0 else f"block {layer - 1} l_out"
        step = next(s for s in steps if s.key == key)
        return key if not step.block else f"block {layer} {key}"

    def one(step: Step, layer: int | None) -> BoundStep:
        names = tuple(n.format(layer=layer) for n in step.names)
        inputs = tuple(label(_pick(i, sub_norms), layer) for i in step.inputs)
        module = None if step.hf is None else _pick(step.hf.module, sub_norms)
        owned = frozenset(n.format(layer=layer) for n in step.names if OWNERS[n] == step.key)
        return BoundStep(step, layer, names, inputs, module, owned)

    bound.extend(one(s, None) for s in steps if s.key == "inp_embd")
    for layer in range(n_layer):
        bound.extend(one(s, layer) for s in steps if s.block)
    bound.extend(one(s, None) for s in steps if not s.block and s.key != "inp_embd")
    return tuple(bound)


def permutes_qk(arch: str) -> bool:
    """Whether the converter permuted Q/K rows for llama.cpp's NORM RoPE (llama) or left
    them as the checkpoint has them (the BitNet architectures)."""
    return arch == "llama"


def to_file_layout(features: npt.NDArray[np.float32], n_heads: int) -> npt.NDArray[np.float32]:
    """A checkpoint's Q or K rows (n_tokens, n_heads * head_dim) in the order the llama
    converter writes them: per head, dimension i of the first half and i of the second
    become 2i and 2i + 1 (`LlamaModel.permute`, conversion/llama.py:176-181)."""
    n_tokens, width = features.shape
    head_dim = width // n_heads
    halves = features.reshape(n_tokens, n_heads, 2, head_dim // 2)
    return np.ascontiguousarray(halves.swapaxes(2, 3).reshape(n_tokens, width))
