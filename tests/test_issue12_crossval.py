"""Issue 12, crossval core: a model one backend cannot run fails alone (whatever it
raises), results stay typed until the receipt, tokenizing costs no evaluation, a GGUF's
quantization is read from its own type information, and `plan_crossval` (`--dry-run`)
runs nothing.

Real parts throughout: the CLI in a subprocess, the real llama.cpp harness (the
`llama_bin` fixture), GGUF files written with gguf-py, engines behind cmd:. Where a
harness must behave like another one (tokenize without BOS, or predate
--tokenize-only), a two-line shell script stands in front of the real harness.
"""

from __future__ import annotations

import json
import shlex
import struct
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from conftest import Xtask
from mounts import Mounts

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.backends import CppBackend, NumpyBackend, make_backend
from bitnet_xtask.crossval.engine_process import BackendError
from bitnet_xtask.crossval.model_facts import inspect_model
from bitnet_xtask.crossval.plan import plan_crossval
from bitnet_xtask.crossval.receipt import schema_errors, verdict_errors
from bitnet_xtask.crossval.request import CrossvalRequest, plan_models
from bitnet_xtask.crossval.results import CrossvalResult
from bitnet_xtask.crossval.runner import Guarded, ModelError, run_crossval
from bitnet_xtask.errors import UsageError, XtaskError
from bitnet_xtask.fixtures import generate_fixture

ENGINE = Path(__file__).parent / "engines" / "numpy_engine.py"
HEAD_RECEIPT = Path(__file__).parent / "fixtures" / "crossval" / "receipt-written-by-d242d95.json"
PROMPTS = ("The capital of France is", "Hello world", "One two three")


def engine() -> str:
    argv = [sys.executable, str(ENGINE), "{model}", "{tokens}", "{logits}", "{continuation}",
            "{n_predict}"]  # fmt: skip
    return "cmd:" + shlex.join(argv)


def valid(document: dict[str, Any]) -> dict[str, Any]:
    document = json.loads(json.dumps(document))
    assert schema_errors(document) == []
    assert verdict_errors(document) == []
    return document


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fixtures")
    generate_fixture("tiny", "llama", "f32", 5, out)
    generate_fixture("tiny", "bitnet", "i2_s", 5, out)
    return out


@pytest.fixture
def llama(fixtures: Path) -> Path:
    return fixtures / "llama-tiny-f32-seed5.gguf"


def _string_value(data: bytes, key: str) -> int:
    """Where the string value of metadata `key` starts (after its type and length)."""
    name = key.encode()
    return data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 8


def as_qwen2(model: Path, out: Path) -> Path:
    """`model` relabelled as a qwen2 GGUF (general.architecture and the `<arch>.` keys):
    a real architecture the NumPy reference does not implement."""
    data = model.read_bytes().replace(b"llama.", b"qwen2.")
    at = _string_value(data, "general.architecture")
    assert data[at : at + 5] == b"llama"
    out.write_bytes(data[:at] + b"qwen2" + data[at + 5 :])
    return out


# --- 1. a model one backend cannot run fails alone, whatever the backend raised --------


def test_a_model_the_reference_cannot_run_fails_alone_with_a_receipt(
    xtask: Xtask, llama: Path, tmp_path: Path
) -> None:
    """The reference raised a plain XtaskError for qwen2, which only BackendError was
    isolated from: the whole run ended with no receipt. Now the qwen2 model records the
    error, the llama model is compared, and the run exits 1 naming the failure."""
    qwen2 = as_qwen2(llama, tmp_path / "qwen2-tiny.gguf")
    ids, receipt = tmp_path / "ids.txt", tmp_path / "r.json"
    ids.write_text("1 20 30 40\n")
    run = xtask.run("crossval", "--model", str(qwen2), "--model", str(llama), "--tokens-file",
                    str(ids), "--backend", "numpy", "--backend", engine(), "--receipt",
                    str(receipt), cwd=xtask.workdir, timeout=300)  # fmt: skip
    assert run.code == 1, run.stderr
    assert "parity check failed (1 failure)" in run.stderr
    assert "qwen2-tiny.gguf: numpy:" in run.stderr and "'qwen2'" in run.stderr
    assert "Traceback" not in run.stderr
    document = valid(json.loads(receipt.read_text()))
    by_name = {Path(m["path"]).name: m for m in document["models"]}
    assert (
        "architecture 'qwen2' is not one the reference implements"
        in (by_name["qwen2-tiny.gguf"]["error"])
    )
    assert by_name["qwen2-tiny.gguf"]["arch"] == "qwen2"
    compared = by_name[llama.name]
    assert compared["error"] is None and compared["runs"][0]["comparisons"][0]["verdict"]["passed"]
    assert [f["metric"] for f in document["verdict"]["failures"]] == ["backend_error"]
    verified = xtask.run("crossval", "verify-receipt", str(receipt))
    assert verified.code == 1 and "records a parity failure" in verified.stderr


