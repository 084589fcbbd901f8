"""The `hf:<checkpoint dir>` backend, with the real transformers and torch on the CPU.

Checkpoints are made here by transformers itself (`save_pretrained` of a seeded tiny
`LlamaForCausalLM` / `BitNetForCausalLM`); the logits and continuation are checked
against the same model run directly, the identity against the files' own sha256, and
the refusals (a bad directory, a missing extra) through the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import Xtask

from bitnet_xtask.crossval.backends import make_backend
from bitnet_xtask.crossval.engine_process import BackendError
from bitnet_xtask.crossval.hf_backend import HFBackend
from bitnet_xtask.errors import UsageError
from bitnet_xtask.hf.checkpoint import INDEX, read_checkpoint

TOKENS = [1, 17, 42, 5, 88, 3, 64]
SHAPE = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
WORDS = ["<unk>", "<s>", "</s>", "hello", "world", *(f"w{i}" for i in range(10))]


@dataclass(frozen=True)
class Made:
    """A checkpoint saved by transformers, and the model object it was saved from."""

    directory: Path
    model: Any


def save_tokenizer(directory: Path) -> None:
    """A tiny WordLevel tokenizer that adds BOS, saved as transformers saves one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    transformers = pytest.importorskip("transformers")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, "<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(directory)


def make_checkpoint(directory: Path, family: str, **save: Any) -> Made:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "bitnet": (transformers.BitNetConfig, transformers.BitNetForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_class(config_class(**SHAPE)).eval()
    model.save_pretrained(directory, **save)
    return Made(directory, model)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Made]:
    root = tmp_path_factory.mktemp("checkpoints")
    made = {family: make_checkpoint(root / family, family) for family in ("llama", "bitnet")}
    save_tokenizer(made["llama"].directory)
    return made


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Any GGUF, made by the CLI: crossval needs a --model before it looks at backends."""
    out = tmp_path_factory.mktemp("gguf")
    xtask = Xtask(home=out / "home", out=out / "models")
    xtask.home.mkdir()
    run = xtask.run("gen-fixtures", "--size", "tiny", "--output", str(out / "models"))
    assert run.code == 0, run.stderr
    return next((out / "models").rglob("*.gguf"))


def backend(made: Made, **kwargs: Any) -> HFBackend:
    opened = make_backend(f"hf:{made.directory}", **kwargs)
    assert isinstance(opened, HFBackend)
    return opened


def direct_logits(model: Any, tokens: list[int]) -> npt.NDArray[np.float32]:
    """The model run on the whole of `tokens` at once, no cache: float32 logits."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([tokens]), use_cache=False).logits[0].float().numpy()
    return np.asarray(logits, dtype=np.float32)


@pytest.mark.parametrize("family", ["llama", "bitnet"])
def test_logits_are_the_models_own_and_the_continuation_is_its_greedy_argmax(
    checkpoints: dict[str, Made], family: str, tmp_path: Path
) -> None:
    made = checkpoints[family]
    hf = backend(made)
    evaluation = hf.evaluate(tmp_path / "unread.gguf", TOKENS, 6, tmp_path / "eval")
    logits = evaluation.logits[0 : len(TOKENS)]
    assert logits.dtype == np.float32 and logits.shape == (len(TOKENS), SHAPE["vocab_size"])
    assert np.array_equal(logits, direct_logits(made.model, TOKENS))  # bit for bit
    # Without any cache: the whole sequence again at every step, first maximum.
    tokens = list(TOKENS)
    for _ in range(6):
        tokens.append(int(np.argmax(direct_logits(made.model, tokens)[-1])))
    assert evaluation.continuation == tokens[len(TOKENS) :]
    assert hf.evaluate(tmp_path / "x", TOKENS, 0, tmp_path / "none").continuation == []
    hf.close()


