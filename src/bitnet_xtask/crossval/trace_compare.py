"""Where parity breaks: two traces compared step by step, and the first divergence named.

Each step of the map (`trace_map.bind`) is read from both traces, one tensor at a time,
as (n_tokens, features) float32 in the file's layout, and measured: the relative error
of the worst position (||c_p - r_p|| / ||r_p||, what is judged), the whole tensor's
relative L2, the largest absolute difference and where it is (position, head, index),
and the cosine similarity. A step is over its tolerance when the worst position's
relative error exceeds the profile's `max_tensor_rel_err`.

Error a step adds is told from error it inherits by re-running the step on the
candidate's own inputs with an oracle (`StepOracle`: the reference's own step when the
reference can re-run one, the hf: backend's module or the NumPy reference's function,
else the NumPy reference of the model's definition on the file): `added` is the
candidate's output against that. A step whose output is off but whose `added` is
within tolerance computes right on inputs that were already off; a step whose `added`
is over is wrong itself. When the oracle is the checkpoint's (hf:) and the NumPy
reference on the file reproduces the candidate (`file_err`), the step is right for the
file's weights, and the file's weights are what differs from the checkpoint: a
conversion bug, which only the checkpoint can show.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from bitnet_xtask.crossval.trace_map import ACTIVATION_OPS, BoundStep
from bitnet_xtask.crossval.traces import Omitted, Trace, TracedTensor

Array = npt.NDArray[Any]
Status = Literal["compared", "missing", "incomparable"]
"""A step measured; not in one of the traces; in both, but of shapes that cannot be
compared (a divergence: the candidate computed something else, or the map is wrong)."""


class StepOracle(Protocol):
    """Something that can re-run one step of the model on given inputs."""

    @property
    def name(self) -> str:
        """Who it is, as reports name it (a backend spec)."""
        ...

    def rerun(self, step: BoundStep, inputs: Sequence[npt.NDArray[np.float32]]) -> Array | None:
        """The step's output on `inputs` ((n_tokens, features) each, file layout), or
        None when it cannot re-run that step."""
        ...


@dataclass(frozen=True)
class Where:
    """A place in a (n_tokens, features) tensor; `head` when the features are heads."""

    position: int
    index: int
    head: int | None = None

    def words(self) -> str:
        head = "" if self.head is None else f", head {self.head}"
        return f"position {self.position}{head}, index {self.index}"


@dataclass(frozen=True)
class TensorMetrics:
    """One tensor of the candidate against the reference's."""

    rel_err: float  # the worst position's ||c - r|| / ||r||: what is judged
    worst_position: int
    rel_l2: float  # the whole tensor's ||c - r|| / ||r||
    max_abs: float
    where: Where  # of max_abs
    cosine: float

    def to_json(self) -> dict[str, Any]:
        return {"rel_err": self.rel_err, "worst_position": self.worst_position,
                "rel_l2": self.rel_l2, "max_abs": self.max_abs, "cosine": self.cosine,
                "where": {"position": self.where.position, "head": self.where.head,
                          "index": self.where.index}}  # fmt: skip


TINY = 1e-30


BLOCK_VALUES = 1 << 20
"""How many values one block of rows holds while a tensor is measured: float64 copies
of a block, never of a whole (n_tokens x n_vocab) tensor."""


