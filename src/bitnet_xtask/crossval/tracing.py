"""`crossval --trace` for one prompt: every candidate's trace against the reference's.

The runner evaluates every backend with a `TraceRequest`; this module takes the traces
that came back, binds the map to the model (`trace_map.bind`, from the GGUF's
architecture and block count) and compares each candidate's with the reference's
(`trace_compare`), with the oracles that re-run a step on the candidate's inputs:

- the reference's own step when it has one to re-run (the `hf:` backend's modules, the
  NumPy reference's functions, as whichever graph it runs);
- else the NumPy reference of the model's definition, on the file (an engine cannot be
  asked to re-run one step);
- and, when the oracle is the checkpoint's, the NumPy reference on the file as a second
  opinion (`file_oracle`), which tells a conversion bug from an engine bug.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitnet_xtask.crossval.backends import Backend, Evaluation, NumpyBackend
from bitnet_xtask.crossval.reference import ReferenceModel, load_model
from bitnet_xtask.crossval.reference_steps import ReferenceSteps
from bitnet_xtask.crossval.trace_compare import (
    Array,
    StepOracle,
    TraceComparison,
    compare_traces,
)
from bitnet_xtask.crossval.trace_map import BoundStep, bind
from bitnet_xtask.errors import XtaskError


@dataclass
class _FileOracle:
    """The NumPy reference of the model's definition on the file, loaded when a step is
    first re-run (an hf: oracle needs it only for a step over its tolerance): a numpy
    backend's model when one runs the definition (no second copy of the weights)."""

    backends: Sequence[Backend]
    model: Path
    name: str = "numpy"
    _steps: ReferenceSteps | None = field(default=None, repr=False)

    def rerun(self, step: BoundStep, inputs: Sequence[npt.NDArray[np.float32]]) -> Array | None:
        if self._steps is None:
            self._steps = ReferenceSteps(self._load(), self.name)
        return self._steps.rerun(step, inputs)

    def _load(self) -> ReferenceModel:
        for backend in self.backends:
            if isinstance(backend, NumpyBackend) and backend.graph == "definition":
                return backend.model(self.model)
        return load_model(self.model)


def _oracles(
    backends: Sequence[Backend], model: Path
) -> tuple[StepOracle | None, StepOracle | None]:
    """(the oracle, the file's oracle when the first is not already the file's)."""
    from bitnet_xtask.crossval.hf_backend import HFBackend

    reference = backends[0]
    if isinstance(reference, HFBackend):
        return reference.step_runner(model), _FileOracle(backends, model)
    if isinstance(reference, NumpyBackend):
        return ReferenceSteps(reference.model(model), reference.spec), None
    return _FileOracle(backends, model), None


def _steps_of(model: Path) -> tuple[int, int, str]:
    """(n_layer, head_dim, arch) of the GGUF, from its header."""
    from bitnet_xtask.crossval.gguf_file import GGUFFile
    from bitnet_xtask.crossval.reference import read_hparams

    hp = read_hparams(GGUFFile(model), model)
    return hp.n_layer, hp.head_dim, hp.arch


def trace_comparisons(
    backends: Sequence[Backend],
    evaluations: Sequence[Evaluation],
    model: Path,
    tolerance: float,
) -> tuple[tuple[TraceComparison, ...], tuple[str, ...]]:
    """Each candidate's trace against the reference's, and a line for each candidate
    whose trace was not compared, and why: it gave none, it cannot be read, or the model
    is one the map does not cover. None of that fails the model: a trace says where,
    the logits say whether."""
    reference = evaluations[0].trace
    if reference is None:
        return (), (f"{backends[0].spec} gave no trace, so no trace is compared",)
    try:
        n_layer, head_dim, arch = _steps_of(model)
        steps = bind(arch, n_layer)
    except (XtaskError, ValueError) as exc:
        return (), (f"no trace is compared: {getattr(exc, 'message', None) or exc}",)
    oracle, file_oracle = _oracles(backends, model)
    compared, untraced = [], []
    for backend, evaluation in zip(backends[1:], evaluations[1:], strict=True):
        if evaluation.trace is None:
            untraced.append(f"{backend.spec} gave no trace (a cmd: engine traces with {{trace}})")
            continue
        specs = (backends[0].spec, backend.spec)
        try:
            compared.append(compare_traces(specs, (reference, evaluation.trace), steps,
                                           tolerance, head_dim, oracle, file_oracle))  # fmt: skip
        except ValueError as exc:  # a trace whose parts do not make up its tensors
            untraced.append(f"{backend.spec}'s trace could not be compared: {exc}")
    return tuple(compared), tuple(untraced)
