"""`crossval --paths`: an engine compared with itself over a matrix of execution paths.

Several 2026 bitnet.cpp kernel bugs gave wrong but finite logits only for some batch
sizes or CPU code paths (microsoft/BitNet #617: prompts of more than ~3 tokens corrupted
on AVX-only CPUs by the GEMM path; #468: `-b 1` and `-b 32` differ). One evaluation per
engine cannot see them. With `--paths`, every `cpp:` and `cmd:` backend evaluates the
same ids again along each path of a matrix (`numpy` and `hf:` have one path), and each
path is compared, by the metrics and the verdict every comparison uses (the runner's
`_compare`: `metrics.compare_logits`, `metrics.verdict`, the model's tolerances), with

- the engine's baseline: its ordinary evaluation in the run (the whole prompt in one
  decode call, micro-batches of the whole call, the run's `--threads` or every core,
  nothing offloaded), and
- the reference: the run's first backend (none for the first backend itself: its
  baseline is the reference).

The matrix varies one setting at a time away from the baseline:

    n_batch = n_ubatch in 1, 3, 32, 512   the prompt in decode calls of that many tokens
                                          (1: incremental decoding through the KV cache)
    n_ubatch in 1, 3, 32                  the whole prompt in one call, computed in
                                          micro-batches of that many (a graph each)
    threads in 1, all                     all: os.cpu_count()
    n_gpu_layers = all (ALL_LAYERS)       a GPU build only (its fetch-cpp receipt's
                                          backend is not cpu): every layer offloaded

Each path is taken as the prompt's length makes it (`ExecutionPath.resolved`: no call
longer than the prompt, so n_batch=512 on a 40-token prompt is the baseline), and a
path equal to the baseline or to an earlier one is not run again. A backend varies only
what it takes: a `cpp:` build every setting (the harness's `--n-batch`, `--n-ubatch`,
`--threads`, `--n-gpu-layers`); a `cmd:` engine the settings whose placeholder
(`{n_batch}`, `{n_ubatch}`, `{threads}`) its template has, and one with none is
refused before any engine runs (`check_paths_request`).

A path passes when it agrees with the baseline and with the reference; a path that
does not fails the run (exit 1), named with its settings. Which paths agree with the
reference and which do not is the batch dependence the summary line shows: an engine
whose attention is wrong for calls of more than 3 tokens is wrong at its baseline and
at n_batch=32, right at n_batch=1 and 3 (tests/engines/batch_bug_engine.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_xtask.crossval.backends import Backend, CommandBackend, CppBackend, Evaluation
from bitnet_xtask.crossval.eval_options import ExecutionPath, every_core
from bitnet_xtask.crossval.results import Comparison
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import Reporter

BATCH_SIZES = (1, 3, 32, 512)
UBATCH_SIZES = (1, 3, 32)
ALL_LAYERS = 999
"""n_gpu_layers for "every layer": more than any model has. Not -1: upstream llama.cpp
reads a negative count as all (src/llama-model.cpp:2004 at 0c1e57098), but the BitNet
fork offloads from layer n_layer - n_gpu_layers on (src/llama.cpp:7060 at
Eddie-Wang1120/llama.cpp 406a5036), so -1 would offload nothing there."""

PATH_PLACEHOLDERS = ("n_batch", "n_ubatch", "threads")
"""The cmd: placeholders that carry a path's settings (`CommandBackend.evaluate`)."""

BASELINE = "its one-batch run"


def path_name(spec: str, label: str) -> str:
    """How a comparison names an engine on one path: `cmd:... [n_batch=3 n_ubatch=3]`."""
    return f"{spec} [{label}]"


def template_settings(template: str) -> tuple[str, ...]:
    """The path settings a cmd: template passes to its engine."""
    return tuple(name for name in PATH_PLACEHOLDERS if f"{{{name}}}" in template)


def check_paths_request(backends: Sequence[str]) -> None:
    """Refuse (exit 2), before any engine runs, a --paths run with nothing to vary: no
    cpp: or cmd: backend, or a cmd: template without a path placeholder."""
    kinds = [spec.partition(":") for spec in backends]
    if not any(kind in ("cpp", "cmd") for kind, _, _ in kinds):
        raise UsageError(
            "--paths compares an engine with itself, and no backend is a cpp: or cmd: engine",
            "add --backend cpp:<build> or --backend cmd:<template> (numpy and hf: have one path)",
        )
    placeholders = " ".join(f"{{{name}}}" for name in PATH_PLACEHOLDERS)
    for kind, _, template in kinds:
        if kind == "cmd" and not template_settings(template):
            raise UsageError(
                f"--paths: the template cmd:{template} has none of {placeholders}, so no "
                "execution path can reach its engine",
                f"pass the engine its batch size and threads through {placeholders} "
                "(README: crossval --paths), or drop --paths",
            )