def _blocks(reference: Array, candidate: Array) -> Iterator[tuple[int, Array, Array]]:
    """(first row, reference rows, candidate rows) in float64, a block of rows at a time."""
    n_rows, width = reference.shape
    step = max(1, BLOCK_VALUES // max(width, 1))
    for start in range(0, n_rows, step):
        ref = np.asarray(reference[start : start + step], np.float64)
        yield start, ref, np.asarray(candidate[start : start + step], np.float64)


def _worst_position(diff_norms: Array, ref_norms: Array) -> tuple[float, int]:
    """The largest ||c_p - r_p|| / ||r_p|| and its position (NaN anywhere: NaN). A
    position whose reference is zero is measured against the mean row norm instead."""
    finite = np.isfinite(ref_norms).any()
    floor = max(float(np.nanmean(ref_norms)) * 1e-6, TINY) if finite else TINY
    per_position = diff_norms / np.maximum(ref_norms, floor)
    if np.isnan(per_position).any():
        return math.nan, int(np.argmax(np.isnan(per_position)))
    worst = int(np.argmax(per_position))
    return float(per_position[worst]), worst


def relative_error(reference: Array, candidate: Array) -> tuple[float, int]:
    """The worst position's relative L2 error, and that position (`_worst_position`)."""
    norms = [(np.linalg.norm(c - r, axis=1), np.linalg.norm(r, axis=1))
             for _, r, c in _blocks(reference, candidate)]  # fmt: skip
    return _worst_position(*(np.concatenate(side) for side in zip(*norms, strict=True)))


def tensor_metrics(reference: Array, candidate: Array, head_dim: int | None) -> TensorMetrics:
    """The metrics of `candidate` against `reference`, both (n_tokens, features), in one
    pass a block of rows at a time."""
    width = reference.shape[1]
    diff_norms, ref_norms = [], []
    cand_sq = dot = 0.0
    max_abs, at = -1.0, (0, 0)
    for start, ref, cand in _blocks(reference, candidate):
        diff = np.abs(cand - ref)
        diff_norms.append(np.linalg.norm(diff, axis=1))
        ref_norms.append(np.linalg.norm(ref, axis=1))
        cand_sq += float(np.sum(cand * cand))
        dot += float(np.sum(ref * cand))
        flat = int(np.nanargmax(diff)) if not np.isnan(diff).all() else 0
        if not diff.flat[flat] <= max_abs:  # a NaN, or a larger difference
            max_abs, at = float(diff.flat[flat]), (start + flat // width, flat % width)
    rows_diff, rows_ref = np.concatenate(diff_norms), np.concatenate(ref_norms)
    rel_err, worst = _worst_position(rows_diff, rows_ref)
    ref_norm, cand_norm = float(np.linalg.norm(rows_ref)), math.sqrt(cand_sq)
    cosine = 1.0 if ref_norm == cand_norm == 0.0 else dot / max(ref_norm * cand_norm, TINY)
    head = None if head_dim is None else at[1] // head_dim
    rel_l2 = float(np.linalg.norm(rows_diff)) / max(ref_norm, TINY)
    return TensorMetrics(rel_err, worst, rel_l2, max_abs, Where(at[0], at[1], head), cosine)


@dataclass(frozen=True)
class Found:
    """Which tensor of a trace a step was read from: its name and op there."""

    name: str
    op: str
    parts: tuple[TracedTensor, ...] = field(repr=False, compare=False)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op}


def find(trace: Trace, step: BoundStep) -> Found | None:
    """The step's tensor in `trace`: of the tensors its names hold with one of its ops
    (any op when the step lists none), the last in graph order. A tensor recorded
    without an op (a `.npz`) is taken only by the first step to use its name
    (`BoundStep.untyped`: `Qcur-0` is the projection, not RoPE's output)."""
    found = None
    for name in step.names:
        parts = trace.find(name, step.step.ops, untyped=name in step.untyped)
        if parts and (found is None or parts[-1].index > found.parts[-1].index):
            found = Found(name, parts[-1].op, tuple(parts))
    return found


@dataclass(frozen=True)
class StepResult:
    """One step of the graph, compared."""

    label: str
    reference: Found | None
    candidate: Found | None
    metrics: TensorMetrics | None
    over: bool
    status: Status = "compared"
    inputs_err: float | None = None  # the worst relative error among its inputs
    added_err: float | None = None  # the candidate against the oracle on its inputs
    file_err: float | None = None  # against the NumPy reference on the file (hf oracle)
    note: str | None = None  # why it was not compared

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "reference": None if self.reference is None else self.reference.to_json(),
            "candidate": None if self.candidate is None else self.candidate.to_json(),
            "metrics": None if self.metrics is None else self.metrics.to_json(),
            "over": self.over,
            "status": self.status,
            "inputs_rel_err": self.inputs_err,
            "added_rel_err": self.added_err,
            "file_rel_err": self.file_err,
            "note": self.note,
        }


