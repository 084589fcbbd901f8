"""crossval --paths for real: an engine whose attention is wrong only for calls of more
than 3 tokens (tests/engines/batch_bug_engine.py) is caught and named by its batch
sizes, the same engine without its bug passes, and the built llama.cpp and bitnet.cpp
harnesses agree with themselves along every path; refusals exit 2 before any engine
runs; verify-receipt re-judges every path."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Xtask

from bitnet_xtask.crossval.backends import CommandBackend, CppBackend, NumpyBackend, make_backend
from bitnet_xtask.crossval.eval_options import EvalOptions, ExecutionPath
from bitnet_xtask.crossval.paths import ALL_LAYERS, path_matrix
from bitnet_xtask.crossval.receipt import schema_errors, verdict_errors
from bitnet_xtask.fixtures import generate_fixture

BATCH_BUG = Path(__file__).parent / "engines" / "batch_bug_engine.py"
IDS = [1, *((i * 37) % 300 + 2 for i in range(39))]  # 40 ids: n_batch=32 is a path of its own


def batch_bug_backend(*extra: str) -> str:
    argv = [sys.executable, str(BATCH_BUG), "{model}", "{tokens}", "{logits}", "{continuation}",
            "{n_predict}", "{n_batch}", "{n_ubatch}", *extra]  # fmt: skip
    return "cmd:" + shlex.join(argv)


def checked(path: Path) -> dict[str, Any]:
    """A receipt the run wrote, which must satisfy its schema and its own re-check."""
    document: dict[str, Any] = json.loads(path.read_text())
    assert schema_errors(document) == []
    assert verdict_errors(document) == []
    return document


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny llama f32 fixture and a file of 40 ids."""
    out = tmp_path_factory.mktemp("paths")
    ids = out / "ids.json"
    ids.write_text(json.dumps({"tokens": IDS}))
    return generate_fixture("tiny", "llama", "f32", 7, out).model, ids


def crossval_paths(
    xtask: Xtask, inputs: tuple[Path, Path], receipt: Path, *backends: str
) -> tuple[int, str]:
    model, ids = inputs
    args = [arg for spec in backends for arg in ("--backend", spec)]
    run = xtask.run("crossval", "--model", str(model), *args, "--tokens-file", str(ids),
                    "--paths", "--receipt", str(receipt), timeout=600)  # fmt: skip
    return run.code, run.stderr


def path_sections(receipt: dict[str, Any]) -> list[dict[str, Any]]:
    sections: list[dict[str, Any]] = receipt["models"][0]["runs"][0]["paths"]
    return sections


def verdicts(section: dict[str, Any]) -> dict[str, tuple[bool, bool | None]]:
    """Per path label: whether it agrees with the baseline, and with the reference."""
    return {
        check["path"]["label"]: (
            check["against_baseline"]["verdict"]["passed"],
            None if check["against_reference"] is None
            else check["against_reference"]["verdict"]["passed"],
        )
        for check in section["paths"]
    }  # fmt: skip


