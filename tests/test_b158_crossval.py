"""crossval on BitNet b1.58 2B-4T's architecture, for real: transformers running each
`bitnet-b1.58` twin's checkpoint (its declared BitNet quantization: WeightQuant and
int8 ActQuant at run time) against the NumPy reference on the twin's f32, f16 and i2_s
GGUFs, and full-crossval on a downloaded `bitnet-b1.58` GGUF with its checkpoint, which
no pinned engine loads: fetch-cpp is skipped, saying why, and hf meets numpy alone.

The measured differences (numpy against hf, `--prompt` below, printed by the first test),
which is why a model whose definition quantizes activations is judged by the quantized
profile whatever its weights' type (`request.quantizes_activations`):

- f32 and i2_s hold exactly the ternary weights and scales transformers computes: tiny
  max KL 1.7e-12 (max |d| 4.4e-6), small 1.5e-13, both forms alike.
- medium f32 and i2_s: KL 2.3e-3 from position 4 on. There the first layer's input has
  an element at exactly half the row's maximum, so x * 127 / max is 63.5 in exact
  arithmetic: the reference rounds that tie to even (64), torch's float32 (and its
  float64) product comes out just under it (63). Through the KV cache every later
  position moves. Real bf16 checkpoints (8-bit mantissas) make such ties likely too.
- f16 rounds each tensor's scale to float16 (up to 2^-11 relative), which the int8
  rounding amplifies: KL 1.5e-3 (tiny), 7.6e-4 (small), 2.8e-3 (medium).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Xtask
from test_crossval_cli import checked

from bitnet_xtask.fixtures import TwinResult, generate_twin

pytest.importorskip("torch", reason="the hf: backend needs torch (pip install '.[hf]')")
pytest.importorskip("transformers", reason="the hf: backend needs transformers")
pytest.importorskip("accelerate", reason="transformers' BitNet quantizer needs accelerate")

FAMILY = "bitnet-b1.58"
PROMPT = "Hello world, the BitNet model of 42 tokens"
SIZES = ("tiny", "small", "medium")


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TwinResult]:
    out = tmp_path_factory.mktemp("twins")
    return {size: generate_twin(FAMILY, size, (), 0, out) for size in SIZES}


def comparisons(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for run in model["runs"] for c in run["comparisons"]]


@pytest.mark.parametrize("size", SIZES)
def test_numpy_meets_the_definition_on_every_form(
    twins: dict[str, TwinResult], xtask: Xtask, tmp_path: Path, size: str
) -> None:
    twin = twins[size]
    receipt = tmp_path / "receipt.json"
    models = [a for path in twin.ggufs.values() for a in ("--model", str(path))]
    run = xtask.run("crossval", *models, "--backend", "numpy", "--backend",
                    f"hf:{twin.checkpoint}", "--prompt", PROMPT, "--n-predict", "4",
                    "--receipt", str(receipt), timeout=900)  # fmt: skip
    assert run.code == 0, run.stderr
    document = checked(json.loads(receipt.read_text()))
    assert document["backends"][0]["spec"] == f"hf:{twin.checkpoint}"
    quantization = document["backends"][0]["identity"]["checkpoint"]["quantization"]
    assert quantization["quant_method"] == "bitnet"
    for model, (quant, path) in zip(document["models"], twin.ggufs.items(), strict=True):
        assert model["path"] == str(path) and model["arch"] == FAMILY
        assert model["config_audit"]["findings"] == [], model["config_audit"]
        numpy = document["backends"][1]["identity"]["models"][str(path)]
        assert numpy["activation_quant"]["value"] == "int8_per_token"
        for comparison in comparisons(model):
            verdict = comparison["verdict"]
            assert verdict["passed"] and verdict["profile"] == "quantized", verdict
            metrics = comparison["metrics"]["summary"]
            print(f"{size} {quant}: max KL {metrics['max_kl']:.2e}, "
                  f"max |d| {metrics['max_abs_diff']:.2e}")  # fmt: skip
            exact = quant != "f16" and size != "medium"  # medium: one tie, see the module
            kl, abs_diff = (1e-9, 1e-4) if exact else (1e-2, 1.0)  # measured x ~5 or more
            assert metrics["max_kl"] < kl and metrics["max_abs_diff"] < abs_diff, metrics


def serve_twin(hf: Any, twin: TwinResult) -> None:
    """The i2_s GGUF as a GGUF repository's default file, and the checkpoint beside it."""
    hf.add_file("org/b158-gguf", "ggml-model-i2_s.gguf", twin.ggufs["i2_s"].read_bytes())
    for path in twin.checkpoint.iterdir():
        hf.add_file("org/b158-bf16", path.name, path.read_bytes())


def test_full_crossval_of_a_b158_gguf_skips_the_engines_that_cannot_load_it(
    twins: dict[str, TwinResult], xtask: Xtask, tmp_path: Path, hf: Any
) -> None:
    """The real model's command, on the tiny twin: `--id` a bitnet-b1.58 GGUF and
    `--hf-id` its checkpoint. The pinned bitnet.cpp does not know the architecture, so
    nothing is built; hf and numpy compare, and pass."""
    serve_twin(hf, twins["tiny"])
    env = xtask.env(HF_ENDPOINT=hf.hub_url)
    receipt = tmp_path / "r.json"
    run = xtask.run("full-crossval", "--id", "org/b158-gguf", "--hf-id", "org/b158-bf16",
                    "--out", str(tmp_path / "models"), "--receipt", str(receipt), "--json",
                    env=env, timeout=900)  # fmt: skip
    assert run.code == 0, run.stderr
    assert (
        "fetch-cpp skipped: the pinned bitnet.cpp (406a5036f) does not know the "
        "architecture 'bitnet-b1.58'" in run.stderr
    )
    steps = [e["step"] for e in run.events() if e["phase"] == "step"]
    assert steps == ["checkpoint", "model", "fetch-cpp", "crossval"]
    document = checked(json.loads(receipt.read_text()))
    assert [b["spec"].split(":")[0] for b in document["backends"]] == ["hf", "numpy"]
    assert document["verdict"]["passed"]
    assert not (tmp_path / "home" / ".cache" / "bitnet_cpp").exists()  # nothing built


def test_full_crossval_of_a_b158_gguf_alone_has_nothing_to_compare(
    twins: dict[str, TwinResult], xtask: Xtask, tmp_path: Path, hf: Any
) -> None:
    serve_twin(hf, twins["tiny"])
    run = xtask.run("full-crossval", "--id", "org/b158-gguf", "--out", str(tmp_path / "m"),
                    env=xtask.env(HF_ENDPOINT=hf.hub_url), timeout=600)  # fmt: skip
    assert run.code == 2, run.stderr
    assert "nothing to compare the NumPy reference with" in run.stderr
    assert "add the model's checkpoint (--hf-id or --hf)" in run.stderr