def gpu_build(receipt: dict[str, Any]) -> bool:
    """Whether a fetch-cpp build has a GPU backend (its receipt's `inputs.backend`)."""
    inputs = receipt.get("inputs")
    backend = inputs.get("backend") if isinstance(inputs, dict) else None
    return isinstance(backend, str) and backend != "cpu"


@dataclass(frozen=True)
class PathMatrix:
    """The paths one engine is run along for one prompt, besides its baseline."""

    baseline: ExecutionPath
    paths: tuple[ExecutionPath, ...]


def path_matrix(backend: Backend, n_tokens: int) -> PathMatrix | None:
    """The matrix of the module docstring for `backend` on `n_tokens` ids (None: the
    backend has one path)."""
    if isinstance(backend, CppBackend):
        gpu = ("n_gpu_layers",) if gpu_build(backend.receipt) else ()
        settings: tuple[str, ...] = ("n_batch", "n_ubatch", "threads", *gpu)
    elif isinstance(backend, CommandBackend):
        settings = template_settings(backend.template)
    else:
        return None
    default = {"n_batch": n_tokens, "n_ubatch": n_tokens, "n_gpu_layers": 0,
               "threads": backend.threads or every_core()}  # fmt: skip
    base = ExecutionPath(**{name: default[name] for name in settings})
    candidates = []
    if base.n_batch is not None:
        together = base.n_ubatch is not None
        candidates += [replace(base, n_batch=b, n_ubatch=b if together else None)
                       for b in BATCH_SIZES]  # fmt: skip
    if base.n_ubatch is not None:
        candidates += [replace(base, n_ubatch=u) for u in UBATCH_SIZES]
    if base.threads is not None:
        candidates += [replace(base, threads=t) for t in (1, every_core())]
    if base.n_gpu_layers is not None:
        candidates.append(replace(base, n_gpu_layers=ALL_LAYERS))
    unique = dict.fromkeys(path.resolved(n_tokens) for path in candidates)
    unique.pop(base, None)
    return PathMatrix(base, tuple(unique))


def _difference(comparison: Comparison) -> str:
    """The largest logit difference and where, and the largest KL."""
    summary = comparison.logits.summary()
    if summary["max_abs_diff"] == 0.0:
        return "identical logits"
    diffs = np.nan_to_num(comparison.logits.max_abs_diff, nan=np.inf)
    return (
        f"max |dlogit| {summary['max_abs_diff']:.3g} at position {int(np.argmax(diffs))}, "
        f"max KL {summary['max_kl']:.2g}"
    )


def _agreement(passed: bool, subject: str) -> str:
    return f"{subject} {'agrees with' if passed else 'differs from'} the reference"