def test_the_guard_records_what_a_backend_raises_and_lets_bugs_through() -> None:
    guarded = Guarded(NumpyBackend())

    def raising(exc: BaseException) -> Any:
        def action() -> None:
            raise exc

        return lambda: guarded.call(action)

    for expected, exc in [
        ("numpy: no such thing (do this)", XtaskError("no such thing", hint="do this")),
        ("numpy: engine died", BackendError("engine died")),
        ("numpy: refused", UsageError("refused")),
        ("numpy: Permission denied", PermissionError(13, "Permission denied")),
        ("numpy already named", XtaskError("numpy already named")),
    ]:
        with pytest.raises(ModelError) as caught:
            raising(exc)()
        assert str(caught.value) == expected
    for bug in (ValueError("a bug"), KeyError("a bug"), KeyboardInterrupt()):
        with pytest.raises(type(bug)):
            raising(bug)()


# --- 2. typed results; receipts of the previous code still verify ----------------------


def test_results_stay_typed_until_the_receipt(llama: Path) -> None:
    request = CrossvalRequest((llama,), ("numpy", engine()), prompts=(), token_ids=(1, 20, 30))
    result = run_crossval(request)
    assert isinstance(result, CrossvalResult) and result.passed
    (model,) = result.models
    (run,) = model.runs
    (comparison,) = run.comparisons
    assert isinstance(comparison.verdict, metrics.Verdict)
    assert isinstance(comparison.logits, metrics.LogitsComparison)
    assert run.tokens == (1, 20, 30) and run.tokenization == ()
    assert model.facts.quant == "f32" and model.tolerances.name == "strict"
    document = valid(result.to_receipt())
    assert document["settings"]["token_ids"] == [1, 20, 30]
    assert document["models"][0]["runs"][0]["comparisons"][0]["candidate"] == engine()


def test_a_receipt_written_by_the_previous_code_still_verifies(xtask: Xtask) -> None:
    """Written by d242d95's crossval (llama.cpp, a build tokenizing without BOS, numpy; an
    i2_s model llama.cpp cannot run): a tokenization failure, a backend error, a pass."""
    document = json.loads(HEAD_RECEIPT.read_text())
    failures = [f["metric"] for f in document["verdict"]["failures"]]
    assert sorted(failures) == ["backend_error", "tokenization"]
    assert schema_errors(document) == [] and verdict_errors(document) == []
    run = xtask.run("crossval", "verify-receipt", str(HEAD_RECEIPT))
    assert run.code == 1 and "records a parity failure" in run.stderr, run.stderr
    del document["models"][1]["runs"][0]["comparisons"][0]["verdict"]["failures"][0]
    assert any("tokenization failure that is not recorded" in e for e in verdict_errors(document))


def harness_in_front(directory: Path, real: Path, script: str) -> Path:
    """A build directory whose bin/xtask-logits is `script` in front of the real one."""
    (directory / "bin").mkdir(parents=True)
    harness = directory / "bin" / "xtask-logits"
    harness.write_text(f"#!/bin/sh\nREAL={shlex.quote(str(real))}\n{script}")
    harness.chmod(0o755)
    return directory


def test_a_tokenization_that_differs_is_judged_by_the_verdict_and_verifies(
    llama_bin: Path, xtask: Xtask, llama: Path, tmp_path: Path
) -> None:
    no_bos = harness_in_front(tmp_path / "no-bos", llama_bin / "xtask-logits",
                              'exec "$REAL" "$@" --no-bos\n')  # fmt: skip
    receipt = tmp_path / "r.json"
    run = xtask.run("crossval", "--model", str(llama), "--backend", f"cpp:{llama_bin.parent}",
                    "--backend", f"cpp:{no_bos}", "--prompt", "Paris is", "--n-predict", "2",
                    "--receipt", str(receipt), timeout=300)  # fmt: skip
    assert run.code == 1, run.stderr
    assert "tokenization differs from the reference's at token 0" in run.stderr
    document = valid(json.loads(receipt.read_text()))
    (failure,) = document["verdict"]["failures"]
    assert (failure["metric"], failure["position"]) == ("tokenization", 0)
    assert xtask.run("crossval", "verify-receipt", str(receipt)).code == 1


