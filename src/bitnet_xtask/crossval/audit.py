"""The config audit: a checkpoint's config.json against its GGUF, before anything runs.

`audit_config` compares what the Hugging Face config says with what the GGUF's
metadata and tensors say, field by field, and with what each named engine's graph is
known to compute for the file's architecture (`engine_graphs`). Each mismatch is a
`Finding` naming both values and where each came from, of one of two severities:

- `shape`: the two files cannot be the same model (another layer count, width, head
  count or vocabulary). crossval refuses to run such a pair (`ConfigAudit.refuse`,
  exit 2).
- `semantic`: a choice that differs but still runs (activation, norm epsilon, RoPE,
  tied embeddings, BOS/EOS, tokenizer kind, an engine's graph): printed and recorded.

Where the GGUF has no key for a choice (no converter writes the FFN activation:
`definitions`), its value is the definition of the architecture the file claims.
Config fields the config.json leaves out take the config class's defaults
(`definitions.Definition.config_defaults`), as transformers would. Real numbers
compare with a relative tolerance: a GGUF stores them as float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bitnet_xtask.crossval.definitions import BY_MODEL_TYPE, DEFINITIONS, Definition
from bitnet_xtask.crossval.engine_graphs import ENGINES, Engine, facts_for
from bitnet_xtask.crossval.gguf_file import GGUFFile
from bitnet_xtask.errors import UsageError

Severity = Literal["shape", "semantic"]
REL_TOL = 1e-6
"""Relative tolerance for real numbers: float32 keeps 7 significant digits."""
ACTIVATION_ALIASES = {"swish": "silu"}
"""transformers' ACT2FN names one function twice."""


@dataclass(frozen=True)
class Finding:
    """One field on which the checkpoint's config and the other side disagree."""

    field: str
    severity: Severity
    config_value: Any
    config_source: str
    other_value: Any
    other_source: str

    def message(self) -> str:
        end = ": the two files cannot be the same model" if self.severity == "shape" else ""
        return (
            f"{self.field}: {self.config_value!r} in {self.config_source}, "
            f"{self.other_value!r} in {self.other_source}{end}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "severity": self.severity,
            "config": {"value": self.config_value, "source": self.config_source},
            "other": {"value": self.other_value, "source": self.other_source},
            "message": self.message(),
        }


@dataclass(frozen=True)
class ConfigAudit:
    """Every mismatch found, and what could not be compared (with why)."""

    model_type: str
    arch: str
    engines: tuple[str, ...]
    findings: tuple[Finding, ...]
    unchecked: tuple[str, ...]

    @property
    def shape(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "shape")

    @property
    def semantic(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "semantic")

    def refuse(self) -> None:
        """UsageError (exit 2) naming every shape mismatch, when there is one."""
        if self.shape:
            raise UsageError(
                "the checkpoint and the GGUF are not the same model: "
                + "; ".join(f.message() for f in self.shape),
                "give the GGUF converted from this checkpoint",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "arch": self.arch,
            "engines": list(self.engines),
            "findings": [f.to_json() for f in self.findings],
            "unchecked": list(self.unchecked),
        }


# --- the two sides --------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    """config.json, with the config class's defaults for what it leaves out."""

    values: Mapping[str, Any]
    definition: Definition

    def get(self, name: str, default: Any = None) -> tuple[Any, str]:
        if name in self.values:
            return self.values[name], f"config.json {name}"
        fallback = self.definition.config_defaults.get(name, default)
        return fallback, f"{self.definition.config_class} default {name} (config.json has none)"

    def rope(self) -> Mapping[str, Any]:
        """rope_parameters (transformers 5), else rope_scaling (4.x), else empty."""
        for name in ("rope_parameters", "rope_scaling"):
            value = self.values.get(name)
            if isinstance(value, Mapping):
                return value
        return {}


@dataclass(frozen=True)
class _Gguf:
    """The GGUF's `<arch>.*` metadata and tensors."""

    file: GGUFFile
    arch: str

    def key(self, suffix: str) -> tuple[Any, str]:
        name = f"{self.arch}.{suffix}"
        return self.file.metadata(name), f"GGUF {name}"

    def has(self, tensor: str) -> bool:
        return tensor in self.file.tensor_infos


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if numbers:
        return math.isclose(float(a), float(b), rel_tol=REL_TOL)
    return bool(a == b)


def _compare(
    field: str, severity: Severity, config: tuple[Any, str], other: tuple[Any, str]
) -> Iterator[Finding]:
    if not _same(config[0], other[0]):
        yield Finding(field, severity, config[0], config[1], other[0], other[1])