@dataclass(frozen=True)
class TraceComparison:
    """The candidate's trace against the reference's, step by step in graph order."""

    reference: str
    candidate: str
    tolerance: float
    oracle: str | None
    steps: tuple[StepResult, ...]
    omitted: dict[str, tuple[Omitted, ...]]

    @property
    def first_divergence(self) -> StepResult | None:
        return next((s for s in self.steps if s.over), None)

    def message(self) -> str:
        """The finding in words: where parity breaks, and whose error it is."""
        compared = [s for s in self.steps if s.metrics is not None]
        first = self.first_divergence
        if not compared and first is None:
            return (
                "no traced tensor could be compared: none of the map's steps is in both "
                "traces (see each step's note in the receipt)"
            )
        if first is not None and first.metrics is None:
            return f"first divergence: {first.label}: {first.note}"
        if first is None or first.metrics is None:
            worst = max((s.metrics.rel_err for s in compared if s.metrics), default=0.0)
            return (
                f"all {len(compared)} traced tensors are within "
                f"{_num(self.tolerance)} of {self.reference} (worst rel err {_num(worst)})"
            )
        before = [s for s in compared[: compared.index(first)] if s.metrics]
        within = max((s.metrics.rel_err for s in before if s.metrics), default=0.0)
        ops = self._ops(first)
        text = (f"first divergence: {first.label}{ops}: rel err {_num(first.metrics.rel_err)} "
                f"(worst at {first.metrics.where.words()}); "
                f"the {len(before)} tensors before it are within {_num(within)}")  # fmt: skip
        return f"{text}; {self.diagnosis(first)}"

    def _ops(self, step: StepResult) -> str:
        """ " (cpp:llama.cpp: silu, hf:...: relu2)" when the two computed different ops; for
        the FFN activation, or the gated product an engine fused it into, the activation
        each side computed (its own `ffn_act` op, else the fused op's)."""
        if step.label.endswith(("ffn_act", "ffn_gate_par")):
            act = self._step(step.label.rsplit(" ", 1)[0] + " ffn_act")
            sides = [_activation(act, i) or _activation(step, i) for i in (0, 1)]
        else:
            found = (step.candidate, step.reference)
            sides = [None if f is None or not f.op else f.op.lower() for f in found]
        if None in sides or sides[0] == sides[1]:
            return ""
        return f" ({self.candidate}: {sides[0]}, {self.reference}: {sides[1]})"

    def _step(self, label: str) -> StepResult | None:
        return next((s for s in self.steps if s.label == label), None)

    def diagnosis(self, step: StepResult) -> str:
        """Whether `step` adds its error or inherits it."""
        inputs = ""
        if step.inputs_err is not None:
            inputs = f"; its inputs were off by {_num(step.inputs_err)}"
        if step.added_err is None:
            return f"the step cannot be re-run here to tell added from inherited error{inputs}"
        if step.added_err <= self.tolerance:
            same = f"{self.oracle}'s step on {self.candidate}'s own inputs gives the same"
            if step.inputs_err is not None and step.inputs_err <= self.tolerance:
                # the candidate's step is the oracle's and its inputs are the reference's:
                # the reference (an engine, when the oracle is not it) computes it otherwise
                return (f"{same} (rel err {_num(step.added_err)}) and its inputs agree "
                        f"({_num(step.inputs_err)}): it is {self.reference}'s step that "
                        f"differs from {self.oracle}'s")  # fmt: skip
            return f"inherited: {same} (rel err {_num(step.added_err)}){inputs}"
        text = (f"the step itself is wrong: {self.oracle}'s step on {self.candidate}'s own "
                f"inputs differs by {_num(step.added_err)}{inputs}")  # fmt: skip
        if step.file_err is not None and step.file_err <= self.tolerance:
            text += (f"; with the GGUF's weights the step reproduces {self.candidate} (rel err "
                     f"{_num(step.file_err)}): the file's weights differ from the checkpoint's "
                     "(a conversion bug), which every engine reading the file shares")  # fmt: skip
        return text

    def to_json(self) -> dict[str, Any]:
        first = self.first_divergence
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "tolerance": self.tolerance,
            "oracle": self.oracle,
            "first_divergence": None if first is None else first.label,
            "message": self.message(),
            "steps": [s.to_json() for s in self.steps],
            "omitted": {
                side: [{"name": o.name, "op": o.op, "reason": o.reason} for o in items]
                for side, items in self.omitted.items()
            },
        }


