"""The model definitions the NumPy reference implements, one declarative record each.

A model's definition is its Hugging Face `transformers` implementation, written with the
model's authors; an engine's graph is that engine's reading of it. This module records,
for each GGUF architecture the reference implements (`llama`, `bitnet`), where the
definition lives, what it computes at each choice the forward pass makes, and which GGUF
metadata key (if any) carries that choice into the converted file. Where no key does,
the reference computes what the definition of the family the file claims computes.

Everything here was read from transformers 5.24.0 (`models/<family>/modeling_*.py`,
`configuration_*.py`, `modeling_rope_utils.py`, `integrations/bitnet.py`) and from the
converter of the pinned upstream llama.cpp 0c1e57098 (`convert_hf_to_gguf.py` is a
312-line front end; the model classes are in `conversion/`: `conversion/llama.py`,
`conversion/bitnet.py`, `conversion/base.py`, and gguf-py's `gguf/constants.py`). Line
numbers are of those files at those versions.

What the converters carry and what they do not:

- No GGUF key carries the FFN activation. `TextModel.set_gguf_parameters`
  (conversion/base.py:1434-1546) writes block count, context, widths, head counts, RoPE
  base and scaling, the RMS epsilon, expert counts and head_dim; it never reads
  `hidden_act`. `BitnetModel.set_gguf_parameters` (conversion/bitnet.py:19-22) adds only
  RoPE scaling `linear` with factor 1.0. A BitNet GGUF cannot say "relu2".
- The `bitnet` architecture has no `output` tensor (gguf/constants.py:4179-4193,
  MODEL_TENSORS[BITNET]): the head is always `token_embd`. A checkpoint with an untied
  `lm_head.weight` fails to convert (`map_tensor_name`, conversion/base.py:627-631).
- `LlamaModel` permutes Q and K rows (conversion/llama.py:176-181, applied at 260-264), so
  transformers' rotate_half on the checkpoint is llama.cpp's NORM RoPE (adjacent pairs)
  on the file. `BitnetModel` is a plain `TextModel` and does not permute: rotate_half is
  NEOX RoPE (x[i] with x[i + n_rot/2]) on the file.
- `BitnetModel.weight_quant` (conversion/bitnet.py:24-33) rounds the seven projections to
  {-1, 0, 1} x absmean (per tensor) as it converts, so a BitNet GGUF holds ternary
  weights even from a full-precision checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

Activation = Literal["silu", "relu2"]
"""The FFN gate's activation: SiLU (x * sigmoid(x)) or squared ReLU (max(x, 0)^2)."""
RopeType = Literal["norm", "neox"]
"""RoPE on the file's Q/K: NORM pairs x[2i], x[2i+1]; NEOX pairs x[i], x[i + n_rot/2]."""
HeadRule = Literal["output_else_token_embd", "token_embd"]
"""Which matrix maps the last hidden state to logits."""
ActivationQuant = Literal["none", "int8_per_token"]
"""What a projection does to its input first: nothing, or BitLinear's 8-bit absmax
quantization per token (transformers' `ActQuant`, integrations/bitnet.py:223-239)."""

TRANSFORMERS_VERSION = "5.24.0"
"""The transformers release every line number below was read from."""
CONVERTER = "llama.cpp 0c1e57098 (llama-cpp-python 0.3.36 sdist, vendor/llama.cpp)"
"""The converter whose behaviour the `gguf` column of each choice records."""


@dataclass(frozen=True)
class Graph:
    """What a forward pass computes beyond the numbers in the file: the structural
    choices. A definition has one; each engine's graph differs from it only where the
    engine-graph table (`engine_graphs`) records a fact."""

    ffn_activation: Activation
    sub_norms: bool  # RMSNorm on the attention output before W_o and on the gated FFN before W_down
    rope: RopeType
    head: HeadRule
    rope_freq_base_default: float  # when the file has no `<arch>.rope.freq_base`
    activation_quant: ActivationQuant  # on the input of each of the seven projections

    @property
    def quantizes_activations(self) -> bool:
        return self.activation_quant != "none"


GRAPH_CHOICES = tuple(f.name for f in fields(Graph))
"""The names of `Graph`'s choices, the keys facts and receipts use."""


@dataclass(frozen=True)
class Choice:
    """One choice: what the definition says (with its source line), which GGUF key
    carries it into the file (None: no key does), and the config.json field."""

    definition: str
    gguf_key: str | None
    config_field: str | None


@dataclass(frozen=True)
class Definition:
    """One architecture as its definition computes it."""

    arch: str  # the GGUF `general.architecture`
    model_type: str  # config.json `model_type`
    modeling_file: str  # inside transformers/
    classes: tuple[str, ...]
    config_class: str
    config_defaults: Mapping[str, Any]  # the config class's defaults the audit relies on
    graph: Graph
    choices: Mapping[str, Choice]  # every `Graph` choice, plus the values read from the file

    @property
    def source(self) -> str:
        return f"transformers {TRANSFORMERS_VERSION} {self.modeling_file}"

    def to_json(self) -> dict[str, Any]:
        """The definition as a receipt records it."""
        return {
            "arch": self.arch,
            "model_type": self.model_type,
            "source": self.source,
            "classes": list(self.classes),
            "config_class": self.config_class,
        }


