"""crossval.audit and crossval.engine_graphs: a real transformers config.json against a
gen-fixtures GGUF, and each engine-graph fact against the source line it cites.

Configs are written by transformers' own `to_json_file` (BitNetConfig, LlamaConfig) with
the dimensions of gen-fixtures' `tiny` models, so the matching pair is a twin and every
other pair differs in the one field a test changes. The facts are checked against the
pinned llama.cpp source beside the session's build (conftest `llama_bin`) and against
the fork's git mirror, where present.
"""

from __future__ import annotations

import json
import subprocess
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from references import MIRRORS

from bitnet_xtask.cpp.pins import GithubPin, SdistPin, load_pins
from bitnet_xtask.crossval.audit import ConfigAudit, audit_config
from bitnet_xtask.crossval.definitions import B158_ARCHS, DEFINITIONS, GRAPH_CHOICES, Graph
from bitnet_xtask.crossval.engine_graphs import (
    BITNET_CPP,
    FACTS,
    LLAMA_CPP,
    GraphFact,
    choose_graph,
)
from bitnet_xtask.crossval.gguf_file import GGUFFile
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures import generate_fixture
from bitnet_xtask.fixtures.spec import SIZES

transformers = pytest.importorskip("transformers")
TINY = SIZES["tiny"]


