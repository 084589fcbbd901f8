"""crossval.metrics on constructed logits whose answers are known."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bitnet_xtask.crossval.metrics import (
    PROFILES,
    LogitsComparison,
    compare_greedy,
    compare_logits,
    load_tolerances,
    tolerance_profile,
    verdict,
)
from bitnet_xtask.errors import UsageError

Floats = npt.NDArray[np.float32]


def random_logits(n_positions: int = 12, n_vocab: int = 50, seed: int = 0) -> Floats:
    return np.random.default_rng(seed).normal(0.0, 3.0, (n_positions, n_vocab)).astype(np.float32)


def assert_same_comparison(a: LogitsComparison, b: LogitsComparison) -> None:
    for name in ("max_abs_diff", "rms_diff", "cosine", "kl", "top1_match", "topk_overlap"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_identical_logits_have_zero_distance() -> None:
    logits = random_logits()
    c = compare_logits(logits, logits.copy())
    assert c.n_positions == 12 and c.n_vocab == 50 and c.top_k == 5
    assert c.summary() == {
        "max_abs_diff": 0.0,
        "rms_diff": 0.0,
        "min_cosine": pytest.approx(1.0),
        "mean_kl": 0.0,
        "max_kl": 0.0,
        "top1_agreement": 1.0,
        "mean_topk_overlap": 1.0,
    }
    assert verdict(c, PROFILES["strict"]).passed


def test_known_values_on_two_token_vocabulary() -> None:
    reference = np.array([[0.0, 0.0], [1.0, 0.0]])
    candidate = np.array([[math.log(3.0), 0.0], [1.0, 1.0]])
    c = compare_logits(reference, candidate, top_k=1)
    np.testing.assert_allclose(c.max_abs_diff, [math.log(3.0), 1.0])
    np.testing.assert_allclose(c.rms_diff, [math.log(3.0) / math.sqrt(2), math.sqrt(0.5)])
    # Row 0: cos of (0, 0) and (ln 3, 0) is undefined: one zero vector counts as 0.
    np.testing.assert_allclose(c.cosine, [0.0, 1 / math.sqrt(2)])
    # KL((1/2, 1/2) || (3/4, 1/4)) = 1/2 ln(4/3); row 1: p = softmax(1, 0), q uniform.
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    np.testing.assert_allclose(c.kl, [0.5 * math.log(4 / 3), float(np.sum(p * np.log(2 * p)))])
    # Ties resolve to the first maximum (token 0), as np.argmax and xtask-logits do.
    assert c.top1_match.tolist() == [True, True]


def test_a_perturbed_position_is_found_and_named() -> None:
    reference = random_logits()
    candidate = reference.copy()
    candidate[7, 13] += 0.5
    c = compare_logits(reference, candidate)
    assert np.flatnonzero(c.max_abs_diff).tolist() == [7]
    assert c.max_abs_diff[7] == pytest.approx(0.5)
    v = verdict(c, PROFILES["strict"])
    assert not v.passed
    failure = next(f for f in v.failures if f.metric == "max_abs_diff")
    assert failure.position == 7
    assert failure.bound == "max"
    assert failure.excess == pytest.approx(0.5 - PROFILES["strict"].max_abs_diff)
    assert failure.message() == (
        f"max_abs_diff = 0.5 at position 7 is above the maximum 0.25 by {failure.excess:.6g}"
    )


def test_top1_and_topk_disagreements() -> None:
    reference = np.tile(np.arange(20.0)[::-1], (3, 1))  # top-5 = tokens 0..4
    candidate = reference.copy()
    candidate[1, 19] = 100.0  # new top-1; top-5 = {19, 0, 1, 2, 3}
    candidate[2, 4] = -1.0  # token 4 leaves the top-5, token 5 enters
    c = compare_logits(reference, candidate)
    assert c.top1_match.tolist() == [True, False, True]
    np.testing.assert_allclose(c.topk_overlap, [1.0, 0.8, 0.8])
    failures = {f.metric: f for f in verdict(c, PROFILES["strict"]).failures}
    assert failures["top1_agreement"].position == 1
    assert failures["top1_agreement"].value == pytest.approx(2 / 3)
    assert failures["topk_overlap"].bound == "min"
    assert failures["topk_overlap"].position == 1  # the first of the worst
    assert "below the minimum 0.95" in failures["topk_overlap"].message()


def test_chunking_gives_the_same_result_as_one_chunk() -> None:
    reference, candidate = random_logits(37, 64, seed=1), random_logits(37, 64, seed=2)
    whole = compare_logits(reference, candidate, chunk_positions=37)
    for chunk in (1, 5, 36, 1000):
        assert_same_comparison(whole, compare_logits(reference, candidate, chunk_positions=chunk))
    assert_same_comparison(whole, compare_logits(reference, candidate))


def test_memmap_inputs(tmp_path: Path) -> None:
    reference, candidate = random_logits(20, 30, seed=3), random_logits(20, 30, seed=4)
    np.save(tmp_path / "ref.npy", reference)
    candidate.astype("<f4").tofile(tmp_path / "logits.f32")  # xtask-logits' raw format
    ref_map = np.load(tmp_path / "ref.npy", mmap_mode="r")
    cand_map = np.memmap(tmp_path / "logits.f32", dtype="<f4", mode="r", shape=(20, 30))
    from_files = compare_logits(ref_map, cand_map, chunk_positions=3)
    assert_same_comparison(compare_logits(reference, candidate), from_files)


def test_nan_fails_every_distance_check() -> None:
    reference = random_logits()
    candidate = reference.copy()
    candidate[4, 0] = np.nan
    v = verdict(compare_logits(reference, candidate), PROFILES["quantized"])
    failing = {f.metric: f for f in v.failures}
    assert {"max_abs_diff", "rms_diff", "cosine", "kl"} <= set(failing)
    assert all(failing[m].position == 4 for m in ("max_abs_diff", "rms_diff", "cosine", "kl"))
    assert "= nan at position 4" in failing["kl"].message()


def test_to_dict_is_json() -> None:
    reference = random_logits(4, 10)
    candidate = reference + 0.01
    c = compare_logits(reference, candidate, top_k=3)
    g = compare_greedy([1, 2, 3], [1, 2, 4])
    record = json.loads(json.dumps(c.to_dict()))
    assert record["top_k"] == 3 and len(record["positions"]) == 4
    assert record["positions"][2]["position"] == 2
    assert record["summary"]["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)
    verdict_record = json.loads(json.dumps(verdict(c, PROFILES["strict"], g).to_dict()))
    assert verdict_record["passed"] is False
    assert [f["metric"] for f in verdict_record["failures"]] == ["greedy_agreement"]
    assert verdict_record["failures"][0]["position"] == 2
    assert json.loads(json.dumps(g.to_dict()))["first_divergence"] == 2


def test_invalid_inputs() -> None:
    logits = random_logits(3, 4)
    with pytest.raises(ValueError, match="one shape"):
        compare_logits(logits, logits[:2])
    with pytest.raises(ValueError, match="top_k"):
        compare_logits(logits, logits, top_k=5)
    with pytest.raises(ValueError, match="chunk_positions"):
        compare_logits(logits, logits, top_k=1, chunk_positions=0)


@pytest.mark.parametrize(
    ("reference", "candidate", "first", "agreement"),
    [
        ([5, 6, 7], [5, 6, 7], None, 1.0),
        ([5, 6, 7, 8], [5, 6, 9, 8], 2, 0.5),
        ([5, 6, 7, 8], [5, 6], 2, 0.5),
        ([], [], None, 1.0),
    ],
)
def test_greedy_first_divergence(
    reference: list[int], candidate: list[int], first: int | None, agreement: float
) -> None:
    g = compare_greedy(reference, candidate)
    assert g.first_divergence == first
    assert g.agreement == agreement


def test_greedy_divergence_is_judged_by_profile() -> None:
    c = compare_logits(random_logits(), random_logits())
    g = compare_greedy([1, 2, 3, 4], [1, 9, 9, 9])
    assert any(f.metric == "greedy_agreement" for f in verdict(c, PROFILES["strict"], g).failures)
    assert all(
        f.metric != "greedy_agreement" for f in verdict(c, PROFILES["quantized"], g).failures
    )


def test_tolerances_from_json(tmp_path: Path) -> None:
    path = tmp_path / "ci-q4.json"
    path.write_text(json.dumps({"base": "quantized", "max_kl": 0.02, "min_top1_agreement": 1}))
    t = load_tolerances(path)
    assert t.name == "ci-q4"
    assert t.max_kl == 0.02 and t.min_top1_agreement == 1.0
    assert t.min_cosine == PROFILES["quantized"].min_cosine
    path.write_text(json.dumps({"name": "tight", "max_abs_diff": 0.01}))
    assert load_tolerances(path) == replace(PROFILES["strict"], name="tight", max_abs_diff=0.01)


def test_a_receipts_tolerances_load_back(tmp_path: Path) -> None:
    path = tmp_path / "from-receipt.json"
    path.write_text(json.dumps(PROFILES["quantized"].to_dict()))
    assert load_tolerances(path) == PROFILES["quantized"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read tolerances"),
        ("[1, 2]", "must be a JSON object"),
        ('{"base": "loose"}', "unknown base profile 'loose'"),
        ('{"max_kll": 0.1}', "unknown keys \\['max_kll'\\]"),
        ('{"max_kl": "0.1"}', "max_kl must be a number"),
        ('{"max_kl": true}', "max_kl must be a number"),
        ('{"name": 3}', "name must be a string"),
    ],
)
def test_bad_tolerance_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_tolerances(path)


def test_profiles_by_name() -> None:
    assert tolerance_profile("quantized") is PROFILES["quantized"]
    with pytest.raises(UsageError, match="unknown tolerance profile") as info:
        tolerance_profile("exact")
    assert info.value.hint == "known profiles: strict, quantized"