# --- 3. tokenizing costs no evaluation; the reference loads a model once --------------


def test_the_harness_tokenizes_without_evaluating(
    llama_bin: Path, llama: Path, tmp_path: Path
) -> None:
    backend = make_backend(f"cpp:{llama_bin.parent}", threads=1)
    assert isinstance(backend, CppBackend)
    ids = backend.tokenize(llama, "The capital of France is", tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t" / "tokenize").iterdir()) == [
        "stderr.txt", "stdout.txt", "tokens.json",
    ]  # fmt: skip
    summary = json.loads((tmp_path / "t" / "tokenize" / "stdout.txt").read_text())
    assert summary["tokenize_only"] is True
    evaluated = backend.evaluate(llama, list(ids or ()), 0, tmp_path / "e")
    assert evaluated.logits.shape[0] == len(ids or ())
    full = backend._harness(llama, ["--prompt", "The capital of France is"], tmp_path / "f", 0)
    assert json.loads((full / "tokens.json").read_text())["tokens"] == ids


def test_a_harness_built_before_tokenize_only_still_tokenizes(
    llama_bin: Path, xtask: Xtask, llama: Path, tmp_path: Path
) -> None:
    """A cached build made by an earlier bitnet-xtask: its --help lacks the flag (and it
    would refuse it), so tokenizing falls back to a whole evaluation, as it was."""
    old = harness_in_front(tmp_path / "old", llama_bin / "xtask-logits", """\
for a in "$@"; do
  [ "$a" = --tokenize-only ] && { echo "unknown argument '--tokenize-only'" >&2; exit 2; }
  [ "$a" = --help ] && { "$REAL" --help | grep -v -- --tokenize-only; exit 0; }
done
exec "$REAL" "$@"
""")  # fmt: skip
    backend = make_backend(f"cpp:{old}", threads=1)
    ids = backend.tokenize(llama, "Hello world", tmp_path / "t")
    assert ids and (tmp_path / "t" / "tokenize" / "logits.f32").is_file()
    run = xtask.run("crossval", "--model", str(llama), "--backend", f"cpp:{old}",
                    "--backend", "numpy", "--prompt", "Hello world", "--n-predict", "2",
                    "--receipt", str(tmp_path / "r.json"), timeout=300)  # fmt: skip
    assert run.code == 0, run.stderr


def test_the_reference_loads_each_model_once(fixtures: Path, tmp_path: Path) -> None:
    """Moved away after the first prompt, the model is still evaluated: it was not
    opened again. After close() it is let go (and so opened again, and missing)."""
    model = tmp_path / "m.gguf"
    model.write_bytes((fixtures / "llama-tiny-f32-seed5.gguf").read_bytes())
    backend = NumpyBackend()
    first = backend.evaluate(model, [1, 20, 30], 1, tmp_path / "a")
    model.replace(tmp_path / "moved.gguf")
    second = backend.evaluate(model, [1, 20, 30], 1, tmp_path / "b")
    assert np.array_equal(first.logits[0:3], second.logits[0:3])
    backend.close()
    with pytest.raises(XtaskError, match=r"m\.gguf"):
        backend.evaluate(model, [1, 20, 30], 1, tmp_path / "c")


def test_crossval_of_three_prompts_evaluates_each_once_per_backend(
    llama_bin: Path, llama: Path
) -> None:
    request = CrossvalRequest((llama,), (f"cpp:{llama_bin.parent}", "numpy"), prompts=PROMPTS,
                              n_predict=2, threads=1)  # fmt: skip
    result = run_crossval(request)
    assert result.passed, result.failures()
    runs = result.models[0].runs
    assert [r.prompt for r in runs] == list(PROMPTS)
    assert all(r.tokenization[0].match and r.tokenization[1].match is None for r in runs)


# --- 4. the quantization of a GGUF gen-fixtures did not write --------------------------


