"""How far apart two engines' logits are, and whether that is within tolerance.

Both inputs are (n_positions, n_vocab) matrices, row i the logits after token i. They
may be larger than memory (a backend's logits stay in its file, a `LogitsFile` that
reads a block of rows at a time), so every metric is computed over chunks of positions:
at most a few float64 copies of one chunk exist at a time, and per-position results are
all that is kept.

Per position: the largest absolute difference, the RMS difference, the cosine
similarity, KL(p_ref || p_cand) of the softmaxed logits, whether the top-1 tokens agree,
and the overlap of the top-k sets. A tolerance profile sets one threshold per metric;
`verdict` names every metric that fails (and a tokenization that differs), where its
worst value is and by how much it misses the threshold. The runner and verify-receipt
both judge through `verdict`, so a receipt is re-checked by the rule that wrote it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from bitnet_xtask.errors import UsageError

Floats = npt.NDArray[np.float64]

DEFAULT_TOP_K = 5
DEFAULT_CHUNK_BYTES = 16 << 20
"""The float64 size of one chunk of rows; the peak is a small multiple of it."""


# --- per-position metrics -------------------------------------------------------------


def log_softmax(x: Floats) -> Floats:
    """Row-wise log-softmax, shifted by the row maximum so exp never overflows."""
    shifted = x - x.max(axis=-1, keepdims=True)
    out: Floats = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def kl_divergence(log_p: Floats, log_q: Floats) -> Floats:
    """Row-wise KL(p || q) from log-probabilities; terms with p = 0 contribute 0."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0.0, p * (log_p - log_q), 0.0)
    # Rounding can leave an identical pair a hair below zero.
    out: Floats = np.maximum(terms.sum(axis=-1), 0.0)
    return out


def cosine_similarity(a: Floats, b: Floats) -> Floats:
    """Row-wise cosine; two zero rows count as identical (1), one zero row as 0."""
    dot = (a * b).sum(axis=-1)
    norms = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    both_zero = ~(a != 0.0).any(axis=-1) & ~(b != 0.0).any(axis=-1)
    cos = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0.0)
    out: Floats = np.where(both_zero, 1.0, cos)
    return out


def topk_overlap(a: Floats, b: Floats, k: int) -> Floats:
    """Row-wise |top_k(a) & top_k(b)| / k (ties at the k-th place broken arbitrarily)."""
    top_a = np.argpartition(-a, k - 1, axis=-1)[:, :k]
    top_b = np.argpartition(-b, k - 1, axis=-1)[:, :k]
    shared = (top_a[:, :, None] == top_b[:, None, :]).any(axis=-1).sum(axis=-1)
    out: Floats = shared / k
    return out


@dataclass(frozen=True)
class LogitsComparison:
    """Per-position metrics as columns (index = position), and their summaries."""

    n_vocab: int
    top_k: int
    max_abs_diff: Floats
    rms_diff: Floats
    cosine: Floats
    kl: Floats
    top1_match: npt.NDArray[np.bool_]
    # How far the candidate's top token trails the reference's, in the reference's
    # logits (0 where they agree): a small margin is a near-tie that rounding flips.
    top1_margin: Floats
    topk_overlap: Floats

    @property
    def n_positions(self) -> int:
        return len(self.max_abs_diff)

    def summary(self) -> dict[str, float]:
        """One number per metric over all positions (RMS over all elements)."""
        return {
            "max_abs_diff": float(self.max_abs_diff.max()),
            "rms_diff": math.sqrt(float(np.mean(self.rms_diff**2))),
            "min_cosine": float(self.cosine.min()),
            "mean_kl": float(self.kl.mean()),
            "max_kl": float(self.kl.max()),
            "top1_agreement": float(self.top1_match.mean()),
            "mean_topk_overlap": float(self.topk_overlap.mean()),
        }

    def to_dict(self) -> dict[str, Any]:
        """For a JSON receipt: the summary, then one record per position."""
        return {
            "n_positions": self.n_positions,
            "n_vocab": self.n_vocab,
            "top_k": self.top_k,
            "summary": self.summary(),
            "positions": [
                {
                    "position": i,
                    "max_abs_diff": float(self.max_abs_diff[i]),
                    "rms_diff": float(self.rms_diff[i]),
                    "cosine": float(self.cosine[i]),
                    "kl": float(self.kl[i]),
                    "top1_match": bool(self.top1_match[i]),
                    "top1_margin": float(self.top1_margin[i]),
                    "topk_overlap": float(self.topk_overlap[i]),
                }
                for i in range(self.n_positions)
            ],
        }


