"""crossval, verify-receipt and full-crossval for real: the built llama.cpp harness (and
bitnet.cpp's, where its sources are here) against the NumPy reference on generated
fixtures, and engines that are wrong on purpose through the cmd: protocol."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from conftest import Xtask

from bitnet_xtask.cpp.build import BuildResult
from bitnet_xtask.crossval.receipt import schema_errors, verdict_errors
from bitnet_xtask.crossval.request import CrossvalRequest
from bitnet_xtask.crossval.runner import run_crossval
from bitnet_xtask.fixtures import generate_fixture

ENGINE = Path(__file__).parent / "engines" / "numpy_engine.py"
LLAMA_CPP_QUANTS = ("f32", "f16", "q8_0", "q4_0", "tq1_0", "tq2_0")


def engine_backend(*extra: str) -> str:
    argv = [sys.executable, str(ENGINE), "{model}", "{tokens}", "{logits}", "{continuation}",
            "{n_predict}", *extra]  # fmt: skip
    return "cmd:" + shlex.join(argv)


def checked(receipt: dict[str, Any]) -> dict[str, Any]:
    """Every receipt the tests make must satisfy its schema and its own re-check."""
    document: dict[str, Any] = json.loads(json.dumps(receipt))
    assert schema_errors(document) == []
    assert verdict_errors(document) == []
    return document


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fixtures")
    for size in ("tiny", "small"):
        for arch in ("llama", "bitnet"):
            for quant in LLAMA_CPP_QUANTS:
                generate_fixture(size, arch, quant, 7, out)
    generate_fixture("tiny", "bitnet", "i2_s", 7, out)
    return out


#: The reference as each engine's graph of the model: the definition for llama (the
#: engines compute it), llama.cpp's SiLU graph for bitnet (where the definition is relu2).
ENGINE_GRAPH = {"llama": "numpy", "bitnet": "numpy:llama.cpp-graph"}


@pytest.mark.parametrize("size", ["tiny", "small"])
@pytest.mark.parametrize("arch", ["llama", "bitnet"])
@pytest.mark.parametrize("quant", LLAMA_CPP_QUANTS)
def test_llama_cpp_matches_the_reference(
    llama_bin: Path, fixtures: Path, size: str, arch: str, quant: str
) -> None:
    """The harness against the reference run as llama.cpp's graph: proves the harness,
    the dequantization and every graph step other than the choices the graph makes."""
    model = fixtures / f"{arch}-{size}-{quant}-seed7.gguf"
    backends = (f"cpp:{llama_bin.parent}", ENGINE_GRAPH[arch])
    receipt = checked(run_crossval(CrossvalRequest((model,), backends, threads=2)).to_receipt())
    (comparison,) = receipt["models"][0]["runs"][0]["comparisons"]
    profile = "strict" if quant in ("f32", "f16") else "quantized"
    assert comparison["verdict"]["profile"] == profile
    assert receipt["verdict"]["passed"], comparison["verdict"]["failures"]


@pytest.mark.parametrize("quant", ["f32", "tq2_0"])
def test_llama_cpp_on_bitnet_fails_against_the_definition(
    llama_bin: Path, fixtures: Path, quant: str
) -> None:
    """The same files against the model's definition (relu2): llama.cpp's SiLU fails."""
    model = fixtures / f"bitnet-tiny-{quant}-seed7.gguf"
    backends = ("numpy", f"cpp:{llama_bin.parent}")
    ids = (1, 300, 301, 302, 5, 17, 42, 99)
    request = CrossvalRequest((model,), backends, token_ids=ids, threads=2)
    receipt = checked(run_crossval(request).to_receipt())
    assert not receipt["verdict"]["passed"]
    assert "kl" in {f["metric"] for f in receipt["verdict"]["failures"]}
    numpy = receipt["backends"][0]["identity"]
    choice = numpy["models"][str(model)]["ffn_activation"]
    assert choice["value"] == "relu2" and "definition" in choice["from"]


def test_bitnet_cpp_runs_i2_s_like_the_reference(bitnet_bin: Path, fixtures: Path) -> None:
    model = fixtures / "bitnet-tiny-i2_s-seed7.gguf"
    backends = (f"cpp:{bitnet_bin.parent}", "numpy:bitnet.cpp-graph")
    receipt = checked(run_crossval(CrossvalRequest((model,), backends, threads=2)).to_receipt())
    assert receipt["verdict"]["passed"], receipt["verdict"]["failures"]


@pytest.mark.parametrize("quant", ["f32", "tq2_0"])
def test_bitnet_cpp_against_llama_cpp_on_one_bitnet_fixture(
    bitnet_bin: Path, llama_bin: Path, fixtures: Path, quant: str
) -> None:
    model = fixtures / f"bitnet-tiny-{quant}-seed7.gguf"
    backends = (f"cpp:{llama_bin.parent}", f"cpp:{bitnet_bin.parent}")
    receipt = checked(run_crossval(CrossvalRequest((model,), backends, threads=2)).to_receipt())
    run = receipt["models"][0]["runs"][0]
    assert [t["match"] for t in run["tokenization"]] == [True, True]  # both tokenize alike
    assert receipt["verdict"]["passed"], receipt["verdict"]["failures"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_two_builds_with_different_flags_agree(
    llama_build: BuildResult, llama_native_build: BuildResult, fixtures: Path, quant: str
) -> None:
    """Portable (GGML_NATIVE=OFF) against native (-march=native) builds of one source."""
    assert llama_native_build.directory.name.endswith("-cpu-native")
    assert "-DGGML_NATIVE=ON" in llama_native_build.receipt["inputs"]["cmake_flags"]
    model = fixtures / f"llama-small-{quant}-seed7.gguf"
    backends = (f"cpp:{llama_build.directory}", f"cpp:{llama_native_build.directory}")
    receipt = checked(run_crossval(CrossvalRequest((model,), backends, threads=2)).to_receipt())
    assert receipt["verdict"]["passed"], receipt["verdict"]["failures"]
    flags = [b["identity"]["receipt"]["inputs"]["cmake_flags"] for b in receipt["backends"]]
    assert flags[0] != flags[1]


def corrupt_one_tensor(model: Path, out: Path, name: str = "blk.1.ffn_down.weight") -> Path:
    """A copy of `model` with one weight tensor's bytes scrambled (same size, so the file
    still loads)."""
    data = bytearray(model.read_bytes())
    tensor = next(t for t in gguf.GGUFReader(model).tensors if t.name == name)
    start, size = tensor.data_offset, tensor.n_bytes
    rng = np.random.default_rng(0)
    scrambled = rng.permutation(np.frombuffer(bytes(data[start : start + size]), np.uint8))
    data[start : start + size] = scrambled.tobytes()
    out.write_bytes(bytes(data))
    return out


def test_a_corrupted_model_fails_on_the_right_metrics(
    llama_bin: Path, fixtures: Path, xtask: Xtask, tmp_path: Path
) -> None:
    good = fixtures / "llama-tiny-f32-seed7.gguf"
    bad = corrupt_one_tensor(good, tmp_path / "corrupt.gguf")
    receipt_path = tmp_path / "receipt.json"
    run = xtask.run(
        "crossval", "--model", str(good), "--backend", f"cpp:{llama_bin.parent}",
        "--backend", engine_backend("--model-override", str(bad)),
        "--receipt", str(receipt_path), timeout=300,
    )  # fmt: skip
    assert run.code == 1, run.stderr
    assert "parity check failed" in run.stderr and "FAIL" in run.stderr
    receipt = checked(json.loads(receipt_path.read_text()))
    failed = {f["metric"] for f in receipt["verdict"]["failures"]}
    assert {"max_abs_diff", "cosine", "kl"} <= failed
    assert xtask.run("crossval", "verify-receipt", str(receipt_path)).code == 1


def test_a_perturbed_logit_is_found_at_its_position(
    llama_bin: Path, fixtures: Path, xtask: Xtask, tmp_path: Path
) -> None:
    model = fixtures / "llama-tiny-f32-seed7.gguf"
    receipt_path = tmp_path / "receipt.json"
    run = xtask.run(
        "crossval", "--model", str(model), "--backend", f"cpp:{llama_bin.parent}",
        "--backend", engine_backend("--perturb", "3:17:0.5"),
        "--receipt", str(receipt_path), "--json", timeout=300,
    )  # fmt: skip
    assert run.code == 1, run.stderr
    done = run.events()[-1]
    assert done["phase"] == "error" and done["code"] == 1
    receipt = checked(json.loads(receipt_path.read_text()))
    failures = receipt["verdict"]["failures"]
    worst = next(f for f in failures if f["metric"] == "max_abs_diff")
    assert worst["position"] == 3 and worst["value"] == pytest.approx(0.5, abs=0.02)
    assert worst["excess"] == pytest.approx(0.25, abs=0.02)  # strict allows 0.25
    assert "at position 3" in run.stderr or "at position 3" in worst["message"]


def test_crossval_cli_discovers_models_and_writes_a_verifiable_receipt(
    llama_bin: Path, xtask: Xtask, tmp_path: Path
) -> None:
    generate_fixture("tiny", "llama", "q8_0", 1, xtask.workdir / "models" / "fixtures")
    run = xtask.run(
        "crossval", "--backend", f"cpp:{llama_bin.parent}", "--backend", "numpy",
        "--prompt", "Hello world", "--n-predict", "4", "--json", timeout=300,
        cwd=xtask.workdir,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    phases = run.phases()
    assert "comparison" in phases and phases[-1] == "done"
    done = run.events()[-1]
    assert done["passed"] is True
    receipt_path = xtask.workdir / done["receipt"]
    assert receipt_path.parent == xtask.workdir / "crossval" / "receipts"
    receipt = checked(json.loads(receipt_path.read_text()))
    assert receipt["models"][0]["quant"] == "q8_0"
    assert receipt["backends"][0]["identity"]["receipt"]["inputs"]["ref"] == "llama.cpp"
    assert receipt["settings"]["prompts"] == ["Hello world"]
    assert len(receipt["models"][0]["runs"][0]["evaluations"][0]["continuation"]) == 4
    verified = xtask.run("crossval", "verify-receipt", str(receipt_path))
    assert verified.code == 0 and "valid receipt" in verified.stderr


def test_verify_receipt_rejects_what_is_not_a_receipt(xtask: Xtask, tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text('{"kind": "something else"}')
    run = xtask.run("crossval", "verify-receipt", str(junk))
    assert run.code == 2 and "not a valid crossval receipt" in run.stderr
    assert xtask.run("crossval", "verify-receipt", str(tmp_path / "missing.json")).code == 2
    (tmp_path / "broken.json").write_text("{")
    assert xtask.run("crossval", "verify-receipt", str(tmp_path / "broken.json")).code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "numpy"], "at least two backends"),
        (["--backend", "numpy", "--backend", "gpu:x"], "unknown backend"),
        (["--backend", "cpp:bitnet.cpp-cuda", "--backend", "numpy"],
         "xtask fetch-cpp --ref bitnet.cpp --backend cuda"),
        (["--backend", "numpy", "--backend", "cmd:x {nope}"], "bad cmd: template"),
        (["--backend", "numpy", "--backend", "numpy"], "does not tokenize"),
        (["--tolerance-profile", "loose", "--backend", "numpy", "--backend", "numpy"],
         "unknown tolerance profile"),
    ],
)  # fmt: skip
def test_bad_crossval_arguments_exit_2(
    xtask: Xtask, tmp_path: Path, args: list[str], message: str
) -> None:
    model = generate_fixture("tiny", "llama", "f32", 0, tmp_path).model
    run = xtask.run("crossval", "--model", str(model), *args)
    assert run.code == 2 and message in run.stderr, run.stderr


def test_no_models_is_a_usage_error(xtask: Xtask) -> None:
    run = xtask.run("crossval", cwd=xtask.workdir)
    assert run.code == 2 and "no .gguf models under models/" in run.stderr
    assert "xtask gen-fixtures" in run.stderr


def test_full_crossval_runs_the_pipeline_and_skips_what_is_done(
    llama_build: BuildResult, cpp_cache_home: Path, xtask: Xtask
) -> None:
    env = xtask.env(XDG_CACHE_HOME=str(cpp_cache_home))
    first = xtask.run(
        "full-crossval", "--receipt", "r1.json", env=env, timeout=600, cwd=xtask.workdir
    )
    assert first.code == 0, first.stderr
    assert "[1/3] model" in first.stderr and "generated" in first.stderr
    assert "(nothing to do)" in first.stderr and "pass (strict)" in first.stderr
    second = xtask.run(
        "full-crossval", "--receipt", "r2.json", "--json", env=env, timeout=600, cwd=xtask.workdir
    )
    assert second.code == 0, second.stderr
    assert "is up to date" in second.stderr
    assert [e["step"] for e in second.events() if e["phase"] == "step"] == [
        "model", "fetch-cpp", "crossval",
    ]  # fmt: skip
    assert checked(json.loads((xtask.workdir / "r2.json").read_text()))["verdict"]["passed"]


def test_full_crossval_names_the_failing_step_and_the_next_action(
    xtask: Xtask, tmp_path: Path
) -> None:
    env = xtask.env(XDG_CACHE_HOME=str(tmp_path / "cache"), CC="no-such-cc")
    run = xtask.run("full-crossval", env=env, cwd=xtask.workdir)
    assert run.code == 2, run.stderr
    assert "full-crossval step 2/3 (fetch-cpp) failed" in run.stderr
    assert "xtask fetch-cpp --ref llama.cpp" in run.stderr


def test_token_ids_need_no_tokenizer_and_an_external_engine_can_pass(
    xtask: Xtask, tmp_path: Path
) -> None:
    """numpy against an engine behind cmd:, on given ids: no C++ build involved."""
    model = generate_fixture("tiny", "bitnet", "q4_0", 2, tmp_path).model
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"tokens": [1, 300, 301, 5, 17, 42]}))
    receipt_path = tmp_path / "r.json"
    run = xtask.run(
        "crossval", "--model", str(model), "--backend", "numpy", "--backend", engine_backend(),
        "--tokens-file", str(ids), "--receipt", str(receipt_path), timeout=300,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    receipt = checked(json.loads(receipt_path.read_text()))
    assert receipt["settings"]["token_ids"] == [1, 300, 301, 5, 17, 42]
    (only,) = receipt["models"][0]["runs"]
    assert only["prompt"] is None and only["tokenization"] == []
    assert only["comparisons"][0]["metrics"]["summary"]["max_abs_diff"] == 0.0
    both = xtask.run("crossval", "--model", str(model), "--tokens-file", str(ids),
                     "--prompt", "x", "--backend", "numpy", "--backend", "numpy")  # fmt: skip
    assert both.code == 2 and "not both" in both.stderr


@pytest.fixture
def engine_receipt(xtask: Xtask, tmp_path: Path) -> Path:
    """A real passing receipt made without any C++ build (numpy vs a cmd: engine)."""
    model = generate_fixture("tiny", "llama", "f32", 3, tmp_path).model
    ids = tmp_path / "ids.txt"
    ids.write_text("1 20 30 40")
    path = tmp_path / "r.json"
    run = xtask.run("crossval", "--model", str(model), "--backend", "numpy",
                    "--backend", engine_backend(), "--tokens-file", str(ids),
                    "--receipt", str(path), timeout=300)  # fmt: skip
    assert run.code == 0, run.stderr
    return path


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d["models"][0]["runs"][0]["comparisons"][0]["metrics"]["summary"]
         .update(max_kl=99.0), "summary max_kl"),
        (lambda d: d["models"][0]["tolerances"].update(max_kl=1e9), "not the built-in ones"),
        (lambda d: d["models"][0]["runs"][0]["comparisons"][0]["metrics"].update(n_positions=999),
         "n_positions 999"),
        (lambda d: d["models"][0]["runs"][0]["comparisons"][0]["metrics"]["positions"][2]
         .update(kl=0.5), "say passed=False"),
    ],
)  # fmt: skip
def test_verify_receipt_catches_edited_numbers(
    xtask: Xtask, engine_receipt: Path, change: Any, complaint: str
) -> None:
    assert xtask.run("crossval", "verify-receipt", str(engine_receipt)).code == 0
    document = json.loads(engine_receipt.read_text())
    change(document)
    engine_receipt.write_text(json.dumps(document))
    run = xtask.run("crossval", "verify-receipt", str(engine_receipt))
    assert run.code == 1 and complaint in run.stderr, run.stderr


@pytest.mark.parametrize("content", ['"12"', "[1.5, 2]", "[true, 1]", '{"tokens": []}', "1 x 3"])
def test_token_files_must_hold_integer_ids(xtask: Xtask, tmp_path: Path, content: str) -> None:
    model = generate_fixture("tiny", "llama", "f32", 0, tmp_path).model
    (tmp_path / "ids").write_text(content)
    run = xtask.run("crossval", "--model", str(model), "--tokens-file", str(tmp_path / "ids"),
                    "--backend", "numpy", "--backend", "numpy")  # fmt: skip
    assert run.code == 2 and "expected non-negative integer token ids" in run.stderr


def test_unreadable_inputs_and_outputs_are_usage_errors(xtask: Xtask, tmp_path: Path) -> None:
    model = generate_fixture("tiny", "llama", "f32", 0, tmp_path).model
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    run = xtask.run("crossval", "--model", str(model), "--prompts", str(tmp_path / "bad.txt"))
    assert run.code == 2 and "UTF-8 text" in run.stderr
    (tmp_path / "file").write_text("")
    run = xtask.run("crossval", "--model", str(model), "--receipt",
                    str(tmp_path / "file" / "r.json"))  # fmt: skip
    assert run.code == 2 and "for the receipt" in run.stderr
    nan = tmp_path / "nan.json"
    nan.write_text('{"max_kl": NaN}')
    run = xtask.run("crossval", "--model", str(model), "--tolerance-profile", str(nan),
                    "--backend", "numpy", "--backend", "numpy")  # fmt: skip
    assert run.code == 2 and "finite number" in run.stderr


def test_a_checkout_named_llama_cpp_does_not_shadow_the_build(xtask: Xtask, tmp_path: Path) -> None:
    model = generate_fixture("tiny", "llama", "f32", 0, tmp_path).model
    (xtask.workdir / "llama.cpp").mkdir()
    run = xtask.run("crossval", "--model", str(model), "--backend", "cpp:llama.cpp",
                    "--backend", "numpy", cwd=xtask.workdir)  # fmt: skip
    assert run.code == 2 and "build it first: xtask fetch-cpp --ref llama.cpp" in run.stderr


def test_invalid_fixture_combinations_write_nothing(xtask: Xtask, tmp_path: Path) -> None:
    out = tmp_path / "fx"
    run = xtask.run("gen-fixtures", "--arch", "bitnet", "--arch", "llama", "--quant", "f32",
                    "--quant", "i2_s", "--output", str(out))  # fmt: skip
    assert run.code == 2 and "i2_s" in run.stderr
    assert not out.exists() or not list(out.iterdir())
    full = xtask.run("full-crossval", "--quant", "i2_s", cwd=xtask.workdir)
    assert full.code == 2 and "step 1/3 (model)" in full.stderr


def test_an_i2_s_model_without_metadata_is_read_from_its_header(tmp_path: Path) -> None:
    from bitnet_xtask.crossval.model_facts import inspect_model

    fixture = generate_fixture("tiny", "bitnet", "i2_s", 0, tmp_path)
    fixture.metadata.unlink()
    facts = inspect_model(fixture.model)
    assert (facts.arch, facts.quant, facts.metadata) == ("bitnet", "i2_s", None)
    assert facts.sha256 == fixture.sha256


def test_a_model_one_engine_cannot_run_fails_alone(
    llama_bin: Path, xtask: Xtask, tmp_path: Path
) -> None:
    """Upstream llama.cpp has no i2_s: that model is recorded as an error, the other one
    is still compared, the receipt is written and is valid, and the run exits 1."""
    models = xtask.workdir / "models"
    generate_fixture("tiny", "llama", "f32", 4, models)
    generate_fixture("tiny", "bitnet", "i2_s", 4, models)
    receipt_path = tmp_path / "r.json"
    run = xtask.run("crossval", "--backend", f"cpp:{llama_bin.parent}", "--backend", "numpy",
                    "--receipt", str(receipt_path), cwd=xtask.workdir, timeout=300)  # fmt: skip
    assert run.code == 1, run.stderr
    assert "ERROR" in run.stderr and "pass (strict)" in run.stderr
    receipt = checked(json.loads(receipt_path.read_text()))
    by_name = {Path(m["path"]).name: m for m in receipt["models"]}
    assert by_name["bitnet-tiny-i2_s-seed4.gguf"]["error"]
    assert by_name["bitnet-tiny-i2_s-seed4.gguf"]["runs"] == []
    assert by_name["llama-tiny-f32-seed4.gguf"]["error"] is None
    assert [f["metric"] for f in receipt["verdict"]["failures"]] == ["backend_error"]
    verified = xtask.run("crossval", "verify-receipt", str(receipt_path))
    assert verified.code == 1 and "records a parity failure" in verified.stderr
