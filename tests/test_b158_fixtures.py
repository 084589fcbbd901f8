"""gen-fixtures --arch bitnet-b1.58: a twin laid out as microsoft/bitnet-b1.58-2B-4T, whose
GGUFs bitnet-xtask writes as microsoft/BitNet's `utils/convert-hf-to-gguf-bitnet.py` would.

Checked against the real parts: the converter's own `quantize_to_i2_s` and
`BitnetModel.weight_quant`, taken from its source at test time (the fetched
microsoft/BitNet mirror, or $XTASK_TEST_BITNET_SOURCE); the whole converter run on the
twin's checkpoint when $XTASK_TEST_BITNET_SOURCE is a BitNet checkout with the llama.cpp
submodule's gguf-py; transformers' BitNetForCausalLM with online AutoBitLinear on the
checkpoint. Tests skip, saying why, when one is missing. Only `tiny` is generated; 2b4t
is checked by its plan.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bitnet_xtask.crossval.gguf_file import TensorInfo, tensor_nbytes
from bitnet_xtask.crossval.reference import PROJECTIONS
from bitnet_xtask.crossval.reference_weights import ReferenceFile
from bitnet_xtask.errors import NoSpaceError, UsageError
from bitnet_xtask.fixtures import hf_weights
from bitnet_xtask.fixtures.b158_gguf import (
    CONVERTER,
    data_bytes,
    plan_gguf,
    quantize_to_i2_s,
    weight_quant,
)
from bitnet_xtask.fixtures.b158_twin import checkpoint_bytes
from bitnet_xtask.fixtures.hf_weights import checkpoint_tensors, master_blocks, plan_checkpoint
from bitnet_xtask.fixtures.i2s import GGML_TYPE_I2_S
from bitnet_xtask.fixtures.names import B158
from bitnet_xtask.fixtures.spec import SIZES
from bitnet_xtask.fixtures.twin import TwinResult, generate_twin, prepare_twin, write_twin
from bitnet_xtask.fixtures.twin_check import gguf_name
from bitnet_xtask.fixtures.twin_spec import TWIN_QUANTS, TwinSpec, bitnet_hparams, twin_layout

Floats = npt.NDArray[np.float32]
FORMS = ("f32", "f16", "i2_s")
SCRIPT = "utils/convert-hf-to-gguf-bitnet.py"
BITNET_MIRROR = Path("/work/.mirror/microsoft+BitNet/repo")
"""The fetched bare mirror of microsoft/BitNet, when $XTASK_TEST_BITNET_SOURCE is unset."""
I2_S = GGML_TYPE_I2_S


# --- the spec and the 2b4t plan ----------------------------------------------------------


def test_sizes_follow_the_bitnet_rules_and_2b4t_is_the_real_model() -> None:
    for size, base in SIZES.items():
        assert TwinSpec.parse(B158, size, 0).hparams == bitnet_hparams(base)
    real = TwinSpec.parse(B158, "2b4t", 0).hparams
    assert (real.n_vocab, real.n_ctx, real.n_embd, real.n_layer) == (128256, 4096, 2560, 30)
    assert (real.n_head, real.n_head_kv, real.head_dim, real.n_ff) == (20, 5, 128, 6912)
    assert (real.rope_freq_base, real.rms_norm_eps) == (500000.0, 1e-5)
    assert TWIN_QUANTS[B158] == FORMS
    for family in ("llama", "bitnet"):
        with pytest.raises(ValueError, match=r"2b4t .* is for bitnet-b1\.58 twins only"):
            TwinSpec.parse(family, "2b4t", 0)


def test_the_2b4t_plan_is_the_published_files_shape() -> None:
    """332 tensors (30 x 11, token_embd, output_norm; no output.weight, as in the published
    ggml-model-i2_s.gguf); the figures are printed for the report."""
    spec = TwinSpec.parse(B158, "2b4t", 0)
    for quant in FORMS:
        tensors = plan_gguf(spec, quant)
        names = [tensor.name for tensor in tensors]
        assert len(tensors) == 332 and len(set(names)) == 332
        assert "output.weight" not in names and names[0] == "token_embd.weight"
        assert names[-1] == "output_norm.weight"
    i2_s = plan_gguf(spec, "i2_s")
    assert sum(t.type_name == "i2_s" for t in i2_s) == 210
    assert {t.name: t.type_name for t in i2_s}["token_embd.weight"] == "f16"
    total = data_bytes(spec, "i2_s")
    assert total == sum(t.nbytes for t in i2_s) == 1_179_449_920  # every size is 32-aligned
    assert checkpoint_bytes(spec) == 4_825_640_960
    print(f"2b4t i2_s tensor data: {total:,} bytes; bf16 checkpoint data: 4,825,640,960")


# --- the master weights -------------------------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
def test_master_weights_are_bf16_f16_and_sum_exactly(size: str) -> None:
    """Every value is exact in bfloat16 and float16; each projection is integers times a
    power of two whose |sum| is below 2**24 of them, so its float32 sum is exact in any
    order, and `weight_quant` is the converter's whatever torch's thread count."""
    spec = TwinSpec.parse(B158, size, 5)
    for name, values in checkpoint_tensors(spec).items():
        assert np.array_equal(values.astype(np.float16).astype(np.float32), values), name
        bf16 = (values.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        assert np.array_equal(bf16, values), name
        if name.split(".")[-2].endswith("_proj"):
            _assert_exact_sum(values)


def test_a_2b4t_ffn_matrix_sums_exactly_on_its_coarse_grid() -> None:
    """The hardest case: 6912 x 2560 weights, whose grid step is near sigma."""
    spec = TwinSpec.parse(B158, "2b4t", 0)
    plan = next(p for p in plan_checkpoint(spec) if p.name.endswith("0.mlp.down_proj.weight"))
    (values,) = master_blocks(spec, plan)
    assert values.shape == (2560, 6912)
    _assert_exact_sum(values)
    quantized = weight_quant(values)
    rms = float(np.sqrt(np.mean(np.square(quantized.astype(np.float64))) * values.shape[1]))
    assert 0.7 < rms < 1.4  # a unit-RMS input keeps roughly unit RMS (hf_weights.B158_GAIN)
    torch = _torch()
    before = torch.get_num_threads()
    try:
        for threads in (1, 4):  # torch's float32 sum order changes with the thread count
            torch.set_num_threads(threads)
            theirs = _upstream_weight_quant_torch(torch, values)
            assert np.array_equal(theirs.view(np.uint32), quantized.view(np.uint32)), threads
    finally:
        torch.set_num_threads(before)


def test_embedding_rows_in_blocks_are_the_same_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TwinSpec.parse(B158, "tiny", 2)
    plan = plan_checkpoint(spec)[0]
    (whole,) = master_blocks(spec, plan)
    monkeypatch.setattr(hf_weights, "EMBEDDING_ROWS", 100)
    blocks = list(master_blocks(spec, plan))
    assert [b.shape[0] for b in blocks] == [100, 100, 100, 84]
    assert np.array_equal(np.concatenate(blocks), whole)


# --- the twin on disk ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> TwinResult:
    return generate_twin(B158, "tiny", (), 0, tmp_path_factory.mktemp("b158"))


def test_layout_and_manifest(twin: TwinResult) -> None:
    layout = twin_layout(twin.spec, twin.directory.parent.parent)
    assert twin.directory.name == "bitnet-b1.58-tiny-seed0"
    assert twin.ggufs == {q: layout.gguf(q) for q in FORMS}
    assert layout.gguf("i2_s").name == "bitnet-b1.58-tiny-i2_s-seed0.gguf"
    manifest = json.loads(twin.manifest.read_text())
    converter = manifest["converter"]
    assert converter["run"] is False and converter["script"] == SCRIPT == CONVERTER
    assert converter["source"].startswith("microsoft/BitNet@16da220")
    assert converter["commands"]["i2_s"] == [
        "python3", SCRIPT, "hf", "--outfile", "bitnet-b1.58-tiny-i2_s-seed0.gguf",
        "--outtype", "i2_s",
    ]  # fmt: skip
    on_disk = _tree(twin.directory)
    assert sorted(on_disk) == sorted([*manifest["files"], "twin.json"])
    for name, facts in manifest["files"].items():
        assert facts == {
            "sha256": on_disk[name],
            "size_bytes": (twin.directory / name).stat().st_size,
        }
    config = json.loads((twin.checkpoint / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online",
    }  # fmt: skip
    assert (config["model_type"], config["hidden_act"], config["dtype"]) == (
        "bitnet", "relu2", "bfloat16",
    )  # fmt: skip
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 500000.0


def test_same_arguments_give_identical_bytes_also_when_streamed_in_small_blocks(
    twin: TwinResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_weights, "EMBEDDING_ROWS", 100)
    again = generate_twin(B158, "tiny", (), 0, tmp_path / "elsewhere")
    assert _tree(again.directory) == _tree(twin.directory)


def test_safetensors_is_bf16_in_name_order_and_safe_open_sorts(twin: TwinResult) -> None:
    safetensors = pytest.importorskip("safetensors")
    torch = _torch()
    path = twin.checkpoint / "model.safetensors"
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    names = [name for name in header if name != "__metadata__"]
    assert names == sorted(names) and {header[n]["dtype"] for n in names} == {"BF16"}
    offsets = [header[n]["data_offsets"] for n in names]
    assert offsets[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(offsets))
    master = checkpoint_tensors(twin.spec)
    with safetensors.safe_open(path, framework="pt") as handle:
        keys = list(handle.keys())
        assert keys == sorted(master)  # the order the converter reads
        for name in keys:
            loaded = handle.get_tensor(name)
            assert loaded.dtype == torch.bfloat16
            assert np.array_equal(loaded.to(torch.float32).numpy(), master[name]), name


@pytest.mark.parametrize("quant", FORMS)
def test_metadata_is_the_converters(twin: TwinResult, quant: str) -> None:
    """The keys and values, in order, of `set_gguf_parameters` (:116-161, :1043-1053),
    `_set_vocab_sentencepiece` (:380-443) and gguf-py 0.19's SpecialVocab over the twin's
    tokenizer files (it adds add_sep_token False: the pair template's middle `<s>`)."""
    reader = ReferenceFile(twin.ggufs[quant])
    fields = [
        (f.name, f.contents()) for f in reader.fields.values() if not f.name.startswith("GGUF.")
    ]
    arch = B158
    hp = twin.spec.hparams
    head = [
        ("general.architecture", arch), ("general.name", "hf"),
        (f"{arch}.block_count", hp.n_layer), (f"{arch}.context_length", hp.n_ctx),
        (f"{arch}.embedding_length", hp.n_embd), (f"{arch}.feed_forward_length", hp.n_ff),
        (f"{arch}.attention.head_count", hp.n_head),
        (f"{arch}.attention.head_count_kv", hp.n_head_kv),
        (f"{arch}.rope.freq_base", 500000.0),
        (f"{arch}.attention.layer_norm_rms_epsilon", pytest.approx(1e-5)),
        ("general.file_type", {"f32": 0, "f16": 1, "i2_s": 40}[quant]),
        (f"{arch}.vocab_size", hp.n_vocab), (f"{arch}.rope.dimension_count", 64),
        ("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.pre", "default"),
    ]  # fmt: skip
    tail = [
        ("tokenizer.ggml.bos_token_id", 1), ("tokenizer.ggml.eos_token_id", 2),
        ("tokenizer.ggml.unknown_token_id", 0), ("tokenizer.ggml.add_bos_token", True),
        ("tokenizer.ggml.add_sep_token", False), ("tokenizer.ggml.add_eos_token", False),
    ]  # fmt: skip
    assert fields[: len(head)] == head
    assert [name for name, _ in fields[len(head) : len(head) + 3]] == [
        "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
    ]  # fmt: skip
    assert fields[len(head) + 3 :] == tail
    tokens, scores, types = (value for _, value in fields[len(head) : len(head) + 3])
    assert (tokens, scores, types) == _sentencepiece_pieces(twin.checkpoint / "tokenizer.model")


@pytest.mark.parametrize("quant", FORMS)
def test_tensors_are_in_the_converters_order_with_its_types(twin: TwinResult, quant: str) -> None:
    reader = ReferenceFile(twin.ggufs[quant])
    infos = list(reader.tensor_infos.values())
    layer0 = [
        "blk.0.attn_norm", "blk.0.ffn_down", "blk.0.ffn_sub_norm", "blk.0.ffn_gate",
        "blk.0.ffn_up", "blk.0.ffn_norm", "blk.0.attn_sub_norm", "blk.0.attn_k",
        "blk.0.attn_output", "blk.0.attn_q", "blk.0.attn_v",
    ]  # fmt: skip
    names = [info.name for info in infos]
    assert names[:12] == ["token_embd.weight", *(f"{n}.weight" for n in layer0)]
    assert names == [gguf_name(n) for n in sorted(checkpoint_tensors(twin.spec))]
    assert names[-1] == "output_norm.weight" and len(names) == 2 * 11 + 2
    for info in infos:
        assert info.type_id == _expected_type(quant, info.name), info.name
        assert info.offset % 32 == 0
    master = checkpoint_tensors(twin.spec)
    shapes = {gguf_name(name): values.shape for name, values in master.items()}
    assert all(info.shape == shapes[info.name] for info in infos)


@pytest.mark.parametrize("quant", FORMS)
def test_values_are_weight_quant_of_the_master_weights(twin: TwinResult, quant: str) -> None:
    """Projections: the converter's weight_quant of the master weights (cast to f16 in
    the f16 form); everything else: the master weights themselves, in every form."""
    reader = ReferenceFile(twin.ggufs[quant])
    for name, master in checkpoint_tensors(twin.spec).items():
        got = reader.dequantize(gguf_name(name))
        if gguf_name(name).split(".")[-2] in PROJECTIONS:
            want = weight_quant(master)
            if quant == "f16":
                want = want.astype(np.float16).astype(np.float32)
        else:
            want = master
        assert got.shape == want.shape and np.array_equal(got, want), (quant, name)


# --- the upstream converter's own functions -----------------------------------------------


def test_weight_quant_and_i2_s_bytes_are_the_upstream_functions(twin: TwinResult) -> None:
    """`BitnetModel.weight_quant` and `quantize_to_i2_s`, extracted from the converter's
    source and run: equal, bit for bit and byte for byte, to ours and to the GGUF's."""
    torch = _torch()
    upstream = _upstream_functions(torch)
    reader = ReferenceFile(twin.ggufs["i2_s"])
    for name, master in checkpoint_tensors(twin.spec).items():
        if gguf_name(name).split(".")[-2] not in PROJECTIONS:
            continue
        theirs = upstream["weight_quant"](None, torch.from_numpy(master)).numpy()
        ours = weight_quant(master)
        assert theirs.dtype == np.float32 and np.array_equal(
            theirs.view(np.uint32), ours.view(np.uint32)
        )
        packed = upstream["quantize_to_i2_s"](theirs)
        assert np.array_equal(packed, quantize_to_i2_s(ours)), name
        info = reader.tensor_infos[gguf_name(name)]
        assert bytes(reader.data[info.offset : info.offset + packed.size]) == packed.tobytes()
    rng = np.random.default_rng(3)  # any weights, zeros and unequal magnitudes included
    generic = (rng.integers(-1, 2, size=(64, 256)) * rng.random((64, 256))).astype(np.float32)
    generic[0, :5] = 0.0
    assert np.array_equal(upstream["quantize_to_i2_s"](generic), quantize_to_i2_s(generic))
    zeros = np.zeros((2, 128), dtype=np.float32)
    assert np.array_equal(upstream["quantize_to_i2_s"](zeros), quantize_to_i2_s(zeros))


def test_the_upstream_converter_writes_the_same_files(twin: TwinResult, tmp_path: Path) -> None:
    """The whole converter, run on the twin's checkpoint: the same metadata, tensor
    names, order, types and bytes (I2_S included)."""
    source = _bitnet_checkout()
    _torch()
    for quant in FORMS:
        out = tmp_path / f"{quant}.gguf"
        env = {**os.environ, "PYTHONPATH": str(source / "3rdparty" / "llama.cpp" / "gguf-py")}
        done = subprocess.run(
            [sys.executable, str(source / SCRIPT), "hf", "--outfile", str(out), "--outtype", quant],
            cwd=twin.directory, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        ours, theirs = ReferenceFile(twin.ggufs[quant]), ReferenceFile(out)
        assert _fields(theirs) == _fields(ours), quant
        assert _infos(theirs) == _infos(ours), quant
        for name, info in ours.tensor_infos.items():
            assert _data(theirs, theirs.tensor_infos[name]) == _data(ours, info), (quant, name)


# --- transformers -------------------------------------------------------------------------


def test_transformers_loads_it_with_online_autobitlinear(twin: TwinResult) -> None:
    """BitNetForCausalLM with AutoBitLinear layers quantizing online; their WeightQuant of
    each master weight is the f32 and i2_s GGUFs' projection, bit for bit."""
    torch = _torch()
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers.integrations.bitnet import AutoBitLinear, WeightQuant

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        twin.checkpoint, dtype=torch.float32, output_loading_info=True
    )
    assert type(model).__name__ == "BitNetForCausalLM" and model.config.hidden_act == "relu2"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    master = checkpoint_tensors(twin.spec)
    files = {quant: ReferenceFile(twin.ggufs[quant]) for quant in ("f32", "i2_s")}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, AutoBitLinear)}
    assert len(linears) == 7 * twin.spec.hparams.n_layer
    for module_name, module in linears.items():
        assert module.online_quant
        name = f"{module_name}.weight"
        assert np.array_equal(module.weight.detach().numpy(), master[name])
        with torch.no_grad():
            quantized = WeightQuant.apply(module.weight).numpy()  # type: ignore[no-untyped-call]
        for reader in files.values():
            assert np.array_equal(quantized, reader.dequantize(gguf_name(name))), name
    with torch.no_grad():
        logits = model(torch.tensor([[1, 264, 269, 259]])).logits[0].numpy()
    assert logits.shape == (4, twin.spec.hparams.n_vocab) and np.isfinite(logits).all()