def write_gguf(path: Path, file_type: int | None, matrix: gguf.GGMLQuantizationType) -> Path:
    """A small llama GGUF from gguf-py's writer, without gen-fixtures' metadata: three
    `matrix`-typed matrices (raw blocks, never dequantized here) and an f32 norm."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(64)
    if file_type is not None:
        writer.add_file_type(file_type)
    block, size = gguf.GGML_QUANT_SIZES[matrix]
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_up.weight"):
        raw = np.random.default_rng(0).integers(0, 256, (8, 256 // block * size), dtype=np.uint8)
        writer.add_tensor(name, raw, raw_dtype=matrix)  # the shape: 8 rows of 256
    writer.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("file_type", "matrix", "quant"),
    [
        (15, gguf.GGMLQuantizationType.Q4_K, "q4_k_m"),  # LlamaFileType.MOSTLY_Q4_K_M
        (None, gguf.GGMLQuantizationType.Q4_K, "q4_k"),  # no file type: the majority's
        (7, gguf.GGMLQuantizationType.Q8_0, "q8_0"),
        (None, gguf.GGMLQuantizationType.F16, "f16"),
    ],
)
def test_the_quantization_is_read_from_the_file(
    tmp_path: Path, file_type: int | None, matrix: gguf.GGMLQuantizationType, quant: str
) -> None:
    model = write_gguf(tmp_path / "m.gguf", file_type, matrix)
    assert not model.with_suffix(".json").exists()
    facts = inspect_model(model)
    assert (facts.arch, facts.quant, facts.metadata) == ("llama", quant, None)
    engines = ("cmd:engine {model}", "cmd:other {model}")  # numpy would refuse a partial model
    (planned,) = plan_models(CrossvalRequest((model,), engines))
    assert planned.tolerances.name == ("strict" if quant == "f16" else "quantized")


def test_fixtures_are_named_by_their_header_as_by_their_metadata(tmp_path: Path) -> None:
    for arch, quant in [("llama", "f32"), ("llama", "q4_0"), ("bitnet", "tq1_0"),
                        ("bitnet", "i2_s")]:  # fmt: skip
        fixture = generate_fixture("tiny", arch, quant, 0, tmp_path)
        facts = inspect_model(fixture.model)
        assert (facts.arch, facts.quant) == (arch, quant)
        assert facts.metadata is not None and facts.metadata["quant"] == quant


# --- 5. the plan (--dry-run) runs nothing ----------------------------------------------


def test_the_plan_names_builds_thresholds_and_inputs_and_runs_nothing(
    llama_bin: Path, llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BITNET_GPU_FAKE", "rocm,metal")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    marker = tmp_path / "ran"
    marking = "cmd:" + shlex.join([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    specs = (f"cpp:{llama_bin.parent}", "numpy", marking, "cpp:llama.cpp-cuda")
    plan = plan_crossval(CrossvalRequest((llama,), specs, prompts=PROMPTS))
    assert not marker.exists()
    assert [(b.spec, b.kind) for b in plan.backends][:3] == [
        (specs[0], "cpp"), ("numpy", "numpy"), (marking, "cmd"),
    ]  # fmt: skip
    assert plan.backends[0].build == llama_bin.parent and plan.backends[0].problem is None
    missing = plan.backends[3]
    assert missing.kind is None and "xtask fetch-cpp --ref llama.cpp --backend cuda" in (
        missing.problem or ""
    )
    assert plan.problems == [f"cpp:llama.cpp-cuda: {missing.problem}"]
    (model,) = plan.models
    assert (model.facts.quant, model.tolerances.name) == ("f32", "strict")
    assert plan.settings.prompts == PROMPTS
    assert plan.host["rocm"] and plan.host["metal"] and plan.host["fake"]
    assert not plan.host["cuda"]
    document = json.loads(json.dumps(plan.to_json()))
    assert document["backends"][0]["build"] == str(llama_bin.parent)
    text = "\n".join(plan.lines())
    assert "GPU runtimes: rocm, metal (BITNET_GPU_FAKE)" in text
    assert "MISSING" in text and "profile strict" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backends": ("numpy",)}, "at least two backends"),
        ({"profile": "loose"}, "unknown tolerance profile"),
        ({"n_predict": 500, "token_ids": (1, 2)}, "more than the 256-token context"),
    ],
)
def test_the_plan_refuses_what_the_run_refuses(
    llama: Path, change: dict[str, Any], message: str
) -> None:
    request = CrossvalRequest(**{"models": (llama,), "backends": ("numpy", "numpy"), **change})
    for attempt in (plan_crossval, run_crossval):
        with pytest.raises(UsageError, match=message):
            attempt(request)


def test_crossval_dry_run_prints_the_plan_and_runs_nothing(
    xtask: Xtask, llama: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    marking = "cmd:" + shlex.join([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    env = xtask.env(BITNET_GPU_FAKE="cuda", XDG_CACHE_HOME=str(tmp_path / "empty-cache"))
    ids = tmp_path / "ids.txt"
    ids.write_text("1 5 9")
    run = xtask.run("crossval", "--dry-run", "--model", str(llama), "--backend", "numpy",
                    "--backend", marking, "--tokens-file", str(ids), env=env,
                    cwd=xtask.workdir)  # fmt: skip
    assert run.code == 0, run.stderr
    assert "GPU runtimes: cuda (BITNET_GPU_FAKE)" in run.stderr
    assert f"model {llama} (llama, f32): profile strict" in run.stderr
    assert "backend numpy [reference]: ready" in run.stderr
    assert not marker.exists() and not (xtask.workdir / "crossval").exists()
    missing = xtask.run("crossval", "--dry-run", "--model", str(llama), env=env,
                        cwd=xtask.workdir)  # fmt: skip
    assert missing.code == 2, missing.stderr
    assert "backend cpp:llama.cpp [reference]: MISSING" in missing.stderr
    assert "build it first: xtask fetch-cpp --ref llama.cpp" in missing.stderr


def test_the_dry_run_refuses_prompts_the_first_backend_cannot_tokenize(
    xtask: Xtask, llama: Path, tmp_path: Path
) -> None:
    """The run refuses prompts when its first backend does not tokenize (numpy); the plan
    said "ready" for it before, and now says what the run says, in JSON too."""
    env = xtask.env(XDG_CACHE_HOME=str(tmp_path / "empty-cache"))
    argv = ["crossval", "--model", str(llama), "--backend", "numpy", "--backend", "numpy",
            "--prompt", "Hi"]  # fmt: skip
    planned = xtask.run(*argv, "--dry-run", "--json", env=env, cwd=xtask.workdir)
    ran = xtask.run(*argv, env=env, cwd=xtask.workdir)
    assert planned.code == ran.code == 2, (planned.stderr, ran.stderr)
    (plan,) = [e for e in planned.events() if e["phase"] == "plan"]
    assert plan["command"] == "crossval" and plan["ready"] is False
    assert plan["problems"] == [
        "numpy: the first backend (numpy) does not tokenize (put a tokenizing backend "
        "(cpp:... or hf:...) first, or give the ids with --tokens-file)"
    ]
    assert "the first backend (numpy) does not tokenize" in ran.stderr


def test_a_full_scratch_disk_is_exit_10_not_a_models_failure(
    xtask: Xtask, llama: Path, tmp_path: Path, mounts: Mounts
) -> None:
    """Every backend call goes through `Guarded`, which records what a backend raises as
    that model's error; a full disk is about the machine, not the model, so it stays the
    documented exit 10 for the whole run (it would otherwise read "numpy: No space left
    on device" per model and exit 1)."""
    scratch = mounts.tmpfs(tmp_path / "tmp", "1m", fill=_fill_to_the_last_page)
    ids = tmp_path / "ids.txt"
    ids.write_text("1 5 9")
    run = xtask.run("crossval", "--model", str(llama), "--backend", "numpy", "--backend",
                    "numpy", "--tokens-file", str(ids), "--receipt", str(tmp_path / "r.json"),
                    env=xtask.env(TMPDIR=str(scratch)), cwd=xtask.workdir)  # fmt: skip
    assert run.code == 10, run.stderr
    assert "disk full while numpy ran" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "r.json").exists()


def _fill_to_the_last_page(directory: Path) -> None:
    """Zeros until only one 4 KiB page is free: Python's `tempfile` probes each candidate
    folder with a small write and silently moves on to /tmp when even that fails, so the
    one page keeps TMPDIR chosen, and the first real write fills it."""
    spare = directory / "spare"
    spare.write_bytes(bytes(4096))
    with (directory / "filler").open("wb", buffering=0) as handle:
        for block in (1 << 16, 1 << 12):
            try:
                while True:
                    handle.write(bytes(block))
            except OSError:
                continue
    spare.unlink()