@dataclass(frozen=True)
class PathCheck:
    """One path of one engine, against the engine's baseline and against the reference."""

    path: ExecutionPath
    against_baseline: Comparison
    against_reference: Comparison | None  # None: the engine is the reference

    @property
    def passed(self) -> bool:
        return all(comparison.verdict.passed for _, comparison in self.comparisons())

    def comparisons(self) -> tuple[tuple[str, Comparison], ...]:
        """Each comparison with what it is against, as failures name it."""
        named = [(f"against {BASELINE}", self.against_baseline)]
        if self.against_reference is not None:
            named.append(("against the reference", self.against_reference))
        return tuple(named)

    def message(self, spec: str, baseline: ExecutionPath, baseline_agrees: bool | None) -> str:
        """What this path says about the engine, for a person."""
        label, reference = self.path.label(), self.against_reference
        if not self.against_baseline.verdict.passed:
            line = (f"{spec} disagrees with itself at {label}: {_difference(self.against_baseline)}"
                    f" against {BASELINE} ({baseline.label()})")  # fmt: skip
            if reference is None or baseline_agrees is None:
                return line
            this = _agreement(reference.verdict.passed, "this path")
            detail = "" if reference.verdict.passed else f" ({_difference(reference)})"
            return f"{line}; {this}{detail}, {_agreement(baseline_agrees, BASELINE)}"
        if reference is not None and not reference.verdict.passed:
            also = ", as does its one-batch run" if baseline_agrees is False else ""
            return (f"{spec} at {label} agrees with {BASELINE} but differs from the reference "
                    f"({_difference(reference)}){also}")  # fmt: skip
        against = " and the reference" if reference is not None else ""
        difference = _difference(self.against_baseline)
        return f"{spec} at {label}: agrees with {BASELINE}{against} ({difference})"

    def to_json(self) -> dict[str, Any]:
        reference = self.against_reference
        return {
            "path": self.path.to_json(),
            "against_baseline": self.against_baseline.to_json(),
            "against_reference": None if reference is None else reference.to_json(),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class BackendPaths:
    """One engine over its matrix of paths on one prompt."""

    backend: str
    baseline: ExecutionPath
    baseline_agrees: bool | None  # the run's verdict on the baseline (None: it is the reference)
    checks: tuple[PathCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def messages(self) -> list[str]:
        """One line per path."""
        return [c.message(self.backend, self.baseline, self.baseline_agrees) for c in self.checks]

    def summary(self) -> str:
        """The batch dependence in one line: which paths disagree with the baseline, and
        which agree with the reference and which do not."""
        wrong = [c.path.label() for c in self.checks if not c.against_baseline.verdict.passed]
        line = (f"{self.backend}: {len(self.checks)} execution path(s) besides {BASELINE} "
                f"({self.baseline.label()}); {len(wrong)} disagree with it")  # fmt: skip
        line += f" ({', '.join(wrong)})" if wrong else ""
        if self.baseline_agrees is None:
            return line
        verdicts = [(f"{self.baseline.label()} (one batch)", self.baseline_agrees)] + [
            (c.path.label(), c.against_reference.verdict.passed)
            for c in self.checks
            if c.against_reference is not None
        ]
        agree = [label for label, passed in verdicts if passed] or ["no path"]
        differ = [label for label, passed in verdicts if not passed] or ["no path"]
        return (f"{line}; agrees with the reference at {', '.join(agree)}; "
                f"differs from it at {', '.join(differ)}")  # fmt: skip

    def failures(self, model: str) -> list[dict[str, Any]]:
        """Every failure of a path's comparison, each message naming model, engine, path."""
        return [
            {**failure.to_dict(),
             "message": f"{model} / {self.backend} at {check.path.label()} {against}: "
                        f"{failure.message()}"}
            for check in self.checks
            for against, comparison in check.comparisons()
            for failure in comparison.verdict.failures
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "baseline": self.baseline.to_json(),
            "paths": [check.to_json() for check in self.checks],
            "passed": self.passed,
            "summary": self.summary(),
        }


Compare = Callable[[tuple[str, str], tuple[Evaluation, Evaluation]], Comparison]
"""Judge the second evaluation against the first, named by the two specs."""


@dataclass(frozen=True)
class Baseline:
    """An engine's ordinary evaluation in the run, which its paths are compared with."""

    spec: str
    evaluation: Evaluation
    agrees: bool | None  # its verdict against the reference (None: it is the reference)


def check_paths(
    baseline: Baseline,
    matrix: PathMatrix,
    evaluate: Callable[[ExecutionPath, Path], Evaluation],
    reference: tuple[str, Evaluation] | None,
    compare: Compare,
    workdir: Path,
    reporter: Reporter,
) -> BackendPaths:
    """Run the engine along every path of `matrix` (`evaluate(path, workdir)`), each
    compared with `baseline` and with `reference` (None: the engine is the reference) as
    soon as it ran; its outputs are removed then, so one path's logits are on disk at a
    time."""
    spec, checks = baseline.spec, []
    for index, path in enumerate(matrix.paths):
        where = workdir / f"path{index}"
        evaluation = evaluate(path, where)
        name = path_name(spec, path.label())
        base = compare((path_name(spec, matrix.baseline.label()), name),
                       (baseline.evaluation, evaluation))  # fmt: skip
        against = None if reference is None else compare((reference[0], name),
                                                         (reference[1], evaluation))  # fmt: skip
        checks.append(PathCheck(path, base, against))
        reporter.info(f"  {checks[-1].message(spec, matrix.baseline, baseline.agrees)}")
        shutil.rmtree(where, ignore_errors=True)
    found = BackendPaths(spec, matrix.baseline, baseline.agrees, tuple(checks))
    reporter.info(f"  {found.summary()}")
    return found
