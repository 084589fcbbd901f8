"""Issue 13's verdicts: the model's definition leads, and two candidates that are wrong the
same way are named as a deviation they share (pairwise engine comparisons call it
parity). Real runs through the CLI and the runner, with engines wrong on purpose through
the cmd: protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Run, Xtask
from test_crossval_cli import checked, engine_backend

from bitnet_xtask.crossval.request import CrossvalRequest, reference_first
from bitnet_xtask.fixtures import generate_fixture


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_fixture("tiny", "llama", "f32", 3, tmp_path_factory.mktemp("tiny")).model


def test_the_definition_leads_whatever_the_order_given() -> None:
    given = ("numpy", "cpp:llama.cpp", "hf:ckpt", "hf:other")
    assert reference_first(given) == ("hf:ckpt", "numpy", "cpp:llama.cpp", "hf:other")
    assert reference_first(("numpy", "numpy")) == ("numpy", "numpy")
    request = CrossvalRequest((Path("m.gguf"),), ("numpy", "hf:ckpt"))
    assert request.backends == ("hf:ckpt", "numpy")


def test_two_candidates_wrong_the_same_way_are_a_shared_deviation(
    xtask: Xtask, tiny: Path, tmp_path: Path
) -> None:
    other = engine_backend("--perturb", "2:9:40")  # wrong elsewhere: shares nothing
    run, receipt_path = _two_alike(xtask, tiny, tmp_path, "--backend", other, "--n-predict", "2")
    receipt = checked(json.loads(receipt_path.read_text()))
    (finding,) = receipt["verdict"]["findings"]
    assert finding["candidates"] == [SAME, SAME + " "]
    assert finding["reference"] == "numpy"
    assert finding["between"]["verdict"]["passed"]
    assert [f["position"] for f in finding["against_reference"]] == [1, 1]
    message = finding["message"]
    assert "agree with each other (max KL 0" in message
    assert "but both differ from numpy (" in message and "at position 1" in message
    assert message.endswith("a deviation they share from the reference")
    assert message.startswith(f"{tiny.name}: {SAME} and {SAME} ")
    assert f"finding: {message}" in run.stderr  # under the summary table
    assert f"failures); finding: {message}" in run.stderr  # the exit's reason


def test_a_receipt_that_claims_a_shared_deviation_the_numbers_deny_is_caught(
    xtask: Xtask, tiny: Path, tmp_path: Path
) -> None:
    _, receipt_path = _two_alike(xtask, tiny, tmp_path, "--n-predict", "0")
    receipt = json.loads(receipt_path.read_text())
    shared = receipt["models"][0]["runs"][0]["shared_deviations"][0]
    shared_before = json.loads(json.dumps(shared))
    shared["between"]["metrics"]["positions"][1]["kl"] = 5.0
    shared["between"]["metrics"]["summary"]["max_kl"] = 5.0
    receipt_path.write_text(json.dumps(receipt))
    verify = xtask.run("crossval", "verify-receipt", str(receipt_path))
    assert verify.code == 1
    assert "recorded as a shared deviation, but they do not agree" in verify.stderr
    receipt["models"][0]["runs"][0]["shared_deviations"][0] = shared_before
    receipt["verdict"]["findings"] = []  # the finding dropped from the verdict
    receipt_path.write_text(json.dumps(receipt))
    verify = xtask.run("crossval", "verify-receipt", str(receipt_path))
    assert verify.code == 1
    assert "the verdict's findings are not the runs' shared deviations" in verify.stderr


SAME = engine_backend("--perturb", "1:7:40")
"""A candidate wrong at position 1; it and `SAME + " "` (the same engine, another spec)
are wrong alike."""


def _two_alike(xtask: Xtask, tiny: Path, tmp_path: Path, *args: str) -> tuple[Run, Path]:
    """crossval of numpy against two candidates wrong alike (and `args`): exit 1."""
    receipt = tmp_path / "receipt.json"
    run = xtask.run("crossval", "--model", str(tiny), "--tokens-file", str(_ids(tmp_path)),
                    "--backend", "numpy", "--backend", SAME, "--backend", SAME + " ",
                    "--receipt", str(receipt), *args)  # fmt: skip
    assert run.code == 1, run.stderr
    return run, receipt


def _ids(tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("1 300 301 302 303\n")
    return path