def test_the_model_is_loaded_once_and_kept_until_close(
    checkpoints: dict[str, Made], tmp_path: Path
) -> None:
    hf = backend(checkpoints["bitnet"], threads=1)
    started = time.monotonic()
    first = hf.evaluate(tmp_path / "x", TOKENS, 4, tmp_path / "a")
    loaded, network = time.monotonic() - started, hf._model
    second = hf.evaluate(tmp_path / "x", TOKENS, 4, tmp_path / "b")
    assert hf._model is network and first.continuation == second.continuation
    print(f"\nhf tiny bitnet: load + evaluate {loaded:.3f}s, evaluate {second.seconds:.4f}s")
    hf.close()
    assert hf._model is None


def test_the_checkpoint_dtype_on_request(tmp_path: Path) -> None:
    import torch
    import transformers

    made = make_checkpoint(tmp_path / "bf16", "llama")
    made.model.to(torch.bfloat16).save_pretrained(made.directory)
    hf = backend(made, hf_dtype="checkpoint")
    assert hf.identity()["compute_dtype"] == "bfloat16"  # declared, before loading
    logits = hf.evaluate(tmp_path / "x", TOKENS, 2, tmp_path / "e").logits[0 : len(TOKENS)]
    assert hf.identity()["compute_dtype"] == "bfloat16"  # what it loaded as
    assert logits.dtype == np.float32
    # Loaded as transformers loads it (`.to(bfloat16)` of the saved object would also
    # round the float32 RoPE buffer that loading computes afresh).
    loaded = transformers.AutoModelForCausalLM.from_pretrained(made.directory, dtype="auto")
    assert np.array_equal(logits, direct_logits(loaded, TOKENS))
    assert backend(made).identity()["compute_dtype"] == "float32"  # the default
    with pytest.raises(UsageError, match="unknown dtype 'float16'"):
        backend(made, hf_dtype="float16")


def test_ids_outside_the_vocabulary_are_refused(
    checkpoints: dict[str, Made], tmp_path: Path
) -> None:
    hf = backend(checkpoints["llama"])
    with pytest.raises(BackendError, match=r"token id 96 is outside the vocabulary \(0\.\.95\)"):
        hf.evaluate(tmp_path / "x", [1, 96], 1, tmp_path / "e")
    with pytest.raises(BackendError, match="outside the vocabulary"):
        hf.evaluate(tmp_path / "x", [-1], 1, tmp_path / "e")


def test_tokenize_uses_the_checkpoints_tokenizer_with_bos(
    checkpoints: dict[str, Made], tmp_path: Path
) -> None:
    hf = backend(checkpoints["llama"])
    assert hf.tokenize(tmp_path / "x", "hello world w3", tmp_path) == [1, 3, 4, 8]
    with pytest.raises(BackendError, match="cannot load the tokenizer"):
        backend(checkpoints["bitnet"]).tokenize(tmp_path / "x", "hello", tmp_path)


def test_identity_names_versions_and_the_files_sha256(checkpoints: dict[str, Made]) -> None:
    import torch
    import transformers

    made = checkpoints["llama"]
    identity = backend(made).identity()
    assert identity["kind"] == "hf" and identity["directory"] == str(made.directory)
    assert (identity["torch"], identity["transformers"]) == (
        torch.__version__, transformers.__version__)  # fmt: skip
    assert identity["dtype"] == "float32" and identity["compute_dtype"] == "float32"
    files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    expected = {n: hashlib.sha256((made.directory / n).read_bytes()).hexdigest() for n in files}
    checkpoint = identity["checkpoint"]
    assert checkpoint["sha256"] == expected
    assert checkpoint["family"] == "llama" and checkpoint["architectures"] == ["LlamaForCausalLM"]
    assert checkpoint["quantization"] is None and checkpoint["dtype"] == "float32"
    json.dumps(identity)  # it goes into the receipt as it is