def test_paths_catch_an_engine_wrong_only_above_3_tokens_at_once(
    xtask: Xtask, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The whole prompt in one call (the baseline) is wrong: the reference catches that.
    --paths shows it is the batch size: every path whose calls hold at most 3 tokens
    agrees with the reference, and disagrees with the baseline; the ones with wider
    calls (32) are wrong too, and differently."""
    bug = batch_bug_backend()
    code, stderr = crossval_paths(xtask, inputs, tmp_path / "r.json", "numpy", bug)
    assert code == 1, stderr
    receipt = checked(tmp_path / "r.json")
    (section,) = path_sections(receipt)  # numpy has one path
    assert section["backend"] == bug and section["baseline"]["label"] == "n_batch=40 n_ubatch=40"
    assert verdicts(section) == {  # n_batch=512 is the 40-token baseline: not run twice
        "n_batch=1 n_ubatch=1": (False, True),
        "n_batch=3 n_ubatch=3": (False, True),
        "n_batch=32 n_ubatch=32": (False, False),
        "n_batch=40 n_ubatch=1": (False, True),
        "n_batch=40 n_ubatch=3": (False, True),
        "n_batch=40 n_ubatch=32": (False, False),
    }
    assert not section["passed"] and not receipt["verdict"]["passed"]
    assert f"{bug} disagrees with itself at n_batch=32 n_ubatch=32: max |dlogit|" in stderr
    assert ("disagrees with itself at n_batch=1 n_ubatch=1: max |dlogit|" in stderr
            and "this path agrees with the reference, its one-batch run differs from the "
            "reference" in stderr)  # fmt: skip
    assert (
        "agrees with the reference at n_batch=1 n_ubatch=1, n_batch=3 n_ubatch=3, "
        "n_batch=40 n_ubatch=1, n_batch=40 n_ubatch=3; differs from it at n_batch=40 "
        "n_ubatch=40 (one batch), n_batch=32 n_ubatch=32, n_batch=40 n_ubatch=32"
    ) in section["summary"]
    assert section["summary"] in stderr
    assert f"paths: {section['summary']}" in stderr  # under the summary table too
    messages = "\n".join(f["message"] for f in receipt["verdict"]["failures"])
    assert f"{bug} at n_batch=32 n_ubatch=32 against the reference: kl" in messages
    assert f"{bug} at n_batch=3 n_ubatch=3 against its one-batch run: kl" in messages
    verified = xtask.run("crossval", "verify-receipt", str(tmp_path / "r.json"))
    assert verified.code == 1 and "verdict FAILED" in verified.stderr


def test_the_reference_engine_is_compared_with_itself_only(
    xtask: Xtask, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """With the buggy engine as the reference, its paths are judged against its own
    baseline alone (it is the reference); the correct engine's paths agree with their
    baseline and, with it, differ from that reference."""
    bug, right = batch_bug_backend(), batch_bug_backend("--no-bug")
    code, stderr = crossval_paths(xtask, inputs, tmp_path / "r.json", bug, right)
    assert code == 1, stderr
    first, second = path_sections(checked(tmp_path / "r.json"))
    assert first["backend"] == bug and second["backend"] == right
    assert verdicts(first)["n_batch=3 n_ubatch=3"] == (False, None)
    assert verdicts(first)["n_batch=40 n_ubatch=32"] == (False, None)
    assert set(verdicts(second).values()) == {(True, False)}
    assert f"{right} at n_batch=1 n_ubatch=1 agrees with its one-batch run but differs " in stderr
    assert "differs from it at n_batch=40 n_ubatch=40 (one batch), n_batch=1" in second["summary"]


@pytest.fixture(scope="module")
def correct_receipt(tmp_path_factory: pytest.TempPathFactory, inputs: tuple[Path, Path]) -> Path:
    """A real passing --paths receipt: the engine without its bug against numpy."""
    home = tmp_path_factory.mktemp("home")
    path = home.parent / "correct-receipt.json"
    code, stderr = crossval_paths(Xtask(home, home / "models"), inputs, path, "numpy",
                                  batch_bug_backend("--no-bug"))  # fmt: skip
    assert code == 0, stderr
    return path


def test_a_correct_engine_passes_paths(correct_receipt: Path, xtask: Xtask) -> None:
    receipt = checked(correct_receipt)
    assert receipt["settings"]["paths"] is True
    (section,) = path_sections(receipt)
    assert section["passed"] and len(section["paths"]) == 6
    assert set(verdicts(section).values()) == {(True, True)}
    for check in section["paths"]:  # float64 throughout: chunking changes nothing visible
        assert check["against_baseline"]["metrics"]["summary"]["max_abs_diff"] <= 1e-6
    assert xtask.run("crossval", "verify-receipt", str(correct_receipt)).code == 0


def _section(d: dict[str, Any]) -> dict[str, Any]:
    return path_sections(d)[0]


def _check(d: dict[str, Any], index: int = 1) -> dict[str, Any]:
    check: dict[str, Any] = _section(d)["paths"][index]
    return check


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: _check(d)["against_baseline"]["metrics"]["positions"][5].update(kl=0.5),
         "say passed=False"),
        (lambda d: _check(d).update(passed=False), "but its comparisons say passed=True"),
        (lambda d: _section(d).update(passed=False), "but they say passed=True"),
        (lambda d: _check(d)["path"].update(n_batch=7), "a path's label is not its settings"),
        (lambda d: _check(d).update(against_reference=None), "when it is not the reference"),
        (lambda d: _check(d, 2).update(path=_check(d, 1)["path"]), "recorded twice"),
        (lambda d: _check(d)["against_baseline"].update(candidate="numpy"),
         "a comparison names other backends"),
        (lambda d: d["models"][0]["runs"][0].update(paths=[]), "paths are recorded for []"),
        (lambda d: d["settings"].update(paths=False), "the settings and backends give []"),
    ],
)  # fmt: skip
def test_verify_receipt_rejudges_every_path(
    xtask: Xtask, correct_receipt: Path, tmp_path: Path, change: Any, complaint: str
) -> None:
    document = json.loads(correct_receipt.read_text())
    change(document)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(document))
    run = xtask.run("crossval", "verify-receipt", str(edited))
    assert run.code == 1 and complaint in run.stderr, run.stderr


def test_refusals_come_before_any_engine_runs(
    xtask: Xtask, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    model, ids = inputs
    marker = tmp_path / "the-engine-ran"
    blind = f"cmd:touch {marker} {{logits}}"  # takes no path setting
    common = ["crossval", "--model", str(model), "--tokens-file", str(ids), "--paths"]
    for extra in ([], ["--dry-run"]):
        run = xtask.run(*common, "--backend", "numpy", "--backend", blind, *extra)
        assert run.code == 2, run.stderr
        assert "has none of {n_batch} {n_ubatch} {threads}" in run.stderr
        assert "Traceback" not in run.stderr
    assert not marker.exists()
    alone = xtask.run(*common, "--backend", "numpy", "--backend", "numpy:llama.cpp-graph")
    assert alone.code == 2 and "no backend is a cpp: or cmd: engine" in alone.stderr


def test_the_matrix_varies_one_setting_at_a_time_and_runs_no_path_twice() -> None:
    every = os.cpu_count() or 1
    cmd = CommandBackend("cmd:e", "e {n_batch} {n_ubatch} {threads}", threads=5)
    matrix = path_matrix(cmd, 40)
    assert matrix is not None
    assert matrix.baseline == ExecutionPath(40, 40, 5)
    threads = [ExecutionPath(40, 40, t) for t in dict.fromkeys((1, every)) if t != 5]
    assert list(matrix.paths) == [
        ExecutionPath(1, 1, 5), ExecutionPath(3, 3, 5), ExecutionPath(32, 32, 5),
        ExecutionPath(40, 1, 5), ExecutionPath(40, 3, 5), ExecutionPath(40, 32, 5), *threads,
    ]  # fmt: skip
    short = path_matrix(CommandBackend("cmd:e", "e {n_batch} {n_ubatch}"), 2)
    assert short is not None and short.baseline == ExecutionPath(2, 2)
    assert list(short.paths) == [ExecutionPath(1, 1), ExecutionPath(2, 1)]
    batch_only = path_matrix(CommandBackend("cmd:e", "e {n_batch}"), 40)
    assert batch_only is not None and batch_only.paths == tuple(
        ExecutionPath(b) for b in (1, 3, 32)
    )
    assert path_matrix(NumpyBackend(), 40) is None
    gpu = CppBackend("cpp:x", Path("x"), threads=2, receipt={"inputs": {"backend": "cuda"}})
    offload = path_matrix(gpu, 40)
    assert offload is not None and offload.baseline == ExecutionPath(40, 40, 2, 0)
    assert offload.paths[-1] == ExecutionPath(40, 40, 2, ALL_LAYERS)
    assert offload.paths[-1].harness_arguments()[-2:] == ("--n-gpu-layers", str(ALL_LAYERS))
    cpu = path_matrix(CppBackend("cpp:x", Path("x"), receipt={"inputs": {"backend": "cpu"}}), 40)
    assert cpu is not None and all(p.n_gpu_layers is None for p in cpu.paths)


def test_a_cmd_engine_is_given_the_path_through_its_placeholders(tmp_path: Path) -> None:
    """{n_batch}, {n_ubatch} and {threads}: the path's, else the whole prompt and the
    backend's threads, else every core."""
    seen = tmp_path / "seen.txt"
    script = ("import sys, numpy as np; np.save(sys.argv[1], np.zeros((4, 8), np.float32)); "
              f"open({str(seen)!r}, 'a').write(' '.join(sys.argv[2:]) + chr(10))")  # fmt: skip
    template = shlex.join([sys.executable, "-c", script, "{logits}", "{n_batch}", "{n_ubatch}",
                           "{threads}"])  # fmt: skip
    tokens, model = [1, 2, 3, 4], tmp_path / "unused.gguf"
    backend = make_backend(f"cmd:{template}", threads=7)
    backend.evaluate(model, tokens, 0, tmp_path / "a")
    backend.evaluate(model, tokens, 0, tmp_path / "b", EvalOptions(path=ExecutionPath(3, 1, 2)))
    backend.evaluate(model, tokens, 0, tmp_path / "c", EvalOptions(path=ExecutionPath(512, 512)))
    make_backend(f"cmd:{template}").evaluate(model, tokens, 0, tmp_path / "d")
    assert seen.read_text().splitlines() == ["4 4 7", "3 1 2", "4 4 7", f"4 4 {os.cpu_count()}"]


def test_an_engine_that_fails_on_one_path_fails_its_model_naming_the_path(
    xtask: Xtask, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """An engine that exits 3 for one-token calls: the model's error names the path."""
    script = "\n".join([
        "import json, sys, numpy as np",
        "from bitnet_xtask.crossval.reference import load_model",
        "model, tokens, logits, n_batch = sys.argv[1:]",
        "if n_batch == '1': sys.exit(3)",
        "np.save(logits, load_model(model).logits(json.load(open(tokens))['tokens']))",
    ])  # fmt: skip
    argv = [sys.executable, "-c", script, "{model}", "{tokens}", "{logits}", "{n_batch}"]
    code, stderr = crossval_paths(xtask, inputs, tmp_path / "r.json", "numpy",
                                  "cmd:" + shlex.join(argv))  # fmt: skip
    assert code == 1, stderr
    (model,) = checked(tmp_path / "r.json")["models"]
    assert "exit" in model["error"] and model["error"].endswith("(at n_batch=1)"), model["error"]


def harness_summary(workdir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((workdir / "eval" / "stdout.txt").read_text())
    return summary


def test_the_harness_takes_the_path_it_is_given(
    llama_bin: Path, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    model = inputs[0]
    backend = make_backend(f"cpp:{llama_bin.parent}", threads=2)
    backend.evaluate(model, IDS, 2, tmp_path / "a")
    path = ExecutionPath(n_batch=3, n_ubatch=1, threads=1)
    backend.evaluate(model, IDS, 2, tmp_path / "b", EvalOptions(path=path))
    taken = [harness_summary(tmp_path / w) for w in "ab"]
    assert [(s["n_batch"], s["n_ubatch"], s["threads"]) for s in taken] == [(40, 40, 2), (3, 1, 1)]


def engine_paths(receipt: dict[str, Any], engine: str) -> dict[str, dict[str, float]]:
    """Per path: the max |dlogit| and max KL against the baseline and the reference."""
    (section,) = [s for s in path_sections(receipt) if s["backend"] == engine]
    numbers = {}
    for check in section["paths"]:
        base = check["against_baseline"]["metrics"]["summary"]
        ref = check["against_reference"]["metrics"]["summary"]
        numbers[check["path"]["label"]] = {
            "baseline_max_abs": base["max_abs_diff"], "baseline_max_kl": base["max_kl"],
            "reference_max_abs": ref["max_abs_diff"], "reference_max_kl": ref["max_kl"],
        }  # fmt: skip
    print(json.dumps({engine: numbers}, indent=1))  # the measured differences (-s shows them)
    return numbers


def test_llama_cpp_passes_paths(
    llama_bin: Path, xtask: Xtask, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    engine = f"cpp:{llama_bin.parent}"
    code, stderr = crossval_paths(xtask, inputs, tmp_path / "r.json", "numpy", engine)
    assert code == 0, stderr
    receipt = checked(tmp_path / "r.json")
    numbers = engine_paths(receipt, engine)
    every = os.cpu_count() or 1
    batches = [f"n_batch={b} n_ubatch={b}" for b in (1, 3, 32)]
    batches += [f"n_batch=40 n_ubatch={u}" for u in (1, 3, 32)]
    labels = {f"{label} threads={every}" for label in batches}
    assert set(numbers) == labels | ({"n_batch=40 n_ubatch=40 threads=1"} if every > 1 else set())
    assert f"{engine}: {len(numbers)} execution path(s)" in stderr


def test_bitnet_cpp_passes_paths_on_i2_s(
    bitnet_bin: Path, xtask: Xtask, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    model = generate_fixture("tiny", "bitnet", "i2_s", 7, tmp_path).model
    engine = f"cpp:{bitnet_bin.parent}"
    code, stderr = crossval_paths(xtask, (model, inputs[1]), tmp_path / "r.json",
                                  "numpy:bitnet.cpp-graph", engine)  # fmt: skip
    assert code == 0, stderr
    receipt = checked(tmp_path / "r.json")
    assert receipt["models"][0]["tolerances"]["name"] == "quantized"
    assert len(engine_paths(receipt, engine)) >= 6