# --- shapes ---------------------------------------------------------------------------


def _dimensions(cfg: _Config, gguf: _Gguf) -> Iterator[Finding]:
    """Widths, layers and heads: a difference in any means two different models."""
    for field, key in (
        ("hidden_size", "embedding_length"),
        ("num_hidden_layers", "block_count"),
        ("intermediate_size", "feed_forward_length"),
        ("num_attention_heads", "attention.head_count"),
    ):
        yield from _compare(field, "shape", cfg.get(field), gguf.key(key))
    heads, _ = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads", heads)
    file_heads, _ = gguf.key("attention.head_count")
    file_kv = gguf.key("attention.head_count_kv")
    if file_kv[0] is None:
        file_kv = (file_heads, f"GGUF {gguf.arch}.attention.head_count (no head_count_kv)")
    yield from _compare("num_key_value_heads", "shape", kv_heads, file_kv)
    yield from _compare("head_dim", "shape", _head_dim(cfg), _file_head_dim(gguf))


def _head_dim(cfg: _Config) -> tuple[Any, str]:
    value, source = cfg.get("head_dim")
    if value is not None:
        return value, source
    hidden, _ = cfg.get("hidden_size")
    heads, _ = cfg.get("num_attention_heads")
    quotient = hidden // heads if isinstance(hidden, int) and isinstance(heads, int) else None
    return quotient, "config.json hidden_size / num_attention_heads"


def _file_head_dim(gguf: _Gguf) -> tuple[Any, str]:
    value, source = gguf.key("attention.key_length")
    if value is not None:
        return value, source
    width, _ = gguf.key("embedding_length")
    heads, _ = gguf.key("attention.head_count")
    quotient = width // heads if isinstance(width, int) and isinstance(heads, int) else None
    return quotient, f"GGUF {gguf.arch}.embedding_length / attention.head_count"


def _vocabulary(cfg: _Config, gguf: _Gguf) -> Iterator[Finding]:
    """vocab_size against the embedding's rows and the tokenizer's token count."""
    vocab = cfg.get("vocab_size")
    embedding = gguf.file.tensor_infos.get("token_embd.weight")
    rows = embedding.shape[0] if embedding is not None else None
    yield from _compare("vocab_size", "shape", vocab, (rows, "GGUF token_embd.weight rows"))
    tokens = gguf.file.get_field("tokenizer.ggml.tokens")
    count = len(tokens.data) if tokens is not None else None
    yield from _compare("vocab_size", "shape", vocab, (count, "GGUF tokenizer.ggml.tokens"))


# --- semantics ------------------------------------------------------------------------


def _activation(cfg: _Config) -> tuple[Any, str]:
    value, source = cfg.get("hidden_act")
    return ACTIVATION_ALIASES.get(value, value), source


def _file_activation(gguf: _Gguf) -> tuple[Any, str]:
    definition = DEFINITIONS[gguf.arch]
    return definition.graph.ffn_activation, (
        f"the definition of the GGUF's architecture {gguf.arch!r} "
        f"({definition.config_class}.hidden_act; no GGUF key carries it)"
    )


def _rope_theta(cfg: _Config) -> tuple[Any, str]:
    rope = cfg.rope()
    if "rope_theta" in rope:
        return rope["rope_theta"], "config.json rope_parameters.rope_theta"
    return cfg.get("rope_theta")


def _rope_kind(cfg: _Config) -> tuple[Any, str]:
    """("none", 1.0) for transformers' `default`, else (rope_type, factor)."""
    rope = cfg.rope()
    kind = rope.get("rope_type", rope.get("type", "default"))
    factor = rope.get("factor", 1.0)
    if kind == "default" or (kind == "linear" and _same(factor, 1.0)):
        return ["none", 1.0], "config.json rope_parameters (default)"
    return [kind, factor], "config.json rope_parameters rope_type and factor"


def _file_rope_kind(gguf: _Gguf) -> tuple[Any, str]:
    kind, _ = gguf.key("rope.scaling.type")
    factor, _ = gguf.key("rope.scaling.factor")
    source = f"GGUF {gguf.arch}.rope.scaling.type and .factor"
    if gguf.has("rope_freqs.weight"):
        return ["llama3"], "GGUF rope_freqs.weight (llama 3 per-frequency factors)"
    if kind in (None, "none") or (kind == "linear" and (factor is None or _same(factor, 1.0))):
        return ["none", 1.0], source
    return [kind, factor], source