class Rows(Protocol):
    """A (n_positions, n_vocab) matrix that hands out blocks of rows: an ndarray or a
    `crossval.logits_file.LogitsFile`."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def ndim(self) -> int: ...

    def __getitem__(self, rows: slice, /) -> Any: ...


def compare_logits(
    reference: Rows,
    candidate: Rows,
    *,
    top_k: int = DEFAULT_TOP_K,
    chunk_positions: int | None = None,
) -> LogitsComparison:
    """Compare two (n_positions, n_vocab) logits matrices, chunk_positions rows at a time.

    The default chunk keeps one float64 copy of a chunk near DEFAULT_CHUNK_BYTES. The
    inputs are only sliced, so file-backed inputs are read one chunk at a time.
    """
    if reference.ndim != 2 or reference.shape != candidate.shape or reference.shape[0] == 0:
        raise ValueError(
            f"want two non-empty (n_positions, n_vocab) matrices of one shape, "
            f"got {reference.shape} and {candidate.shape}"
        )
    n_positions, n_vocab = reference.shape
    if not 1 <= top_k <= n_vocab:
        raise ValueError(f"top_k must lie in [1, {n_vocab}], got {top_k}")
    if chunk_positions is not None and chunk_positions < 1:
        raise ValueError(f"chunk_positions must be positive, got {chunk_positions}")
    step = chunk_positions or max(1, DEFAULT_CHUNK_BYTES // (8 * n_vocab))
    columns: dict[str, list[npt.NDArray[Any]]] = {
        "max_abs_diff": [],
        "rms_diff": [],
        "cosine": [],
        "kl": [],
        "top1_match": [],
        "top1_margin": [],
        "topk_overlap": [],
    }
    for start in range(0, n_positions, step):
        ref = np.asarray(reference[start : start + step], dtype=np.float64)
        cand = np.asarray(candidate[start : start + step], dtype=np.float64)
        diff = cand - ref
        columns["max_abs_diff"].append(np.abs(diff).max(axis=-1))
        columns["rms_diff"].append(np.sqrt(np.mean(diff * diff, axis=-1)))
        del diff
        columns["cosine"].append(cosine_similarity(ref, cand))
        columns["kl"].append(kl_divergence(log_softmax(ref), log_softmax(cand)))
        ref_top, cand_top = ref.argmax(axis=-1), cand.argmax(axis=-1)
        rows = np.arange(len(ref))
        columns["top1_match"].append(ref_top == cand_top)
        columns["top1_margin"].append(ref[rows, ref_top] - ref[rows, cand_top])
        columns["topk_overlap"].append(topk_overlap(ref, cand, top_k))
    joined = {name: np.concatenate(parts) for name, parts in columns.items()}
    return LogitsComparison(n_vocab=n_vocab, top_k=top_k, **joined)


# --- greedy continuations -------------------------------------------------------------


@dataclass(frozen=True)
class GreedyComparison:
    """Two greedy continuations of the same prompt, and where they part."""

    reference: tuple[int, ...]
    candidate: tuple[int, ...]
    first_divergence: int | None  # None: identical

    @property
    def agreement(self) -> float:
        """The fraction of the reference continuation reproduced before the divergence."""
        if self.first_divergence is None or not self.reference:
            return 1.0
        return self.first_divergence / len(self.reference)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement}


def compare_greedy(reference: Sequence[int], candidate: Sequence[int]) -> GreedyComparison:
    """The first index where the continuations differ; a shorter one differs where it ends."""
    first = next(
        (i for i, (r, c) in enumerate(zip(reference, candidate, strict=False)) if r != c),
        None if len(reference) == len(candidate) else min(len(reference), len(candidate)),
    )
    return GreedyComparison(tuple(reference), tuple(candidate), first)


# --- tolerances and the verdict -------------------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    """One threshold per metric. Per-position metrics are judged at their worst position."""

    name: str
    max_abs_diff: float  # largest |cand - ref| at any position
    max_rms_diff: float  # largest per-position RMS difference
    min_cosine: float  # smallest per-position cosine similarity
    max_kl: float  # largest per-position KL(p_ref || p_cand), in nats
    min_top1_agreement: float  # fraction of positions whose argmax agrees, near-ties aside
    top1_tie_margin: float  # a different argmax within this of the top (ref logits) is a tie
    min_topk_overlap: float  # mean top-k overlap over positions
    min_greedy_agreement: float  # fraction of the greedy continuation before divergence
    max_tensor_rel_err: float  # --trace: a tensor's worst-position relative L2 error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, Tolerances] = {
    # f32 and f16 weights. llama.cpp keeps K and V in an f16 cache and rounds activations
    # to f16 in f16 matrix products. Measured against the reference (tiny and small
    # llama/bitnet models, logits with std 2 to 16, both llama.cpp generations): max
    # |diff| <= 0.031, per-position RMS <= 0.006, KL <= 1.7e-5, top-1 always equal.
    # A wrong RMSNorm epsilon (1e-3 for 1e-5) already gives KL 8e-3 and fails.
    "strict": Tolerances(
        name="strict",
        max_abs_diff=0.25,
        max_rms_diff=0.05,
        min_cosine=0.9999,
        max_kl=1e-3,
        min_top1_agreement=0.99,
        top1_tie_margin=0.02,
        min_topk_overlap=0.95,
        min_greedy_agreement=1.0,
        max_tensor_rel_err=0.02,
    ),
    # Quantized weights (q8_0, q4_0, tq1_0, tq2_0, i2_s). The reference multiplies by the
    # same dequantized weights, but engines quantize the activations to 8 bits inside
    # quantized matrix products (q8_0 / q8_K / bitnet.cpp's per-row int8), so logits
    # move by a few percent, near-ties flip and greedy continuations may part early.
    # Measured on the same models: max |diff| <= 2.9 (logit std 16), per-position RMS
    # <= 0.5, cosine >= 0.999, KL <= 0.054, top-1 agreement >= 0.92, mean top-5
    # overlap >= 0.95. A wrong RoPE type or a missing sub-norm gives KL > 1 and fails.
    "quantized": Tolerances(
        name="quantized",
        max_abs_diff=5.0,
        max_rms_diff=1.0,
        min_cosine=0.995,
        max_kl=0.1,
        min_top1_agreement=0.85,
        top1_tie_margin=0.25,
        min_topk_overlap=0.8,
        min_greedy_agreement=0.0,
        max_tensor_rel_err=0.2,
    ),
}


def load_tolerances(path: Path) -> Tolerances:
    """A profile from JSON: {"base": "strict"|"quantized", "name": ..., <threshold>: ...}.

    Thresholds not given are the base profile's (default "strict"); the name defaults
    to the file's stem.
    """
    from bitnet_xtask.inputs import read_json

    try:  # a regular file, bounded, valid JSON
        data = read_json(path, what="tolerance profile")
    except UsageError as exc:
        raise UsageError(f"cannot read tolerances: {exc.message}", exc.hint) from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: tolerances must be a JSON object")
    base_name = data.pop("base", "strict")
    if not isinstance(base_name, str) or base_name not in PROFILES:  # a list is unhashable
        raise UsageError(f"{path}: unknown base profile {base_name!r}", hint=_known_profiles())
    thresholds = {f.name for f in fields(Tolerances)} - {"name"}
    unknown = sorted(set(data) - thresholds - {"name"})
    if unknown:
        raise UsageError(
            f"{path}: unknown keys {unknown}", hint=f"known: {', '.join(sorted(thresholds))}"
        )
    if not isinstance(data.setdefault("name", path.stem), str):
        raise UsageError(f"{path}: name must be a string")
    for key in thresholds & set(data):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{path}: {key} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{path}: {key} must be a finite number >= 0, got {value!r}")
        data[key] = float(value)
    return replace(PROFILES[base_name], **data)


def _known_profiles() -> str:
    return f"known profiles: {', '.join(PROFILES)}"


def tolerance_profile(name: str) -> Tolerances:
    """A built-in profile by name."""
    if name not in PROFILES:
        raise UsageError(f"unknown tolerance profile {name!r}", hint=_known_profiles())
    return PROFILES[name]


@dataclass(frozen=True)
class Failure:
    """One metric outside its threshold."""

    metric: str
    value: float
    bound: Literal["max", "min"]  # whether the threshold is a maximum or a minimum
    threshold: float
    # Where the worst value is: a logits row, or for greedy_agreement the index in the
    # continuation where it diverged; None when no single position is to blame.
    position: int | None
    excess: float  # how far past the threshold, always positive (NaN for a NaN value)

    def message(self) -> str:
        if self.metric == TOKENIZATION:
            return f"tokenization differs from the reference's at token {self.position}"
        where = "" if self.position is None else f" at position {self.position}"
        side = "above the maximum" if self.bound == "max" else "below the minimum"
        return (
            f"{self.metric} = {self.value:.6g}{where} is {side} {self.threshold:.6g} "
            f"by {self.excess:.6g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message()}


TOKENIZATION = "tokenization"
"""The failure of a candidate whose token ids differ from the reference's: recorded as
value 0 against a minimum of 1, at the first differing token (receipt version 1)."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of judging a comparison against a profile."""

    profile: str
    failures: tuple[Failure, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "passed": self.passed,
            "failures": [f.to_dict() for f in self.failures],
        }