# --- bad input, a full disk ---------------------------------------------------------------


def test_bad_combinations_are_exit_2_and_write_nothing(xtask: Any, tmp_path: Path) -> None:
    out = tmp_path / "fixtures"
    cases = [
        (("--arch", "bitnet", "--twin", "--size", "2b4t"), "is for bitnet-b1.58 twins only"),
        (("--size", "2b4t"), "is for --arch bitnet-b1.58 only"),
        (("--arch", "llama", "--arch", B158), "comes as a twin only"),
        (("--arch", B158, "--llama-source", str(tmp_path)), "do not use"),
        (("--arch", B158, "--quant", "tq2_0"), "has no tq2_0 form"),
        (("--arch", B158, "--twin", "--quant", "q8_0"), "has no q8_0 form"),
    ]
    for args, message in cases:
        run = xtask.run("gen-fixtures", *args, "--output", str(out))
        assert run.code == 2 and message in run.stderr, (args, run.stderr)
        assert not out.exists(), args
    with pytest.raises(UsageError, match="do not use"):
        prepare_twin(B158, "tiny", (), 0, out, tmp_path)


def test_the_cli_writes_the_twin_and_reports_it(xtask: Any, tmp_path: Path) -> None:
    out = tmp_path / "fixtures"
    run = xtask.run("gen-fixtures", "--arch", B158, "--quant", "i2_s", "--seed", "4",
                    "--output", str(out), "--json")  # fmt: skip
    assert run.code == 0, run.stderr
    (event,) = run.events()
    directory = out / "twins" / "bitnet-b1.58-tiny-seed4"
    assert event["model"] == str(directory / "bitnet-b1.58-tiny-i2_s-seed4.gguf")
    assert (event["arch"], event["quant"], event["size"]) == (B158, "i2_s", "tiny")
    assert event["sha256"] == hashlib.sha256(Path(event["model"]).read_bytes()).hexdigest()
    assert json.loads((directory / "twin.json").read_text())["ggufs"] == {
        "i2_s": "bitnet-b1.58-tiny-i2_s-seed4.gguf"
    }