def _activation_quant(cfg: _Config) -> tuple[Any, str]:
    """BitLinear's int8 activations when the config declares a bitnet quantization
    (integrations/bitnet.py: BitLinear and AutoBitLinear both quantize), else none; with
    `use_rms_norm` they first apply an RMSNorm of their own (:150-154, 187-188, 271-272),
    which no definition here computes: a value of its own, so that it is a finding."""
    quantization, source = cfg.get("quantization_config")
    settings = quantization if isinstance(quantization, Mapping) else {}
    method = settings.get("quant_method")
    if method != "bitnet":
        return "none", f"{source} quant_method {method!r}"
    if settings.get("use_rms_norm"):
        return "int8_per_token after an RMSNorm", f"{source} use_rms_norm true"
    return "int8_per_token", f"{source} quant_method 'bitnet'"


def _file_activation_quant(gguf: _Gguf) -> tuple[Any, str]:
    definition = DEFINITIONS[gguf.arch]
    return definition.graph.activation_quant, (
        f"the definition of the GGUF's architecture {gguf.arch!r} (no GGUF key carries it)"
    )


def _semantics(cfg: _Config, gguf: _Gguf) -> Iterator[Finding]:
    """The choices that can differ while both files still run."""
    yield from _compare("ffn_activation", "semantic", _activation(cfg), _file_activation(gguf))
    yield from _compare(
        "activation_quant", "semantic", _activation_quant(cfg), _file_activation_quant(gguf)
    )
    eps = gguf.key("attention.layer_norm_rms_epsilon")
    yield from _compare("rms_norm_eps", "semantic", cfg.get("rms_norm_eps"), eps)
    base = gguf.key("rope.freq_base")
    if base[0] is None:
        base = (None, f"GGUF (no {gguf.arch}.rope.freq_base: engines read 10000)")
    yield from _compare("rope_theta", "semantic", _rope_theta(cfg), base)
    theirs = _file_rope_kind(gguf)
    ours = _rope_kind(cfg)
    if len(theirs[0]) == 1:  # llama 3: the factors are the tensor, not a key: the kind only
        ours = (ours[0][:1], ours[1].replace(" and factor", ""))
    yield from _compare("rope_scaling", "semantic", ours, theirs)
    untied = gguf.has("output.weight")
    head = (not untied, "GGUF: " + ("output.weight present" if untied else "no output.weight"))
    yield from _compare("tie_word_embeddings", "semantic", cfg.get("tie_word_embeddings"), head)
    yield from _special_ids(cfg, gguf)


def _special_ids(cfg: _Config, gguf: _Gguf) -> Iterator[Finding]:
    for name in ("bos_token_id", "eos_token_id"):
        ours, source = cfg.get(name)
        key = f"tokenizer.ggml.{name}"
        theirs = gguf.file.metadata(key)
        if isinstance(ours, list) and theirs in ours:
            continue  # several EOS ids in the config: the GGUF names one of them
        yield from _compare(name, "semantic", (ours, source), (theirs, f"GGUF {key}"))


def _tokenizer_kind(checkpoint: Path) -> tuple[str | None, str]:
    """llama.cpp's `tokenizer.ggml.model` for the checkpoint's tokenizer files: `llama`
    for SentencePiece (tokenizer.model, or a byte-fallback BPE tokenizer.json), `gpt2`
    for a byte-level BPE tokenizer.json."""
    if (checkpoint / "tokenizer.model").is_file():
        return "llama", f"{checkpoint}/tokenizer.model (SentencePiece)"
    if not (checkpoint / "tokenizer.json").is_file():
        return None, f"{checkpoint} (no tokenizer.model or tokenizer.json)"
    from bitnet_xtask.inputs import read_json

    document = read_json(checkpoint / "tokenizer.json", what="tokenizer")
    model = document.get("model", {}) if isinstance(document, dict) else {}
    kind = model.get("type") if isinstance(model, dict) else None
    source = f"{checkpoint}/tokenizer.json model.type {kind!r}"
    if kind == "BPE":
        return ("llama" if model.get("byte_fallback") else "gpt2"), source
    return None, source


def _tokenizer(gguf: _Gguf, checkpoint: Path | None) -> Iterator[Finding]:
    if checkpoint is None:
        return
    theirs = (gguf.file.metadata("tokenizer.ggml.model"), "GGUF tokenizer.ggml.model")
    yield from _compare("tokenizer_kind", "semantic", _tokenizer_kind(checkpoint), theirs)


# --- engines --------------------------------------------------------------------------


