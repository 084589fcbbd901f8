"""What each engine's graph is known to compute, per architecture: a table of facts.

Each fact is one choice of `definitions.Graph` as one engine revision computes it, with
the file and line it was read from and the statement there. The NumPy reference's
engine-graph variants (`reference.load_model(..., graph="llama.cpp")`) are the
definition with exactly these facts substituted, and the config audit compares a
checkpoint's config with them. The pinned revisions are those of `cpp/pins.json`
(test_config_audit checks that they still are): facts read at one revision say
nothing about another.

Read for this table:

- upstream llama.cpp 0c1e57098, the tree vendored in the pinned llama-cpp-python 0.3.36
  sdist (`vendor/llama.cpp`);
- microsoft/BitNet c82b5e66's `3rdparty/llama.cpp`, Eddie-Wang1120/llama.cpp 406a5036
  (`src/llama.cpp`, 2024-10-18), which has one BitNet graph, `build_bitnet`, with SiLU;
- a later revision of that fork, 13e129947db4, which adds the architectures
  `bitnet-b1.58` and `bitnet-25` (one loader and one graph, `build_bitnet_158`, with
  squared ReLU; `bitnet` stays on SiLU). Its loader accepts an `output.weight` but its
  graph ignores it: the head is always `tok_embd`. No main-line microsoft/BitNet commit
  pins it (a8ac7072 for `bitnet2b_2501` in 2025-03 through 355c0c4d in 2026-07; from
  2026-07-15 the submodule is isHuangXin/llama.cpp 390c3077); two pull-request commits
  do (c8f931e1, refs/pull/558, and 6d186cb9, refs/pull/562, 2026-05). None of those pins
  is in the mirror read here. Its source was read from a code index that serves the file
  by character, not by line: the facts give the function and the characters instead of a
  line number. Upstream llama.cpp 0c1e57098 knows neither name (src/llama-arch.cpp:88
  has only `bitnet`), and its ggml type 36 is unused and its file type 40 is Q1_0: it
  cannot load these files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from bitnet_xtask.crossval.definitions import B158_ARCHS, DEFINITIONS, GRAPH_CHOICES, Graph
from bitnet_xtask.errors import UsageError

GraphName = Literal["definition", "llama.cpp", "bitnet.cpp"]
"""What the reference computes: the model's definition, or an engine's graph."""
GRAPH_NAMES: tuple[GraphName, ...] = ("definition", "llama.cpp", "bitnet.cpp")

FactValue = str | bool | float


@dataclass(frozen=True)
class Engine:
    """One engine revision whose source the facts were read from."""

    name: str  # as crossval and fetch-cpp name it
    revision: str  # the commit of the tree holding the graph code
    tree: str  # where that tree comes from, in words
    pinned: bool  # the revision cpp/pins.json builds
    unknown_archs: tuple[str, ...] = ()  # architectures of `definitions` it cannot load
    unknown_source: str = ""  # where its list of architectures was read


LLAMA_CPP = Engine(
    "llama.cpp",
    "0c1e57098",
    "ggml-org/llama.cpp 0c1e57098 (llama-cpp-python 0.3.36)",
    True,
    B158_ARCHS,
    "src/llama-arch.cpp:88 (LLM_ARCH_NAMES has `bitnet` only)",
)
BITNET_CPP = Engine(
    "bitnet.cpp",
    "406a5036f9a8aaee9ec5e96e652f61691340fe95",
    "Eddie-Wang1120/llama.cpp 406a5036, microsoft/BitNet c82b5e66 3rdparty/llama.cpp",
    True,
    B158_ARCHS,
    "src/llama.cpp:206, 259 (LLM_ARCH_BITNET, `bitnet`, is its only BitNet architecture)",
)
BITNET_FORK_LATER = Engine(
    "bitnet.cpp",
    "13e129947db43cbbcbfa985c72c443c2f2757f15",
    "Eddie-Wang1120/llama.cpp 13e12994 (not pinned; read from a code index)",
    False,
)
ENGINES: tuple[Engine, ...] = (LLAMA_CPP, BITNET_CPP, BITNET_FORK_LATER)


@dataclass(frozen=True)
class GraphFact:
    """`engine` computes `value` for `choice` on GGUF architecture `arch`."""

    engine: Engine
    arch: str
    choice: str  # a `definitions.Graph` field
    value: FactValue
    source: str  # file:line in the engine's tree
    code: str  # the statement read there

    def where(self) -> str:
        return f"{self.engine.name} {self.engine.revision[:9]} {self.source}"

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine.name,
            "revision": self.engine.revision,
            "arch": self.arch,
            "choice": self.choice,
            "value": self.value,
            "source": self.source,
            "code": self.code,
        }


_UP_FFN = "build_ffn: LLM_FFN_SILU with LLM_FFN_PAR is ggml_swiglu_split(gate, up)"
_UP_ROPE_BASE = (
    "hparams.rope_freq_base_train = 10000.0f; get_key(LLM_KV_ROPE_FREQ_BASE, ..., false)"
)
_FORK_ROPE_BASE = "src/llama.cpp:5480-5481"


def _facts(
    engine: Engine, arch: str, rows: Mapping[str, tuple[FactValue, str, str]]
) -> list[GraphFact]:
    return [GraphFact(engine, arch, choice, *row) for choice, row in rows.items()]


FACTS: tuple[GraphFact, ...] = (
    *_facts(LLAMA_CPP, "llama", {
        "ffn_activation": ("silu", "src/models/llama.cpp:189-194",
                           f"build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR, il); {_UP_FFN} "
                           "(src/llama-graph.cpp:1842-1867)"),
        "sub_norms": (False, "src/models/llama.cpp:169-171",
                      "build_attn(inp_attn, model.layers[il].wo, ...): W_o on the attention"),
        "rope": ("norm", "src/llama-model.cpp:3052-3095",
                 "case LLM_ARCH_LLAMA: ... return LLAMA_ROPE_TYPE_NORM"),
        "head": ("output_else_token_embd", "src/models/llama.cpp:41-45, 240",
                 "output = create_tensor(OUTPUT, TENSOR_NOT_REQUIRED); if NULL: TOKEN_EMBD"),
        "rope_freq_base_default": (10000.0, "src/llama-model.cpp:1414-1415", _UP_ROPE_BASE),
    }),
    *_facts(LLAMA_CPP, "bitnet", {
        "ffn_activation": ("silu", "src/models/bitnet.cpp:127-132",
                           f"build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR, il); {_UP_FFN} "
                           "(src/llama-graph.cpp:1842-1867)"),
        "sub_norms": (True, "src/models/bitnet.cpp:101-103, 135-137",
                      "build_norm(cur, attn_sub_norm, LLM_NORM_RMS) before wo; "
                      "build_norm(cur, ffn_sub_norm, LLM_NORM_RMS) before ffn_down"),
        "rope": ("neox", "src/llama-model.cpp:3103-3177",
                 "the pairs of head values are offset by n_rot/2: case LLM_ARCH_BITNET: "
                 "... return LLAMA_ROPE_TYPE_NEOX"),
        "head": ("token_embd", "src/models/bitnet.cpp:164",
                 "cur = build_lora_mm(model.tok_embd, cur); // FIXME: ... duplicate as output"),
        "rope_freq_base_default": (10000.0, "src/llama-model.cpp:1414-1415", _UP_ROPE_BASE),
    }),
    *_facts(BITNET_CPP, "llama", {
        "ffn_activation": ("silu", "src/llama.cpp:10629-10634",
                           "llm_build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR, cb, il)"),
        "sub_norms": (False, "src/llama.cpp:10601-10602",
                      "llm_build_kv(..., model.layers[il].wo, ...): W_o on the attention"),
        "rope": ("norm", "src/llama.cpp:19773-19789",
                 "case LLM_ARCH_LLAMA: ... return LLAMA_ROPE_TYPE_NORM"),
        "head": ("output_else_token_embd", "src/llama.cpp:7216-7220, 10678",
                 "model.output = create_tensor(OUTPUT, TENSOR_NOT_REQUIRED); if NULL: TOKEN_EMBD"),
        "rope_freq_base_default": (10000.0, _FORK_ROPE_BASE, _UP_ROPE_BASE),
    }),
    *_facts(BITNET_CPP, "bitnet", {
        "ffn_activation": ("silu", "src/llama.cpp:15187-15192",
                           "llm_build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR, cb, il) in build_bitnet"),
        "sub_norms": (True, "src/llama.cpp:15156-15158, 15195-15197",
                      "llm_build_norm(attn_sub_norm) before wo; llm_build_norm(ffn_sub_norm) "
                      "before ffn_down"),
        "rope": ("neox", "src/llama.cpp:19791-19814",
                 "the pairs of head values are offset by n_rot/2: case LLM_ARCH_BITNET: "
                 "... return LLAMA_ROPE_TYPE_NEOX"),
        "head": ("token_embd", "src/llama.cpp:15221",
                 "cur = llm_build_lora_mm(lctx, ctx0, model.tok_embd, cur)"),
        "rope_freq_base_default": (10000.0, _FORK_ROPE_BASE, _UP_ROPE_BASE),
    }),
    *_facts(BITNET_FORK_LATER, "bitnet", {
        "ffn_activation": ("silu", "src/llama.cpp build_bitnet (characters 700,000-716,000)",
                           "llm_build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR, cb, il)"),
    }),
    *(
        fact
        for arch in B158_ARCHS
        for fact in _facts(BITNET_FORK_LATER, arch, {
            "ffn_activation": ("relu2", "src/llama.cpp build_bitnet_158 (characters "
                               "700,000-716,000), dispatched for LLM_ARCH_BITNET_B158 and "
                               "LLM_ARCH_BITNET_25 (characters 756,000-772,000)",
                               "llm_build_ffn(..., LLM_FFN_RELU_SQR, LLM_FFN_PAR, cb, il)"),
            "head": ("token_embd", "src/llama.cpp build_bitnet_158 (characters "
                     "700,000-716,000); output.weight is TENSOR_NOT_REQUIRED in the loader "
                     "(characters 405,000-421,000) and unused",
                     "cur = llm_build_lora_mm(lctx, ctx0, model.tok_embd, cur)"),
            "sub_norms": (True, "src/llama.cpp build_bitnet_158 (characters 700,000-716,000)",
                          "llm_build_norm(attn_sub_norm) before wo; llm_build_norm("
                          "ffn_sub_norm) before ffn_down"),
            "rope": ("neox", "src/llama.cpp llama_rope_type (characters 884,000-900,000)",
                     "case LLM_ARCH_BITNET_B158: case LLM_ARCH_BITNET_25: ... return "
                     "LLAMA_ROPE_TYPE_NEOX"),
        })
    ),
)  # fmt: skip
"""Every fact read. Engines agree with the definitions everywhere but these: the FFN
activation of `bitnet` (SiLU in every graph read, squared ReLU in the definition) and
the RoPE base when a file has none (10000 in every engine, 500000 in BitNetConfig)."""


def pinned(engine: str) -> Engine:
    """The pinned revision of `engine`, whose facts the variants and the audit use."""
    for candidate in ENGINES:
        if candidate.name == engine and candidate.pinned:
            return candidate
    raise UsageError(
        f"no engine-graph facts for engine {engine!r}",
        f"facts are recorded for {', '.join(sorted({e.name for e in ENGINES}))}",
    )


def cannot_load(engine: str, arch: str) -> str | None:
    """Why the pinned `engine` cannot load a GGUF of architecture `arch`, or None when it
    can (as far as was read: an architecture outside `definitions` is not checked)."""
    pin = pinned(engine)
    if arch not in pin.unknown_archs:
        return None
    return (
        f"the pinned {engine} ({pin.revision[:9]}) does not know the architecture {arch!r} "
        f"({pin.unknown_source})"
    )


def facts_for(engine: Engine, arch: str) -> dict[str, GraphFact]:
    """What `engine` is known to compute for `arch`, by choice (empty: nothing read)."""
    return {f.choice: f for f in FACTS if f.engine == engine and f.arch == arch}


@dataclass(frozen=True)
class ChosenGraph:
    """The graph the reference computes for one file, and why, choice by choice."""

    name: GraphName
    arch: str
    graph: Graph
    sources: Mapping[str, str]  # choice -> where its value comes from, in words


def _definition_source(arch: str, choice: str) -> str:
    said = DEFINITIONS[arch].choices[choice]
    keyless = "; no GGUF key carries it" if said.gguf_key is None else ""
    return f"definition of {arch}: {said.definition}{keyless}"


def _engine_source(fact: GraphFact | None, definition: Graph, arch: str, choice: str) -> str:
    if fact is None:
        return f"{_definition_source(arch, choice)} (no {arch} fact recorded for the engine)"
    said = getattr(definition, choice)
    if fact.value == said:
        return f"{fact.where()}: {fact.code} (as the definition)"
    return (
        f"{fact.where()}: {fact.code} (the engine's graph, not the model's definition, "
        f"which computes {said!r})"
    )


def choose_graph(arch: str, name: GraphName = "definition") -> ChosenGraph:
    """The definition of `arch`, or the pinned `name` engine's graph of it: the
    definition with that engine's facts substituted (`facts_for`)."""
    definition = DEFINITIONS[arch].graph
    if name == "definition":
        sources = {c: _definition_source(arch, c) for c in GRAPH_CHOICES}
        return ChosenGraph(name, arch, definition, sources)
    facts = facts_for(pinned(name), arch)
    if not facts:
        raise UsageError(
            f"no facts are recorded about {name}'s {arch} graph",
            "use the definition graph, or record the engine's graph in engine_graphs.py",
        )
    overrides: dict[str, Any] = {c: f.value for c, f in facts.items()}  # typed by the tests
    graph = replace(definition, **overrides)
    sources = {c: _engine_source(facts.get(c), definition, arch, c) for c in GRAPH_CHOICES}
    return ChosenGraph(name, arch, graph, sources)