def test_no_room_is_exit_10_before_anything_is_written(
    xtask: Any, mounts: Any, tmp_path: Path
) -> None:
    disk = mounts.tmpfs(tmp_path / "small", "8m")
    run = xtask.run("gen-fixtures", "--arch", B158, "--output", str(disk / "fixtures"))
    assert run.code == 10 and "not enough disk space" in run.stderr, run.stderr
    assert not (disk / "fixtures").exists()


def test_a_disk_that_fills_while_writing_is_exit_10_and_leaves_no_twin(
    mounts: Any, tmp_path: Path
) -> None:
    disk = mounts.tmpfs(tmp_path / "disk", "96m")
    plan = prepare_twin(B158, "tiny", (), 0, disk / "fixtures")  # the space check passes
    (disk / "ballast").write_bytes(bytes(shutil.disk_usage(disk).free - (6 << 20)))
    with pytest.raises(NoSpaceError):
        write_twin(plan)
    assert not plan.layout.manifest.exists()
    left = [p.name for p in plan.layout.directory.rglob("*") if p.is_file()]
    assert not any(name.endswith(".tmp") for name in left), left


# --- helpers ------------------------------------------------------------------------------


def _assert_exact_sum(values: Floats) -> None:
    magnitudes = np.abs(values).astype(np.float64)
    quantum = float(magnitudes[magnitudes > 0].min())
    steps = magnitudes / 2.0 ** np.floor(np.log2(quantum))
    assert np.array_equal(steps, np.round(steps)), "not on one power-of-two grid"
    assert steps.sum() < 2**24
    total = np.float32(magnitudes.sum())
    assert float(total) == magnitudes.sum()