def _engine(name: str) -> Engine | str:
    """The pinned engine `name` (or `name@revision`: the revision of the tree holding its
    graph code, or the one fetch-cpp names the pinned build by, `cpp.layout.pin_revision`,
    which for bitnet.cpp is microsoft/BitNet's commit, not its fork's), or why it has no
    facts."""
    from bitnet_xtask.cpp.layout import pin_revision
    from bitnet_xtask.cpp.pins import load_pins

    engine, _, revision = name.partition("@")
    pins = load_pins()
    for candidate in ENGINES:
        if candidate.name == engine and candidate.pinned:
            built = pin_revision(pins[engine]) if engine in pins else candidate.revision
            if revision and not (candidate.revision.startswith(revision) or revision == built):
                return f"{name}: facts were read at {candidate.revision[:9]}, not {revision}"
            return candidate
    return f"{name}: no engine-graph facts are recorded for it"


def _engine_findings(cfg: _Config, gguf: _Gguf, engine: Engine) -> Iterator[Finding]:
    """What the engine's graph computes against what the checkpoint's definition does."""
    expected = {
        "ffn_activation": _activation(cfg),
        "rope_freq_base_default": _rope_theta(cfg),
    }
    for choice, fact in facts_for(engine, gguf.arch).items():
        if choice == "rope_freq_base_default" and gguf.key("rope.freq_base")[0] is not None:
            continue  # the file says: the engine's default is not used
        said = expected.get(choice)
        if said is None:
            said = (
                getattr(cfg.definition.graph, choice),
                f"the definition of {cfg.definition.arch}",
            )
        graph = f"{engine.name} {engine.revision[:9]}'s {gguf.arch} graph ({fact.source})"
        yield from _compare(choice, "semantic", said, (fact.value, graph))


def _engines(cfg: _Config, gguf: _Gguf, engines: Sequence[str]) -> tuple[list[Finding], list[str]]:
    findings: list[Finding] = []
    unchecked: list[str] = []
    for name in engines:
        engine = _engine(name)
        if isinstance(engine, str):
            unchecked.append(engine)
        elif not facts_for(engine, gguf.arch):
            unchecked.append(f"{name}: no facts are recorded about its {gguf.arch} graph")
        else:
            findings.extend(_engine_findings(cfg, gguf, engine))
    return findings, unchecked


# --- the audit ------------------------------------------------------------------------


def _definition(config: Mapping[str, Any], arch: object) -> Definition:
    """The definition of the config's family for the GGUF's architecture `arch`, or the
    family's first when it has none for `arch` (the audit then reports the mismatch)."""
    model_type = config.get("model_type")
    family = BY_MODEL_TYPE.get(model_type, ()) if isinstance(model_type, str) else ()
    if not family:
        raise UsageError(
            f"config.json model_type {model_type!r} is not a family crossval knows",
            f"the families are {', '.join(sorted(BY_MODEL_TYPE))}",
        )
    return next((d for d in family if d.arch == arch), family[0])


def audit_config(
    config: Mapping[str, Any],
    gguf: GGUFFile,
    engines: Sequence[str] = (),
    checkpoint: Path | None = None,
) -> ConfigAudit:
    """config.json (parsed) against `gguf`, and against each named engine's graph
    ("llama.cpp", "bitnet.cpp", optionally "@revision"); `checkpoint`, the checkpoint's
    directory, adds its tokenizer files. UsageError (exit 2) for a config of a family
    the reference has no definition of; the audit of a GGUF whose architecture differs
    from the config's family is that one shape finding."""
    arch = gguf.metadata("general.architecture")
    definition = _definition(config, arch)
    cfg = _Config(config, definition)
    if arch not in DEFINITIONS:  # an architecture of no definition: not refused, not compared
        why = f"the GGUF's architecture {arch!r} has no definition here: nothing compared"
        return ConfigAudit(definition.model_type, str(arch), tuple(engines), (), (why,))
    if arch != definition.arch:
        found = Finding(
            "architecture", "shape", definition.model_type, "config.json model_type",
            arch, "GGUF general.architecture",
        )  # fmt: skip
        return ConfigAudit(definition.model_type, str(arch), tuple(engines), (found,), ())
    side = _Gguf(gguf, arch)
    findings = [
        *_dimensions(cfg, side),
        *_vocabulary(cfg, side),
        *_semantics(cfg, side),
        *_tokenizer(side, checkpoint),
    ]
    engine_findings, unchecked = _engines(cfg, side, engines)
    return ConfigAudit(
        definition.model_type,
        arch,
        tuple(engines),
        (*findings, *engine_findings),
        tuple(unchecked),
    )