_EPS_KEY = "{arch}.attention.layer_norm_rms_epsilon"
_BASE_KEY = "{arch}.rope.freq_base"
_SCALING_KEYS = "{arch}.rope.scaling.type, {arch}.rope.scaling.factor, rope_freqs.weight"


def _file_choices(arch: str, config_file: str, rope_base: str) -> dict[str, Choice]:
    """The choices every architecture reads from the file, each with its key."""
    return {
        "rms_norm_eps": Choice(
            f"{config_file} rms_norm_eps, used by every RMSNorm",
            _EPS_KEY.format(arch=arch),
            "rms_norm_eps",
        ),
        "rope_freq_base": Choice(
            rope_base, _BASE_KEY.format(arch=arch), "rope_parameters.rope_theta"
        ),
        "rope_scaling": Choice(
            "modeling_rope_utils.py ROPE_INIT_FUNCTIONS by rope_parameters.rope_type; the "
            "reference implements `default`, `linear` and llama 3's per-frequency factors",
            _SCALING_KEYS.format(arch=arch),
            "rope_parameters",
        ),
    }


LLAMA = Definition(
    arch="llama",
    model_type="llama",
    modeling_file="models/llama/modeling_llama.py",
    classes=(
        "LlamaForCausalLM",
        "LlamaModel",
        "LlamaDecoderLayer",
        "LlamaAttention",
        "LlamaMLP",
        "LlamaRMSNorm",
        "LlamaRotaryEmbedding",
    ),
    config_class="LlamaConfig",
    config_defaults={  # models/llama/configuration_llama.py:63-83, modeling_rope_utils.py:760
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    graph=Graph("silu", False, "norm", "output_else_token_embd", 10000.0, "none"),
    choices={
        "ffn_activation": Choice(
            "LlamaMLP.forward: down_proj(act_fn(gate_proj(x)) * up_proj(x)) "
            "(modeling_llama.py:164), act_fn = ACT2FN[config.hidden_act] (:161), "
            "LlamaConfig.hidden_act default 'silu' (configuration_llama.py:69)",
            None,
            "hidden_act",
        ),
        "sub_norms": Choice(
            "none: LlamaAttention.forward applies o_proj to the attention output directly "
            "(modeling_llama.py:270)",
            None,
            None,
        ),
        "rope": Choice(
            "rotate_half (modeling_llama.py:119) on the checkpoint's q/k, which the "
            "converter's Q/K permutation (conversion/llama.py:176-181, 260-264) makes NORM "
            "on the file",
            None,
            None,
        ),
        "head": Choice(
            "LlamaForCausalLM.lm_head (modeling_llama.py:422), tied to embed_tokens when "
            "tie_word_embeddings (_tied_weights_keys, :413); the file has output.weight "
            "unless tied (src/models/llama.cpp:41-45 falls back to token_embd)",
            "presence of the output.weight tensor",
            "tie_word_embeddings",
        ),
        "rope_freq_base_default": Choice(
            "RotaryEmbeddingConfigMixin.default_theta 10000.0 (modeling_rope_utils.py:760)",
            None,
            "rope_parameters.rope_theta",
        ),
        "activation_quant": Choice(
            "none: the projections are nn.Linear (modeling_llama.py:158-160, 219-230)", None, None
        ),
        **_file_choices(
            "llama",
            "configuration_llama.py:72",
            "LlamaRotaryEmbedding inv_freq = "
            "1/base^(2i/d) (modeling_llama.py:106), base = rope_parameters.rope_theta",
        ),
    },
)

BITNET = Definition(
    arch="bitnet",
    model_type="bitnet",
    modeling_file="models/bitnet/modeling_bitnet.py",
    classes=(
        "BitNetForCausalLM",
        "BitNetModel",
        "BitNetDecoderLayer",
        "BitNetAttention",
        "BitNetMLP",
        "BitNetRMSNorm",
        "BitNetRotaryEmbedding",
    ),
    config_class="BitNetConfig",
    config_defaults={  # models/bitnet/configuration_bitnet.py:41-57
        "hidden_act": "relu2",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
    graph=Graph("relu2", True, "neox", "token_embd", 500000.0, "none"),
    choices={
        "ffn_activation": Choice(
            "BitNetMLP.forward: down_proj(ffn_sub_norm(act_fn(gate_proj(x)) * up_proj(x))) "
            "(modeling_bitnet.py:77), act_fn = ACT2FN[config.hidden_act] (:73), "
            "BitNetConfig.hidden_act default 'relu2' (configuration_bitnet.py:49), "
            "ACT2FN['relu2'] = ReLUSquaredActivation: square(relu(x)) (activations.py:206-214)",
            None,
            "hidden_act",
        ),
        "sub_norms": Choice(
            "BitNetAttention.forward: o_proj(attn_sub_norm(attn)) (modeling_bitnet.py:217-218); "
            "BitNetMLP: ffn_sub_norm before down_proj (:74, :77)",
            None,
            None,
        ),
        "rope": Choice(
            "rotate_half (modeling_bitnet.py:81-85) on the checkpoint's q/k, which "
            "BitnetModel does not permute (conversion/bitnet.py): NEOX on the file",
            None,
            None,
        ),
        "head": Choice(
            "BitNetForCausalLM.lm_head (modeling_bitnet.py:416), tied to embed_tokens when "
            "tie_word_embeddings (_tied_weights_keys, :407); the bitnet GGUF architecture "
            "has no output tensor (gguf/constants.py:4179-4193): always token_embd",
            None,
            "tie_word_embeddings",
        ),
        "rope_freq_base_default": Choice(
            "BitNetConfig.default_theta 500000.0 (configuration_bitnet.py:41)",
            None,
            "rope_parameters.rope_theta",
        ),
        **_file_choices(
            "bitnet",
            "configuration_bitnet.py:52",
            "BitNetRotaryEmbedding inv_freq = "
            "1/base^(2i/d) (modeling_bitnet.py:299), base = rope_parameters.rope_theta",
        ),
        "activation_quant": Choice(
            "none: without a quantization_config the projections are nn.Linear "
            "(modeling_bitnet.py:70-72, 165-176); the `bitnet` GGUF architecture is the 2024 "
            "1bitLLM layout, whose transformers checkpoints declare none",
            None,
            "quantization_config",
        ),
    },
)


def _bitnet_b158(arch: str) -> Definition:
    """BitNet b1.58 2B-4T's architecture: BitNetForCausalLM with the BitLinear quantization
    its checkpoints declare, under the GGUF name microsoft/BitNet's converter writes
    (`bitnet-b1.58`; files of early 2025 say `bitnet-25`)."""
    return replace(
        BITNET,
        arch=arch,
        graph=Graph("relu2", True, "neox", "output_else_token_embd", 500000.0, "int8_per_token"),
        choices={
            **BITNET.choices,
            "rope": Choice(
                "rotate_half (modeling_bitnet.py:81-85) on the checkpoint's q/k, which "
                "microsoft/BitNet's converter does not permute (utils/convert-hf-to-gguf-"
                "bitnet.py BitnetModel.modify_tensors): NEOX on the file",
                None,
                None,
            ),
            "head": Choice(
                "BitNetForCausalLM.lm_head (modeling_bitnet.py:416), tied to embed_tokens when "
                "tie_word_embeddings (:407), as 2B-4T's config is; microsoft/BitNet's converter "
                "writes lm_head.weight as output.weight when the checkpoint has one "
                "(utils/convert-hf-to-gguf-bitnet.py BitnetModel.modify_tensors, map_tensor_name)",
                "presence of the output.weight tensor",
                "tie_word_embeddings",
            ),
            "activation_quant": Choice(
                "BitLinear / AutoBitLinear, which replace every projection but lm_head when the "
                "checkpoint declares quantization_config quant_method 'bitnet' "
                "(integrations/bitnet.py:285-330; quantizers/base.py:42-59 keeps the output "
                "embedding), quantize their input per token: scale = 127 / max|x| (clamped to "
                "1e-5), round, clamp to [-128, 127] (integrations/bitnet.py:157-179, 223-239); "
                "the weights are the file's ternary values times their scale, as "
                "WeightQuant made them (:200-215)",
                None,
                "quantization_config",
            ),
            **_file_choices(
                arch,
                "configuration_bitnet.py:52",
                "BitNetRotaryEmbedding inv_freq = "
                "1/base^(2i/d) (modeling_bitnet.py:299), base = rope_parameters.rope_theta",
            ),
        },
    )


BITNET_B158 = _bitnet_b158("bitnet-b1.58")
BITNET_25 = _bitnet_b158("bitnet-25")
B158_ARCHS = (BITNET_B158.arch, BITNET_25.arch)
"""BitNet b1.58 2B-4T's two GGUF names."""

DEFINITIONS: Mapping[str, Definition] = {d.arch: d for d in (LLAMA, BITNET, BITNET_B158, BITNET_25)}
"""The architectures the reference implements, by GGUF `general.architecture`."""

BY_MODEL_TYPE: Mapping[str, tuple[Definition, ...]] = {
    model_type: tuple(d for d in DEFINITIONS.values() if d.model_type == model_type)
    for model_type in dict.fromkeys(d.model_type for d in DEFINITIONS.values())
}
"""The same, by config.json `model_type`: `bitnet` is the family of three architectures."""