def _expected_type(quant: str, name: str) -> int:
    """The converter's types: f32 all F32; f16 projections F16; i2_s projections I2_S and
    token_embd F16; norms and (without --quant-embd, below i2_s) token_embd F32."""
    projection = name.split(".")[-2] in PROJECTIONS
    if quant == "f32":
        return 0
    if quant == "f16":
        return 1 if projection else 0
    return I2_S if projection else int(name == "token_embd.weight")


def _sentencepiece_pieces(model: Path) -> tuple[list[str], list[float], list[int]]:
    """What `_set_vocab_sentencepiece` (:380-424) reads from tokenizer.model."""
    sentencepiece = pytest.importorskip("sentencepiece")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    tokens, scores, types = [], [], []
    for index in range(processor.vocab_size()):
        tokens.append(processor.id_to_piece(index))
        scores.append(processor.get_score(index))
        kind = 1
        for check, value in ((processor.is_unknown, 2), (processor.is_control, 3),
                             (processor.is_unused, 5), (processor.is_byte, 6)):  # fmt: skip
            if check(index):
                kind = value
                break
        types.append(kind)
    return tokens, scores, types


def _tree(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _torch() -> Any:
    return pytest.importorskip("torch")


def _upstream_weight_quant_torch(torch: Any, values: Floats) -> Floats:
    """The converter's weight_quant taken from its source, run in torch."""
    theirs: Floats = _upstream_functions(torch)["weight_quant"](
        None, torch.from_numpy(values)
    ).numpy()
    return theirs


def _converter_text() -> str:
    """convert-hf-to-gguf-bitnet.py from $XTASK_TEST_BITNET_SOURCE (a checkout or a git
    directory) or the fetched mirror; skip when neither has it."""
    given = os.environ.get("XTASK_TEST_BITNET_SOURCE")
    root = Path(given) if given else BITNET_MIRROR
    if (root / SCRIPT).is_file():
        return (root / SCRIPT).read_text("utf-8")
    done = subprocess.run(
        ["git", "--git-dir", str(root), "show", f"HEAD:{SCRIPT}"],
        capture_output=True, text=True, check=False,
    ) if root.is_dir() else None  # fmt: skip
    if done is None or done.returncode != 0:
        pytest.skip(
            f"needs microsoft/BitNet's {SCRIPT}: set XTASK_TEST_BITNET_SOURCE to a checkout "
            f"(or git directory) of microsoft/BitNet; none at {root}"
        )
    return done.stdout


def _upstream_functions(torch: Any) -> dict[str, Callable[..., Any]]:
    """`quantize_to_i2_s` and `BitnetModel.weight_quant`, cut out of the converter's source
    (ast) and executed with numpy and torch: the upstream code, not a copy."""
    tree = ast.parse(_converter_text())
    wanted: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "quantize_to_i2_s":
            wanted.append(node)
        if isinstance(node, ast.ClassDef) and node.name == "BitnetModel":
            wanted += [
                n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "weight_quant"
            ]
    assert [getattr(n, "name", "") for n in wanted] == ["quantize_to_i2_s", "weight_quant"]
    namespace: dict[str, Any] = {"np": np, "torch": torch}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), SCRIPT, "exec"), namespace)
    return {name: namespace[name] for name in ("quantize_to_i2_s", "weight_quant")}