def write_config(directory: Path, family: str, **changes: Any) -> dict[str, Any]:
    """config.json of gen-fixtures' tiny `family` model, by transformers, with `changes`."""
    kind = {"llama": transformers.LlamaConfig, "bitnet": transformers.BitNetConfig}[family]
    settings: dict[str, Any] = {
        "vocab_size": TINY.n_vocab,
        "hidden_size": TINY.n_embd,
        "intermediate_size": TINY.n_ff,
        "num_hidden_layers": TINY.n_layer,
        "num_attention_heads": TINY.n_head,
        "num_key_value_heads": TINY.n_head_kv,
        "max_position_embeddings": TINY.n_ctx,
        "rms_norm_eps": TINY.rms_norm_eps,
        "rope_theta": TINY.rope_freq_base,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": family == "bitnet",
    }
    directory.mkdir(parents=True, exist_ok=True)
    kind(**(settings | changes)).to_json_file(directory / "config.json")
    loaded: dict[str, Any] = json.loads((directory / "config.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GGUFFile]:
    out = tmp_path_factory.mktemp("fixtures")
    return {
        family: GGUFFile(generate_fixture("tiny", family, "f32", 3, out).model)
        for family in ("llama", "bitnet")
    }


def fields_found(audit: ConfigAudit) -> set[tuple[str, str]]:
    return {(f.field, f.severity) for f in audit.findings}


# --- the audit ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "bitnet"])
def test_a_twin_has_no_findings(tmp_path: Path, ggufs: dict[str, GGUFFile], family: str) -> None:
    """eps 1e-5 in config.json and 1e-5 as float32 in the GGUF are the same number."""
    audit = audit_config(write_config(tmp_path, family), ggufs[family])
    assert audit.findings == () and audit.unchecked == ()
    audit.refuse()  # nothing to refuse


def test_engines_computing_silu_for_a_relu2_model(
    tmp_path: Path, ggufs: dict[str, GGUFFile]
) -> None:
    config = write_config(tmp_path, "bitnet")
    audit = audit_config(config, ggufs["bitnet"], ["llama.cpp", "bitnet.cpp"])
    assert fields_found(audit) == {("ffn_activation", "semantic")}
    assert [f.message() for f in audit.findings] == [
        "ffn_activation: 'relu2' in config.json hidden_act, 'silu' in llama.cpp 0c1e57098's "
        "bitnet graph (src/models/bitnet.cpp:127-132)",
        "ffn_activation: 'relu2' in config.json hidden_act, 'silu' in bitnet.cpp 406a5036f's "
        "bitnet graph (src/llama.cpp:15187-15192)",
    ]
    llama = audit_config(write_config(tmp_path / "l", "llama"), ggufs["llama"], ["llama.cpp"])
    assert llama.findings == ()


SHAPE_CHANGES: list[tuple[str, Any, set[str]]] = [
    ("num_hidden_layers", 3, {"num_hidden_layers"}),
    ("hidden_size", 128, {"hidden_size", "head_dim"}),
    ("intermediate_size", 256, {"intermediate_size"}),
    ("num_attention_heads", 8, {"num_attention_heads", "head_dim"}),
    ("num_key_value_heads", 4, {"num_key_value_heads"}),
    ("vocab_size", 300, {"vocab_size"}),
]
SEMANTIC_CHANGES: list[tuple[str, Any, set[str]]] = [
    ("hidden_act", "silu", {"ffn_activation"}),
    ("rms_norm_eps", 1e-6, {"rms_norm_eps"}),
    ("rope_parameters", {"rope_type": "default", "rope_theta": 500000.0}, {"rope_theta"}),
    (
        "rope_parameters",
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
        {"rope_scaling"},
    ),
    ("tie_word_embeddings", False, {"tie_word_embeddings"}),
    ("bos_token_id", 0, {"bos_token_id"}),
    ("eos_token_id", [5, 7], {"eos_token_id"}),
]


@pytest.mark.parametrize(("name", "value", "expected"), SHAPE_CHANGES)
def test_shape_mismatches_are_refused(
    tmp_path: Path, ggufs: dict[str, GGUFFile], name: str, value: Any, expected: set[str]
) -> None:
    audit = audit_config(write_config(tmp_path, "bitnet", **{name: value}), ggufs["bitnet"])
    assert fields_found(audit) == {(field, "shape") for field in expected}
    with pytest.raises(UsageError, match="the checkpoint and the GGUF are not the same model") as e:
        audit.refuse()
    assert e.value.exit_code == 2
    assert f"{name}: {value!r} in config.json {name}" in str(e.value)


@pytest.mark.parametrize(("name", "value", "expected"), SEMANTIC_CHANGES)
def test_semantic_mismatches_are_reported(
    tmp_path: Path, ggufs: dict[str, GGUFFile], name: str, value: Any, expected: set[str]
) -> None:
    audit = audit_config(write_config(tmp_path, "bitnet", **{name: value}), ggufs["bitnet"])
    assert fields_found(audit) == {(field, "semantic") for field in expected}
    audit.refuse()  # runs: printed and recorded, not refused
    recorded = json.loads(json.dumps(audit.to_json()))
    assert [f["field"] for f in recorded["findings"]] == sorted(expected)
    assert recorded["findings"][0]["message"] == audit.findings[0].message()


def test_messages_name_both_values_and_sources(tmp_path: Path, ggufs: dict[str, GGUFFile]) -> None:
    config = write_config(tmp_path, "bitnet", hidden_act="silu", num_hidden_layers=3)
    del config["rms_norm_eps"]  # BitNetConfig's default, 1e-5, stands in
    audit = audit_config(config, ggufs["bitnet"], ["llama.cpp"])
    assert [f.message() for f in audit.findings] == [
        "num_hidden_layers: 3 in config.json num_hidden_layers, 2 in GGUF bitnet.block_count: "
        "the two files cannot be the same model",
        "ffn_activation: 'silu' in config.json hidden_act, 'relu2' in the definition of the "
        "GGUF's architecture 'bitnet' (BitNetConfig.hidden_act; no GGUF key carries it)",
    ]
    assert [f.severity for f in audit.findings] == ["shape", "semantic"]


def test_a_gelu_llama_differs_from_its_definition_and_every_engine(
    tmp_path: Path, ggufs: dict[str, GGUFFile]
) -> None:
    config = write_config(tmp_path, "llama", hidden_act="gelu")
    audit = audit_config(config, ggufs["llama"], ["llama.cpp", "bitnet.cpp"])
    assert [(f.field, f.other_value) for f in audit.findings] == [("ffn_activation", "silu")] * 3


def test_families_and_engines_it_cannot_compare(tmp_path: Path, ggufs: dict[str, GGUFFile]) -> None:
    llama_config = write_config(tmp_path, "llama")
    audit = audit_config(llama_config, ggufs["bitnet"])
    assert [f.message() for f in audit.findings] == [
        "architecture: 'llama' in config.json model_type, 'bitnet' in GGUF "
        "general.architecture: the two files cannot be the same model"
    ]
    with pytest.raises(UsageError, match="model_type 'gpt2' is not a family") as e:
        audit_config({"model_type": "gpt2"}, ggufs["llama"])
    assert e.value.exit_code == 2
    engines = ["llama.cpp@0c1e57098", "llama.cpp@b1234", "cmd:./engine {model}"]
    audit = audit_config(write_config(tmp_path / "b", "bitnet"), ggufs["bitnet"], engines)
    assert [f.other_source for f in audit.findings] == [
        "llama.cpp 0c1e57098's bitnet graph (src/models/bitnet.cpp:127-132)"
    ]
    assert audit.unchecked == (
        "llama.cpp@b1234: facts were read at 0c1e57098, not b1234",
        "cmd:./engine {model}: no engine-graph facts are recorded for it",
    )


def test_tokenizer_kind_from_the_checkpoints_files(
    tmp_path: Path, ggufs: dict[str, GGUFFile]
) -> None:
    """A byte-level BPE tokenizer.json is llama.cpp's `gpt2`; the fixture's is `llama`."""
    tokenizers = pytest.importorskip("tokenizers")
    config = write_config(tmp_path, "llama")
    vocab = {"a": 0, "b": 1, "ab": 2}
    for byte_fallback, found in ((False, {("tokenizer_kind", "semantic")}), (True, set())):
        bpe = tokenizers.models.BPE(vocab, [("a", "b")], byte_fallback=byte_fallback)
        tokenizers.Tokenizer(bpe).save(str(tmp_path / "tokenizer.json"))
        audit = audit_config(config, ggufs["llama"], checkpoint=tmp_path)
        assert fields_found(audit) == found
    assert audit_config(config, ggufs["llama"]).findings == ()  # no directory: not compared


# --- the engine-graph table -----------------------------------------------------------


def allowed(choice: str) -> tuple[Any, ...]:
    """The values `definitions.Graph` allows for `choice`."""
    hint = typing.get_type_hints(Graph)[choice]
    args = typing.get_args(hint)
    return args if args else (hint,)


def test_every_fact_is_a_typed_graph_choice() -> None:
    assert {f.name for f in fields(Graph)} == set(GRAPH_CHOICES)
    for fact in FACTS:
        kinds = allowed(fact.choice)
        if isinstance(kinds[0], type):
            assert type(fact.value) is kinds[0], fact
        else:
            assert fact.value in kinds, fact
        assert fact.source and fact.code


def test_engine_graphs_differ_from_the_definitions_only_where_facts_say() -> None:
    """SiLU for bitnet's relu^2, and 10000 as the RoPE base a file does not give. Neither
    pinned engine has a graph for bitnet-b1.58 (`bitnet-25`): one is refused, not made up."""
    for arch, definition in DEFINITIONS.items():
        for engine in ("llama.cpp", "bitnet.cpp"):
            if arch in B158_ARCHS:
                with pytest.raises(UsageError, match=f"no facts are recorded about {engine}'s"):
                    choose_graph(arch, engine)
                continue
            graph = choose_graph(arch, engine).graph
            differ = {c for c in GRAPH_CHOICES if getattr(graph, c) != getattr(definition.graph, c)}
            expected = {"ffn_activation", "rope_freq_base_default"} if arch == "bitnet" else set()
            assert differ == expected, (arch, engine)


def test_facts_are_for_the_pinned_revisions() -> None:
    pins = load_pins()
    llama, bitnet = pins["llama.cpp"], pins["bitnet.cpp"]
    assert isinstance(llama, SdistPin) and isinstance(bitnet, GithubPin)
    assert LLAMA_CPP.revision == llama.upstream["rev"]
    assert BITNET_CPP.revision == bitnet.submodules["3rdparty/llama.cpp"].rev


NEEDLES: dict[tuple[str, Any], str] = {
    ("ffn_activation", "silu"): "LLM_FFN_SILU, LLM_FFN_PAR",
    ("ffn_activation", "relu2"): "LLM_FFN_RELU_SQR, LLM_FFN_PAR",
    ("sub_norms", True): "sub_norm",
    ("sub_norms", False): "model.layers[il].wo",
    ("rope", "norm"): "LLAMA_ROPE_TYPE_NORM",
    ("rope", "neox"): "LLAMA_ROPE_TYPE_NEOX",
    ("head", "token_embd"): "tok_embd",
    ("head", "output_else_token_embd"): "TOKEN_EMBD",
    ("rope_freq_base_default", 10000.0): "rope_freq_base_train = 10000.0f",
}


def cited_lines(fact: GraphFact, read: typing.Callable[[str], str]) -> str:
    """The lines `fact.source` cites ("path:a-b, c"), read with `read(path)`."""
    path, _, spans = fact.source.partition(":")
    lines = read(path).splitlines()
    cited = []
    for span in spans.split(","):
        first, _, last = span.strip().partition("-")
        cited += lines[int(first) - 1 : int(last or first)]
    return "\n".join(cited)


def check_facts(engine_revision: str, read: typing.Callable[[str], str]) -> None:
    facts = [f for f in FACTS if f.engine.revision == engine_revision]
    assert facts
    for fact in facts:
        text = cited_lines(fact, read)
        assert NEEDLES[fact.choice, fact.value] in text, (fact.source, text)
        if fact.choice == "rope":
            assert f"LLM_ARCH_{fact.arch.upper()}:" in text, fact.source


def test_upstream_facts_say_what_their_lines_say(llama_bin: Path) -> None:
    tree = llama_bin.parent / "src" / "vendor" / "llama.cpp"
    if not (tree / "src" / "models" / "bitnet.cpp").is_file():
        pytest.skip(f"no llama.cpp source tree at {tree}")
    check_facts(LLAMA_CPP.revision, lambda path: (tree / path).read_text())


def test_fork_facts_say_what_their_lines_say() -> None:
    git_dir = MIRRORS / "Eddie-Wang1120+llama.cpp" / "repo"
    rev = BITNET_CPP.revision

    def read(path: str) -> str:
        shown = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"{rev}:{path}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if shown.returncode != 0:
            pytest.skip(f"the fork at {rev[:9]} is not in {git_dir}: {shown.stderr.strip()}")
        return shown.stdout

    check_facts(rev, read)


def test_a_build_is_audited_at_the_revision_fetch_cpp_names_it_by(
    llama_bin: Path, tmp_path: Path
) -> None:
    """The engine a cpp: backend names: its build directory's revision (the pin's, so the
    pinned facts apply; bitnet.cpp's is microsoft/BitNet's commit, its facts the fork's),
    or `local` for a --source build, which no fact is claimed for."""
    from bitnet_xtask.crossval.audit import _engine
    from bitnet_xtask.crossval.backends import CppBackend, _build_receipt
    from bitnet_xtask.crossval.engine_graphs import BITNET_CPP, LLAMA_CPP

    built = llama_bin.parent
    llama = CppBackend("cpp:llama.cpp", built, receipt=_build_receipt(built, "cpp:llama.cpp"))
    assert llama.engine == "llama.cpp@0c1e57098" and _engine(llama.engine) is LLAMA_CPP
    pinned = CppBackend("cpp:bitnet.cpp", tmp_path / "bitnet.cpp-c82b5e667482-cpu")
    assert pinned.engine == "bitnet.cpp@c82b5e667482" and _engine(pinned.engine) is BITNET_CPP
    local = CppBackend("cpp:bitnet.cpp-local-cpu", tmp_path / "bitnet.cpp-local-cpu")
    assert local.engine == "bitnet.cpp@local"
    assert isinstance(_engine(local.engine), str)  # unchecked, with the reason


def _minimal_gguf(path: Path, arch: str, *, rope_freqs: bool = False) -> GGUFFile:
    """A GGUF with tiny's hyperparameters under `arch` and only the tensors the audit
    looks at: token_embd, and with `rope_freqs` a Llama 3 `rope_freqs.weight`, which the
    pinned converter writes for llama3 RoPE scaling instead of a rope.scaling.factor key
    (conversion/base.py:1490)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(TINY.n_layer)
    writer.add_context_length(TINY.n_ctx)
    writer.add_embedding_length(TINY.n_embd)
    writer.add_feed_forward_length(TINY.n_ff)
    writer.add_head_count(TINY.n_head)
    writer.add_head_count_kv(TINY.n_head_kv)
    writer.add_layer_norm_rms_eps(TINY.rms_norm_eps)
    writer.add_rope_freq_base(TINY.rope_freq_base)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", np.zeros((TINY.n_vocab, TINY.n_embd), np.float32))
    if rope_freqs:
        n_rot = TINY.n_embd // TINY.n_head
        writer.add_tensor("rope_freqs.weight", np.ones(n_rot // 2, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFFile(path)


def test_llama3_rope_scaling_is_compared_by_kind_when_the_factors_are_a_tensor(
    tmp_path: Path,
) -> None:
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    config = write_config(tmp_path, "llama", rope_scaling=llama3)
    audit = audit_config(config, _minimal_gguf(tmp_path / "m.gguf", "llama", rope_freqs=True))
    assert "rope_scaling" not in {f.field for f in audit.findings}, audit.findings
    plain = audit_config(config, _minimal_gguf(tmp_path / "p.gguf", "llama"))
    assert "rope_scaling" in {f.field for f in plain.semantic}  # llama3 config, plain file


def test_an_architecture_without_a_definition_is_not_refused_as_another_model(
    tmp_path: Path,
) -> None:
    """A GGUF architecture the reference has no definition of is neither refused as
    another model nor compared."""
    config = write_config(tmp_path, "bitnet")
    audit = audit_config(config, _minimal_gguf(tmp_path / "b.gguf", "bitnet-2027"))
    assert audit.findings == ()
    assert audit.unchecked == ("the GGUF's architecture 'bitnet-2027' has no definition "
                               "here: nothing compared",)  # fmt: skip
    audit.refuse()


@pytest.mark.parametrize("arch", ["bitnet-b1.58", "bitnet-25"])
def test_bitnet_b158_is_the_bitnet_family_with_quantized_activations(
    tmp_path: Path, arch: str
) -> None:
    """A bitnet config matches a bitnet-b1.58 (or bitnet-25) GGUF as the same family; a
    config without BitNet quantization is a model whose activations stay unquantized,
    which the file's definition quantizes: a semantic finding, named."""
    gguf = _minimal_gguf(tmp_path / "b.gguf", arch)
    plain = audit_config(write_config(tmp_path, "bitnet"), gguf)
    assert "architecture" not in {f.field for f in plain.findings}
    (finding,) = [f for f in plain.semantic if f.field == "activation_quant"]
    assert (finding.config_value, finding.other_value) == ("none", "int8_per_token")
    quantized = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                 "quantization_mode": "online"}  # fmt: skip
    config = write_config(tmp_path, "bitnet", quantization_config=quantized)
    assert "activation_quant" not in {f.field for f in audit_config(config, gguf).findings}
    normed = write_config(
        tmp_path, "bitnet", quantization_config=quantized | {"use_rms_norm": True}
    )
    (extra,) = [f for f in audit_config(normed, gguf).semantic if f.field == "activation_quant"]
    assert extra.config_value == "int8_per_token after an RMSNorm"