def _num(value: float) -> str:
    return f"{value:.2g}" if math.isfinite(value) else str(value)


def _activation(step: StepResult | None, side: int) -> str | None:
    """The activation the candidate's (side 0) or the reference's (1) op of `step` computes."""
    found = None if step is None else (step.candidate, step.reference)[side]
    return None if found is None else ACTIVATION_OPS.get(found.op)


def compare_traces(
    specs: tuple[str, str],
    traces: tuple[Trace, Trace],
    steps: Sequence[BoundStep],
    tolerance: float,
    head_dim: int,
    oracle: StepOracle | None = None,
    file_oracle: StepOracle | None = None,
) -> TraceComparison:
    """Every step of `steps` in the candidate's trace (second) against the reference's
    (first), each tensor read, measured and let go before the next."""
    reference, candidate = traces
    located = {s.label: (find(reference, s), find(candidate, s)) for s in steps}
    results, errors = [], {}
    for step in steps:
        ref_found, cand_found = located[step.label]
        if ref_found is None or cand_found is None:
            missing = "the reference" if ref_found is None else "the candidate"
            results.append(StepResult(step.label, ref_found, cand_found, None, False,
                                      "missing", note=f"not in {missing}'s trace"))  # fmt: skip
            continue
        ref_tensor = reference.positions(list(ref_found.parts))
        cand_tensor = candidate.positions(list(cand_found.parts))
        if ref_tensor.shape != cand_tensor.shape:
            note = f"shapes differ: {ref_tensor.shape} and {cand_tensor.shape}"
            results.append(StepResult(step.label, ref_found, cand_found, None, True,
                                      "incomparable", note=note))  # fmt: skip
            continue
        metrics = tensor_metrics(ref_tensor, cand_tensor, head_dim if step.step.heads else None)
        errors[step.label] = metrics.rel_err
        inputs_err = _inputs_err(step, errors)
        inputs = None if oracle is None else _inputs(candidate, step, located)
        added = _rerun_err(oracle, step, inputs, cand_tensor)
        over = not metrics.rel_err <= tolerance  # NaN is over
        file_err = None
        if over and added is not None and added > tolerance and file_oracle is not None:
            file_err = _rerun_err(file_oracle, step, inputs, cand_tensor)
        results.append(StepResult(step.label, ref_found, cand_found, metrics, over,
                                  "compared", inputs_err, added, file_err))  # fmt: skip
    omitted = {specs[0]: reference.omitted, specs[1]: candidate.omitted}
    name = None if oracle is None else oracle.name
    return TraceComparison(specs[0], specs[1], tolerance, name, tuple(results), omitted)


def _inputs_err(step: BoundStep, errors: dict[str, float]) -> float | None:
    """The worst relative error of the step's inputs (NaN if one is), when all were
    measured."""
    known = [errors[label] for label in step.inputs if label in errors]
    if not known or len(known) != len(step.inputs):
        return None
    return math.nan if any(math.isnan(e) for e in known) else max(known)


def _inputs(
    trace: Trace, step: BoundStep, located: dict[str, tuple[Found | None, Found | None]]
) -> list[npt.NDArray[np.float32]] | None:
    """The candidate's own tensors for each of the step's inputs, or None when one is
    not in its trace."""
    found = [located.get(label, (None, None))[1] for label in step.inputs]
    if not found or any(f is None for f in found):
        return None
    return [trace.positions(list(f.parts)) for f in found if f is not None]


def _rerun_err(
    oracle: StepOracle | None,
    step: BoundStep,
    inputs: list[npt.NDArray[np.float32]] | None,
    candidate: npt.NDArray[np.float32],
) -> float | None:
    if oracle is None or inputs is None:
        return None
    try:
        expected = oracle.rerun(step, inputs)
    except ValueError:  # inputs of a shape the step cannot take: not comparable
        return None
    if expected is None or np.shape(expected) != candidate.shape:
        return None
    return relative_error(expected, candidate)[0]