def test_declared_quantization_lands_in_the_identity(
    checkpoints: dict[str, Made], tmp_path: Path
) -> None:
    directory = shutil.copytree(checkpoints["bitnet"].directory, tmp_path / "quantized")
    config = json.loads((directory / "config.json").read_text())
    declared = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                "quantization_mode": "offline"}  # fmt: skip
    config["quantization_config"] = declared
    (directory / "config.json").write_text(json.dumps(config))
    assert read_checkpoint(directory).identity()["quantization"] == declared


def test_sharded_weights_are_every_shard_the_index_lists(tmp_path: Path) -> None:
    made = make_checkpoint(tmp_path / "sharded", "llama", max_shard_size="40KB")
    checkpoint = read_checkpoint(made.directory)
    assert checkpoint.index is not None and len(checkpoint.weights) > 1
    index = json.loads(checkpoint.index.read_text())
    assert sorted(p.name for p in checkpoint.weights) == sorted(set(index["weight_map"].values()))
    shards = {p.name for p in checkpoint.weights}
    assert set(checkpoint.identity()["sha256"]) == {"config.json", INDEX, *shards}
    logits = backend(made).evaluate(tmp_path / "x", TOKENS, 0, tmp_path / "e").logits
    assert np.array_equal(logits[0 : len(TOKENS)], direct_logits(made.model, TOKENS))
    checkpoint.weights[-1].unlink()
    with pytest.raises(UsageError, match="lists shards that are not in"):
        read_checkpoint(made.directory)


def _bad(tmp_path: Path, checkpoints: dict[str, Made], case: str) -> Path:
    """A directory that is not a checkpoint bitnet-xtask runs, one way each."""
    if case == "missing":
        return tmp_path / "nowhere"
    if case == "a file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file"
    directory = shutil.copytree(checkpoints["llama"].directory, tmp_path / "ckpt")
    config = directory / "config.json"
    if case == "no config":
        config.unlink()
    elif case == "config not an object":
        config.write_text("[1, 2]")
    elif case == "unsupported family":
        config.write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    elif case == "no weights":
        (directory / "model.safetensors").unlink()
    return directory


BAD = {
    "missing": "does not exist",
    "a file": "is not a directory",
    "no config": "a checkpoint dir needs config.json",
    "config not an object": "is not a JSON object",
    "unsupported family": "unsupported model family (model_type 'gpt2', architectures "
    "['GPT2LMHeadModel'])",
    "no weights": "has no weights: neither model.safetensors",
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_checkpoint_exits_2_before_anything_runs(
    xtask: Xtask, tmp_path: Path, checkpoints: dict[str, Made], gguf: Path, case: str
) -> None:
    directory = _bad(tmp_path, checkpoints, case)
    run = xtask.run("crossval", "--model", str(gguf), "--backend", f"hf:{directory}",
                    "--backend", "numpy", "--receipt", str(tmp_path / "r.json"))  # fmt: skip
    assert run.code == 2, run.stderr
    assert BAD[case] in run.stderr and "hint:" in run.stderr, run.stderr
    if case == "unsupported family":
        assert "llama (LlamaForCausalLM), bitnet (BitNetForCausalLM)" in run.stderr
    assert not (tmp_path / "r.json").exists()


def test_without_the_extra_hf_exits_2_with_the_install_command(
    xtask: Xtask, tmp_path: Path, gguf: Path
) -> None:
    """A python that cannot import torch (a sitecustomize blocks it), a valid checkpoint
    dir (config.json and a weights file: nothing reads them before the extra is asked)."""
    blocker = tmp_path / "no-torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (directory / "model.safetensors").write_bytes(b"")
    env = xtask.env(PYTHONPATH=str(blocker))
    probe = xtask.run("--help", env=env)
    assert probe.code == 0, probe.stderr
    run = xtask.run("crossval", "--model", str(gguf), "--backend", f"hf:{directory}",
                    "--backend", "numpy", env=env)  # fmt: skip
    assert run.code == 2, run.stderr
    assert "the hf: backend needs torch, transformers (torch missing)" in run.stderr
    assert "pip install 'bitnet-xtask[hf]'" in run.stderr