def _bitnet_checkout() -> Path:
    given = os.environ.get("XTASK_TEST_BITNET_SOURCE")
    constants = Path(given or "/nonexistent") / "3rdparty/llama.cpp/gguf-py/gguf/constants.py"
    if (
        not given
        or not (Path(given) / SCRIPT).is_file()
        or not constants.is_file()
        or ("BITNET_B158" not in constants.read_text("utf-8"))
    ):
        pytest.skip(
            "needs $XTASK_TEST_BITNET_SOURCE: a microsoft/BitNet checkout whose "
            "3rdparty/llama.cpp/gguf-py defines MODEL_ARCH.BITNET_B158"
        )
    return Path(given)


def _fields(reader: ReferenceFile) -> list[tuple[str, Any]]:
    return [
        (f.name, f.contents()) for f in reader.fields.values() if not f.name.startswith("GGUF.")
    ]


def _infos(reader: ReferenceFile) -> list[tuple[str, int, tuple[int, ...], int]]:
    return [(i.name, i.type_id, tuple(i.shape), i.offset) for i in reader.tensor_infos.values()]


def _data(reader: ReferenceFile, info: TensorInfo) -> bytes:
    size = tensor_nbytes(info.shape, info.type_id)
    assert size is not None
    return bytes(reader.data[info.offset : info.offset + size])