def _worst(values: npt.NDArray[Any], *, largest: bool) -> int:
    """The position of the worst value; a NaN is worse than any number."""
    nan = np.flatnonzero(np.isnan(values))
    if nan.size:
        return int(nan[0])
    return int(np.argmax(values) if largest else np.argmin(values))


def _at_most(metric: str, value: float, limit: float, position: int | None) -> Failure | None:
    if value <= limit:
        return None
    return Failure(metric, value, "max", limit, position, value - limit)


def _at_least(metric: str, value: float, limit: float, position: int | None) -> Failure | None:
    if value >= limit:
        return None
    return Failure(metric, value, "min", limit, position, limit - value)


def verdict(
    comparison: LogitsComparison,
    tolerances: Tolerances,
    greedy: GreedyComparison | None = None,
    tokens_differ_at: int | None = None,
) -> Verdict:
    """Every metric of `comparison` (and `greedy`, if given) checked against `tolerances`;
    `tokens_differ_at`, the first token where the candidate's own tokenization of the
    prompt differs from the reference's, fails the comparison whatever its logits say.

    Comparisons are written so that a NaN fails them.
    """
    c, t = comparison, tolerances
    worst_abs = _worst(c.max_abs_diff, largest=True)
    worst_rms = _worst(c.rms_diff, largest=True)
    worst_cos = _worst(c.cosine, largest=False)
    worst_kl = _worst(c.kl, largest=True)
    # A flipped near-tie is rounding, not a wrong token: only clear misses count.
    agrees = c.top1_margin <= t.top1_tie_margin
    first_miss = int(np.argmin(agrees)) if not agrees.all() else None
    worst_topk = _worst(c.topk_overlap, largest=False)
    checks = [
        _at_most("max_abs_diff", float(c.max_abs_diff[worst_abs]), t.max_abs_diff, worst_abs),
        _at_most("rms_diff", float(c.rms_diff[worst_rms]), t.max_rms_diff, worst_rms),
        _at_least("cosine", float(c.cosine[worst_cos]), t.min_cosine, worst_cos),
        _at_most("kl", float(c.kl[worst_kl]), t.max_kl, worst_kl),
        _at_least("top1_agreement", float(agrees.mean()), t.min_top1_agreement, first_miss),
        _at_least("topk_overlap", float(c.topk_overlap.mean()), t.min_topk_overlap, worst_topk),
    ]
    if greedy is not None:
        checks.append(
            _at_least(
                "greedy_agreement",
                greedy.agreement,
                t.min_greedy_agreement,
                greedy.first_divergence,
            )
        )
    if tokens_differ_at is not None:
        checks.append(Failure(TOKENIZATION, 0.0, "min", 1.0, tokens_differ_at, 1.0))
    return Verdict(t.name, tuple(f for f in checks if f is not None))
