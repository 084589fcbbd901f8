"""gen-fixtures --twin: a Hugging Face checkpoint and the GGUFs the pinned llama.cpp's own
converter makes of it, checked with the real parts.

transformers and torch run the checkpoint; the converter is the pinned sdist's
`convert_hf_to_gguf.py` (the `llama_bin` build's `src/`, or XTASK_TEST_LLAMA_BIN's); the
GGUFs run in that build's harness (`xtask-logits`). Tests skip, saying why, when one of
those is missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_xtask.errors import UsageError, XtaskError
from bitnet_xtask.fixtures import convert
from bitnet_xtask.fixtures.hf_checkpoint import safetensors_bytes
from bitnet_xtask.fixtures.hf_tokenizer import bpe_merges
from bitnet_xtask.fixtures.hf_weights import PROJECTIONS, checkpoint_tensors, plan_checkpoint
from bitnet_xtask.fixtures.sentencepiece_model import encode_model
from bitnet_xtask.fixtures.spec import SIZES
from bitnet_xtask.fixtures.twin import TwinResult, generate_twin
from bitnet_xtask.fixtures.twin_check import check_gguf, expected_tensors
from bitnet_xtask.fixtures.twin_spec import CONVERTER_FAMILIES, TWIN_QUANTS, TwinSpec, twin_layout
from bitnet_xtask.fixtures.vocab import build_vocab

HF_MODULES = ("torch", "transformers", "sentencepiece", "google.protobuf")
PROMPTS = (
    "Hello world",
    " Hello world",  # a leading space: SentencePiece's dummy prefix makes it `▁ ▁Hello`
    "   ",
    "Hello  world",
    "the model of 1234 tokens",
    "x = 3.14; y=-2!",
    "naïve café ☃ 日本 🙂",  # byte fallback
    "BitNet\nllama\ttest",
    "trailing ",
    "<s>Hello</s> world",  # special tokens in the text
)


def _missing_hf() -> list[str]:
    missing = []
    for name in HF_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # google absent altogether
            found = False
        if not found:
            missing.append(name)
    return missing


needs_hf = pytest.mark.skipif(
    bool(_missing_hf()), reason=f"needs {' '.join(_missing_hf())}: pip install 'bitnet-xtask[hf]'"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): _sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# --- the pieces, without the converter --------------------------------------------------


def test_bitnet_sizes_follow_the_2b_4t_shape_rules() -> None:
    for size in SIZES:
        hp = TwinSpec.parse("bitnet", size, 0).hparams
        assert hp.head_dim == 64 and hp.n_head == 4 * hp.n_head_kv
        assert hp.n_ff % 256 == 0 and hp.n_embd % 256 == 0
        assert abs(hp.n_ff - 2.7 * hp.n_embd) <= 128  # 2.7x, to the nearest multiple of 256
        assert (hp.rope_freq_base, hp.rms_norm_eps) == (500000.0, 1e-5)
    tiny = TwinSpec.parse("bitnet", "tiny", 0).hparams
    assert (tiny.n_embd, tiny.n_head, tiny.n_head_kv, tiny.n_ff) == (256, 4, 1, 768)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        TwinSpec.parse("mamba", "tiny", 0)
    with pytest.raises(ValueError, match="no tq2_0 form"):
        TwinSpec.parse("llama", "tiny", 0).check_quants(("tq2_0",))
    assert TwinSpec.parse("bitnet", "tiny", 0).check_quants(("f16", "f16")) == ("f16",)


@pytest.mark.parametrize("size", list(SIZES))
def test_bitnet_projections_are_a_fixed_point_of_the_converters_ternarization(size: str) -> None:
    """+-s with s a power of two survives `BitnetModel.weight_quant` bit for bit (the
    formula of conversion/bitnet.py:24-33, here in NumPy float32)."""
    spec = TwinSpec.parse("bitnet", size, 3)
    tensors = checkpoint_tensors(spec)
    for name, w in tensors.items():
        if name.split(".")[-2] not in PROJECTIONS:
            continue
        scale = np.maximum(np.abs(w).mean(dtype=np.float32), np.float32(1e-5))
        iscale = np.float32(1) / scale
        assert np.array_equal(np.clip(np.round(w * iscale), -1, 1) / iscale, w), name
        assert np.count_nonzero(w) == w.size and np.unique(np.abs(w)).size == 1


def test_every_value_is_a_float16_too() -> None:
    for family in TWIN_QUANTS:
        for name, values in checkpoint_tensors(TwinSpec.parse(family, "tiny", 0)).items():
            assert np.array_equal(values.astype(np.float16).astype(np.float32), values), name


def test_safetensors_round_trip_and_layout() -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = checkpoint_tensors(TwinSpec.parse("llama", "tiny", 1))
    data = safetensors_bytes(tensors)
    header_len = int.from_bytes(data[:8], "little")
    assert header_len % 8 == 0
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "pt"}
    loaded = safetensors_numpy.load(data)
    assert loaded.keys() == tensors.keys()
    for name, values in tensors.items():
        assert loaded[name].dtype == np.float32 and np.array_equal(loaded[name], values)
    assert [p.name for p in plan_checkpoint(TwinSpec.parse("llama", "tiny", 1))][-1] == (
        "lm_head.weight"
    )


def test_tokenizer_model_is_what_sentencepiece_reads() -> None:
    pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    vocab = build_vocab(384)
    data = encode_model(vocab)
    proto = pb2.ModelProto()
    proto.ParseFromString(data)
    assert proto.SerializeToString() == data  # our field order is protobuf's own
    assert [p.piece for p in proto.pieces] == vocab.tokens
    assert [p.type for p in proto.pieces] == [int(t) for t in vocab.token_types]
    assert proto.trainer_spec.model_type == proto.trainer_spec.BPE
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.pad_id == -1
    assert not proto.normalizer_spec.remove_extra_whitespaces


@needs_hf
def test_tokenizer_json_tokenizes_as_sentencepiece(tmp_path: Path) -> None:
    """The transformers tokenizer (`tokenizer.json`) and SentencePiece over
    `tokenizer.model` give the same ids on text without special tokens."""
    import sentencepiece
    from transformers.convert_slow_tokenizer import (  # type: ignore[attr-defined]
        generate_merges,
    )

    from bitnet_xtask.fixtures.hf_checkpoint import checkpoint_files

    spec = TwinSpec.parse("llama", "tiny", 0)
    files = checkpoint_files(spec, checkpoint_tensors(spec))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    vocab = build_vocab(spec.hparams.n_vocab)
    ids = {token: index for index, token in enumerate(vocab.tokens)}
    assert bpe_merges(vocab.tokens) == generate_merges(ids)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    tokenizer = _hf_tokenizer(tmp_path)
    for prompt in (p for p in PROMPTS if "<" not in p):
        assert tokenizer(prompt).input_ids == [1, *processor.encode(prompt)], prompt


# --- the real converter, transformers and the harness ------------------------------------


@pytest.fixture(scope="module")
def llama_source(llama_bin: Path) -> Path:
    source = llama_bin.parent / "src"
    if not (source / "vendor" / "llama.cpp" / convert.SCRIPT).is_file():
        pytest.skip(f"no llama.cpp source with {convert.SCRIPT} at {source}")
    if _missing_hf():
        pytest.skip(f"needs {' '.join(_missing_hf())}: pip install 'bitnet-xtask[hf]'")
    return source


@pytest.fixture(scope="module")
def twins(llama_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TwinResult]:
    """Both converted tiny twins with every form, made once for the module."""
    output = tmp_path_factory.mktemp("twins")
    made = {}
    for family in CONVERTER_FAMILIES:
        started = time.perf_counter()
        made[family] = generate_twin(family, "tiny", (), 0, output, llama_source)
        print(f"{family} tiny twin: {time.perf_counter() - started:.1f} s")
    return made


def test_same_arguments_give_identical_bytes_wherever_they_go(
    twins: dict[str, TwinResult], llama_source: Path, tmp_path: Path
) -> None:
    for family, first in twins.items():
        second = generate_twin(family, "tiny", (), 0, tmp_path / "elsewhere" / "deep", llama_source)
        assert _tree(first.directory) == _tree(second.directory)
        listed = json.loads(first.manifest.read_text())["files"]
        on_disk = _tree(first.directory)
        assert sorted(on_disk) == sorted([*listed, "twin.json"])  # nothing else is there
        for name, facts in listed.items():
            path = first.directory / name
            assert facts == {"sha256": on_disk[name], "size_bytes": path.stat().st_size}


def test_twin_json_names_the_converter_and_its_commands(
    twins: dict[str, TwinResult], llama_source: Path
) -> None:
    twin = twins["bitnet"]
    manifest = json.loads(twin.manifest.read_text())
    converter = manifest["converter"]
    assert converter["source_verified"] == _marker(llama_source)
    assert converter["input_renames"] == {
        "mlp.ffn_sub_norm.": "mlp.ffn_layernorm.",
        "self_attn.attn_sub_norm.": "self_attn.inner_attn_ln.",
    }
    assert converter["commands"]["tq2_0"] == [
        "python3", convert.SCRIPT, "hf", "--outfile", "bitnet-tiny-tq2_0-seed0.gguf",
        "--outtype", "tq2_0", "--model-name", "bitnet-tiny-seed0",
    ]  # fmt: skip
    layout = twin_layout(twin.spec, twin.directory.parent.parent)
    assert manifest["ggufs"] == {q: layout.gguf(q).name for q in ("f32", "f16", "tq2_0")}
    assert twin.ggufs == {q: layout.gguf(q) for q in ("f32", "f16", "tq2_0")}
    assert twin.checkpoint == layout.checkpoint and twin.manifest == layout.manifest


def test_every_gguf_holds_the_checkpoints_numbers(twins: dict[str, TwinResult]) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    for twin in twins.values():
        checkpoint = safetensors_numpy.load_file(twin.checkpoint / "model.safetensors")
        expected = expected_tensors(twin.spec, checkpoint)
        for path in twin.ggufs.values():
            check_gguf(path, expected)
        name = next(iter(expected))
        tampered = {**expected, name: expected[name] * np.float32(1.0 + 2**-10)}
        with pytest.raises(XtaskError, match=f"tensor {name} differs"):
            check_gguf(twin.ggufs["f32"], tampered)


def test_the_checkpoint_loads_in_transformers_and_runs(twins: dict[str, TwinResult]) -> None:
    for family, twin in twins.items():
        model, info = _hf_model(twin.checkpoint, output_loading_info=True)
        assert type(model).__name__ == twin.spec.architecture
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
        logits = _hf_logits(model, [1, 264, 269])
        assert logits.shape == (3, twin.spec.hparams.n_vocab) and np.isfinite(logits).all()
        assert (family == "bitnet") == (model.config.hidden_act == "relu2")


def test_every_gguf_runs_in_the_pinned_harness(
    twins: dict[str, TwinResult], llama_bin: Path, tmp_path: Path
) -> None:
    for twin in twins.values():
        for quant, path in twin.ggufs.items():
            started = time.perf_counter()
            logits, summary = _harness_logits(llama_bin, path, [1, 264, 269, 259], tmp_path / quant)
            print(f"{path.name}: {time.perf_counter() - started:.3f} s")
            assert summary["ok"] and len(summary["continuation"]) == 2
            assert logits.shape == (4, twin.spec.hparams.n_vocab) and np.isfinite(logits).all()


TOKENS = [1, 264, 269, 259, 272, 288, 2, 300]


def test_llama_twin_logits_match_transformers(
    twins: dict[str, TwinResult], llama_bin: Path, tmp_path: Path
) -> None:
    """f32 and f16 hold the checkpoint's numbers, so both are held to one bound. It is
    1e-2, not 1e-3: see test_llama_twin_logits_match_transformers_strictly."""
    twin = twins["llama"]
    reference = _hf_logits(_hf_model(twin.checkpoint), TOKENS)
    for quant, path in twin.ggufs.items():
        logits, _ = _harness_logits(llama_bin, path, TOKENS, tmp_path / quant)
        assert np.max(np.abs(logits - reference)) < 1e-2, quant


def test_pinned_llama_cpp_runs_the_bitnet_twin_with_silu(
    twins: dict[str, TwinResult], llama_bin: Path, tmp_path: Path
) -> None:
    """A measured fact, not the verdict (crossval's job): the pinned llama.cpp's bitnet
    graph (src/models/bitnet.cpp:132, LLM_FFN_SILU) computes the twin's GGUF as the
    checkpoint with hidden_act "silu", not the "relu2" the checkpoint says: so the GGUF
    holds the checkpoint's weights and the engine's FFN is the difference."""
    twin = twins["bitnet"]
    logits, _ = _harness_logits(llama_bin, twin.ggufs["f32"], TOKENS, tmp_path)
    relu2 = _hf_logits(_hf_model(twin.checkpoint), TOKENS)
    silu = _hf_logits(_hf_model(twin.checkpoint, hidden_act="silu"), TOKENS)
    assert np.max(np.abs(logits - silu)) < 1e-2
    assert np.max(np.abs(logits - relu2)) > 0.5


def test_tokenization_parity(twins: dict[str, TwinResult], llama_bin: Path, tmp_path: Path) -> None:
    """transformers' tokenizer of the checkpoint and llama.cpp's of the converted GGUF."""
    for family, twin in twins.items():
        tokenizer = _hf_tokenizer(twin.checkpoint)
        for index, prompt in enumerate(PROMPTS):
            out = tmp_path / f"{family}-{index}"
            _harness(llama_bin, "--model", str(twin.ggufs["f32"]), "--prompt", prompt,
                     "--tokenize-only", "--out", str(out))  # fmt: skip
            tokens = json.loads((out / "tokens.json").read_text())["tokens"]
            assert tokens == tokenizer(prompt).input_ids, (family, prompt)


def test_a_failing_conversion_quotes_the_converters_last_lines(
    llama_source: Path, tmp_path: Path
) -> None:
    source = convert.find_converter(llama_source)
    assert source.verified is None or source.verified.startswith("sha256:")
    (tmp_path / "empty").mkdir()
    log = tmp_path / "convert.log"
    arguments = convert.converter_argv("empty", "out.gguf", "f32", "x")
    with pytest.raises(XtaskError, match=r"converter failed \(exit 1; log: .*\n  \| ") as caught:
        convert.run_converter(source, arguments, cwd=tmp_path, log=log)
    assert "config.json" in str(caught.value) and log.is_file()
    assert not (tmp_path / "out.gguf").exists()


# --- bad input: exit 2, nothing written ---------------------------------------------------


def test_missing_source_is_exit_2_and_writes_nothing(
    xtask: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "fixtures"
    run = xtask.run("gen-fixtures", "--twin", "--output", str(out))  # HOME has no cache
    assert run.code == 2, run.stderr
    assert "xtask fetch-cpp" in run.stderr and not out.exists()
    run = xtask.run("gen-fixtures", "--twin", "--llama-source", str(tmp_path), "--output", str(out))
    assert run.code == 2 and convert.SCRIPT in run.stderr and not out.exists()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(UsageError, match="fetch-cpp"):
        generate_twin("llama", "tiny", (), 0, out)
    assert not out.exists()


def test_a_form_the_family_lacks_is_exit_2(xtask: Any, tmp_path: Path, llama_source: Path) -> None:
    out = tmp_path / "fixtures"
    run = xtask.run("gen-fixtures", "--twin", "--quant", "tq2_0", "--llama-source",
                    str(llama_source), "--output", str(out))  # fmt: skip
    assert run.code == 2 and "no tq2_0 form" in run.stderr and not out.exists()


@pytest.mark.parametrize("what", ["manifest-dir", "hf-symlink", "gguf-fifo"])
def test_unreplaceable_targets_are_exit_2_and_nothing_is_written(
    xtask: Any, tmp_path: Path, llama_source: Path, what: str
) -> None:
    out = tmp_path / "fixtures"
    layout = twin_layout(TwinSpec.parse("bitnet", "tiny", 0), out)
    layout.directory.mkdir(parents=True)
    if what == "manifest-dir":
        layout.manifest.mkdir()
    elif what == "hf-symlink":
        (tmp_path / "elsewhere").mkdir()
        layout.checkpoint.symlink_to(tmp_path / "elsewhere")
    else:
        os.mkfifo(layout.gguf("f16"))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    run = xtask.run("gen-fixtures", "--twin", "--arch", "llama", "--arch", "bitnet",
                    "--llama-source", str(llama_source), "--output", str(out))  # fmt: skip
    assert run.code == 2 and "refusing to" in run.stderr, run.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert not list((tmp_path / "elsewhere").iterdir()) if what == "hf-symlink" else True


# --- helpers ------------------------------------------------------------------------------


def _marker(source: Path) -> str | None:
    """What fetch-cpp's `src.verified` beside the sdist says, if it is there."""
    marker = source.with_name("src.verified")
    return marker.read_text().strip() if marker.is_file() else None


def _hf_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def _hf_model(directory: Path, **kwargs: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)


def _hf_logits(model: Any, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    return np.asarray(logits.numpy(), dtype=np.float32)


def _harness(llama_bin: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(llama_bin / "xtask-logits"), "--threads", "2", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


def _harness_logits(
    llama_bin: Path, model: Path, tokens: list[int], out: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "in.json").write_text(json.dumps({"tokens": tokens}))
    summary = _harness(llama_bin, "--model", str(model), "--tokens-file", str(out / "in.json"),
                       "--out", str(out), "--n-predict", "2")  # fmt: skip
    logits = np.fromfile(out / "logits.f32", dtype="<f4")
    return logits.reshape(len(tokens), -1), summary
