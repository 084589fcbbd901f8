"""The triangle on twin fixtures, for real: transformers running the checkpoint (`hf:`,
the model's definition and so the reference), the NumPy reference and the pinned
llama.cpp running the GGUF its own converter made of that checkpoint.

What is asserted is what the numbers say against hf: on the Llama twin every backend
passes; on the BitNet twin (relu2) the pinned llama.cpp (a SiLU graph) fails and the
config audit names its graph's activation and source line, while the NumPy reference,
which follows the definition, passes; an engine wrong the same way beside it is a
shared deviation. Needs torch and transformers (the `hf` extra) and a llama.cpp build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Xtask
from test_crossval_cli import checked, engine_backend

from bitnet_xtask.cpp.build import BuildResult
from bitnet_xtask.fixtures import TwinResult, generate_twin

pytest.importorskip("torch", reason="the hf: backend needs torch (pip install '.[hf]')")
pytest.importorskip("transformers", reason="the hf: backend needs transformers")

PROMPT = "Hello world, the BitNet model of 42 tokens"


@pytest.fixture(scope="module")
def twins(llama_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TwinResult]:
    out = tmp_path_factory.mktemp("twins")
    source = llama_bin.parent / "src"  # the build's verified sdist tree holds the converter
    return {
        family: generate_twin(family, "tiny", (), 5, out, llama_source=source)
        for family in ("llama", "bitnet")
    }


def crossval(
    xtask: Xtask, tmp_path: Path, model: Path, *backends: str, code: int
) -> dict[str, Any]:
    receipt = tmp_path / "receipt.json"
    args = [a for b in backends for a in ("--backend", b)]
    run = xtask.run("crossval", "--model", str(model), *args, "--prompt", PROMPT,
                    "--n-predict", "4", "--threads", "1", "--receipt", str(receipt),
                    timeout=600)  # fmt: skip
    assert run.code == code, run.stderr
    document = checked(json.loads(receipt.read_text()))
    document["stderr"] = run.stderr
    return document


def comparisons(receipt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (run,) = receipt["models"][0]["runs"]
    return {c["candidate"]: c for c in run["comparisons"]}


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_on_the_llama_twin_every_backend_passes_strict(
    twins: dict[str, TwinResult], llama_bin: Path, xtask: Xtask, tmp_path: Path, quant: str
) -> None:
    twin, cpp = twins["llama"], f"cpp:{llama_bin.parent}"
    receipt = crossval(xtask, tmp_path, twin.ggufs[quant], "numpy", cpp,
                       f"hf:{twin.checkpoint}", code=0)  # fmt: skip
    first = receipt["backends"][0]
    assert first["spec"] == f"hf:{twin.checkpoint}"  # the definition leads, given last
    assert first["identity"]["kind"] == "hf"
    assert first["identity"]["checkpoint"]["sha256"]["model.safetensors"] == (
        twin.files["hf/model.safetensors"].sha256
    )
    for comparison in comparisons(receipt).values():
        assert comparison["verdict"]["profile"] == "strict"
        assert comparison["verdict"]["passed"], comparison["verdict"]["failures"]
    (run,) = receipt["models"][0]["runs"]
    parity = {t["backend"]: t["match"] for t in run["tokenization"]}
    assert parity == {first["spec"]: True, "numpy": None, cpp: True}  # GGUF's = checkpoint's
    assert receipt["models"][0]["config_audit"]["findings"] == []


@pytest.mark.parametrize("quant", ["f32", "tq2_0"])
def test_on_the_bitnet_twin_llama_cpp_fails_and_the_reference_passes(
    twins: dict[str, TwinResult], llama_bin: Path, xtask: Xtask, tmp_path: Path, quant: str
) -> None:
    """Measured: the pinned llama.cpp's bitnet graph computes SiLU where the checkpoint
    says relu2 (src/models/bitnet.cpp:127-132); the NumPy reference computes relu2."""
    twin, cpp = twins["bitnet"], f"cpp:{llama_bin.parent}"
    receipt = crossval(xtask, tmp_path, twin.ggufs[quant], f"hf:{twin.checkpoint}", "numpy",
                       cpp, code=1)  # fmt: skip
    compared = comparisons(receipt)
    assert compared["numpy"]["verdict"]["passed"], compared["numpy"]["verdict"]["failures"]
    failed = {f["metric"] for f in compared[cpp]["verdict"]["failures"]}
    assert "kl" in failed
    assert compared[cpp]["metrics"]["summary"]["max_kl"] > 100 * (
        compared["numpy"]["metrics"]["summary"]["max_kl"] + 1e-6
    )
    audit = receipt["models"][0]["config_audit"]
    (activation,) = [f for f in audit["findings"] if f["field"] == "ffn_activation"]
    assert activation["config"]["value"] == "relu2" and activation["other"]["value"] == "silu"
    assert "src/models/bitnet.cpp" in activation["other"]["source"]
    assert f"config audit: {activation['message']}" in receipt["stderr"]
    assert receipt["verdict"]["findings"] == []  # one engine wrong alone: nothing shared


def test_two_engines_that_compute_silu_are_a_deviation_they_share(
    twins: dict[str, TwinResult], llama_bin: Path, xtask: Xtask, tmp_path: Path
) -> None:
    """The pinned llama.cpp and a cmd: engine computing llama.cpp's graph agree with each
    other and both differ from hf: the bug a pairwise engine comparison calls parity."""
    twin, cpp = twins["bitnet"], f"cpp:{llama_bin.parent}"
    silu = engine_backend("--graph", "llama.cpp")
    receipt = crossval(xtask, tmp_path, twin.ggufs["f32"], f"hf:{twin.checkpoint}", cpp, silu,
                       code=1)  # fmt: skip
    (finding,) = receipt["verdict"]["findings"]
    assert finding["candidates"] == [cpp, silu]
    assert finding["reference"] == f"hf:{twin.checkpoint}"
    assert finding["message"].endswith("a deviation they share from the model's definition")
    assert f"{cpp} and {silu} agree with each other (max KL " in finding["message"]
    assert f"finding: {finding['message']}" in receipt["stderr"]


def test_the_two_pinned_engines_share_silu_on_the_bitnet_twin(
    twins: dict[str, TwinResult], llama_bin: Path, bitnet_bin: Path, xtask: Xtask, tmp_path: Path
) -> None:
    """Real engines: upstream llama.cpp and microsoft/BitNet's fork (build_bitnet, SiLU at
    406a5036 src/llama.cpp:15187-15192) agree with each other on the BitNet twin and both
    differ from its definition: the shared deviation, found by the triangle."""
    twin = twins["bitnet"]
    llama, bitnet = f"cpp:{llama_bin.parent}", f"cpp:{bitnet_bin.parent}"
    receipt = crossval(xtask, tmp_path, twin.ggufs["f32"], f"hf:{twin.checkpoint}", llama,
                       bitnet, "numpy", code=1)  # fmt: skip
    compared = comparisons(receipt)
    assert compared["numpy"]["verdict"]["passed"]
    (finding,) = receipt["verdict"]["findings"]
    assert finding["candidates"] == [llama, bitnet]
    audit = receipt["models"][0]["config_audit"]
    sources = [f["other"]["source"] for f in audit["findings"] if f["field"] == "ffn_activation"]
    assert any("llama.cpp 0c1e57098" in source for source in sources)
    # bitnet.cpp is named with its graph's line when built from the pin; the suite
    # builds it with --source (a "local" build, whose revision no fact is known for)
    named = any("bitnet.cpp" in source for source in sources)
    assert named or any(u.startswith("bitnet.cpp@local") for u in audit["unchecked"])


def test_a_gguf_that_is_not_the_checkpoints_model_is_refused_before_anything_runs(
    twins: dict[str, TwinResult], xtask: Xtask, tmp_path: Path
) -> None:
    receipt = tmp_path / "receipt.json"
    for model in (twins["bitnet"].ggufs["f32"], _other_llama(tmp_path)):
        run = xtask.run("crossval", "--model", str(model), "--backend",
                        f"hf:{twins['llama'].checkpoint}", "--backend", "numpy",
                        "--receipt", str(receipt))  # fmt: skip
        assert run.code == 2, run.stderr
        assert "the checkpoint and the GGUF are not the same model" in run.stderr
        assert "evaluating" not in run.stderr and not receipt.exists()


def _other_llama(tmp_path: Path) -> Path:
    from bitnet_xtask.fixtures import generate_fixture

    return generate_fixture("small", "llama", "f32", 5, tmp_path).model


@pytest.fixture
def cache_with_llama(request: pytest.FixtureRequest, llama_bin: Path) -> Path:
    """An XDG_CACHE_HOME whose fetch-cpp cache holds the pinned llama.cpp build (and so
    its verified source, the converter): the session build's, or `XTASK_TEST_LLAMA_BIN`'s."""
    if os.environ.get("XTASK_TEST_LLAMA_BIN"):
        return llama_bin.parent.parent.parent  # <xdg>/bitnet_cpp/<build>/bin
    build: BuildResult = request.getfixturevalue("llama_build")
    return build.directory.parent.parent


def test_full_crossval_hf_converts_the_checkpoint_and_runs_the_triangle(
    twins: dict[str, TwinResult], cache_with_llama: Path, xtask: Xtask, tmp_path: Path
) -> None:
    env = xtask.env(XDG_CACHE_HOME=str(cache_with_llama))
    args = ["full-crossval", "--hf", str(twins["llama"].checkpoint), "--quant", "f16",
            "--out", str(tmp_path / "models"), "--threads", "1"]  # fmt: skip
    first = xtask.run(*args, "--receipt", str(tmp_path / "r1.json"), env=env, timeout=900)
    assert first.code == 0, first.stderr
    for number, step in enumerate(("checkpoint", "fetch-cpp", "convert", "crossval"), 1):
        assert f"[{number}/4] {step}" in first.stderr
    converted = tmp_path / "models" / "llama-tiny-seed5-f16.gguf"
    receipt = checked(json.loads((tmp_path / "r1.json").read_text()))
    assert receipt["backends"][0]["spec"] == f"hf:{twins['llama'].checkpoint}"
    assert receipt["models"][0]["path"] == str(converted)  # <checkpoint dir>-<quant>.gguf
    record = json.loads(converted.with_name(converted.name + ".json").read_text())
    assert record["quant"] == "f16" and record["gguf_sha256"] == receipt["models"][0]["sha256"]
    second = xtask.run(*args, "--receipt", str(tmp_path / "r2.json"), "--json", env=env,
                       timeout=900)  # fmt: skip
    assert second.code == 0, second.stderr
    assert f"{converted} is up to date" in second.stderr
    steps = [(e["step"], e["index"], e["of"]) for e in second.events() if e["phase"] == "step"]
    assert steps == [("checkpoint", 1, 4), ("fetch-cpp", 2, 4), ("convert", 3, 4),
                     ("crossval", 4, 4)]  # fmt: skip


def test_full_crossval_hf_id_fetches_the_checkpoint_with_download_model(
    twins: dict[str, TwinResult], cache_with_llama: Path, xtask: Xtask, tmp_path: Path,
    hf: Any,
) -> None:  # fmt: skip
    twin = twins["bitnet"]
    for path in twin.checkpoint.iterdir():
        hf.add_file("twins/bitnet-tiny", path.name, path.read_bytes())
    env = xtask.env(XDG_CACHE_HOME=str(cache_with_llama), HF_ENDPOINT=hf.hub_url)
    run = xtask.run("full-crossval", "--hf-id", "twins/bitnet-tiny", "--out",
                    str(tmp_path / "models"), "--threads", "1", "--receipt",
                    str(tmp_path / "r.json"), env=env, timeout=900)  # fmt: skip
    assert run.code == 1, run.stderr  # llama.cpp's SiLU graph against the relu2 checkpoint
    fetched = tmp_path / "models" / "twins-bitnet-tiny"
    for path in twin.checkpoint.iterdir():
        assert (fetched / path.name).read_bytes() == path.read_bytes()
    receipt = checked(json.loads((tmp_path / "r.json").read_text()))
    compared = comparisons(receipt)
    assert compared["numpy"]["verdict"]["passed"]
    assert not compared[next(c for c in compared if c.startswith("cpp:"))]["verdict"]["passed"]
    assert "ffn_activation: 'relu2' in config.json" in run.stderr


def test_full_crossval_refuses_a_quant_the_converter_cannot_write_before_any_step(
    twins: dict[str, TwinResult], xtask: Xtask, tmp_path: Path
) -> None:
    run = xtask.run("full-crossval", "--hf", str(twins["bitnet"].checkpoint), "--quant",
                    "i2_s", "--out", str(tmp_path / "models"))  # fmt: skip
    assert run.code == 2, run.stderr
    assert "--quant i2_s: the converter cannot write it" in run.stderr
    assert "[1/4]" not in run.stderr and not (tmp_path / "models").exists()
    both = xtask.run("full-crossval", "--hf", str(tmp_path), "--hf-id", "org/name")
    assert both.code == 2 and "give --hf or --hf-id, not both" in both.stderr
