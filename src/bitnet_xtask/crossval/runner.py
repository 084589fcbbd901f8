"""`run_crossval()`: the same token ids through every backend, compared with the first.

For each model and prompt: the first backend tokenizes the prompt; every backend that
tokenizes too is checked for the same ids; every backend evaluates those ids; each
backend after the first is compared with it (logits per position, greedy continuation,
its own tokenization) and judged against the model's tolerance profile
(`metrics.verdict`); with --paths, each cpp: and cmd: engine is run again along its
execution paths, each path judged the same way against the engine's own evaluation and
the reference's (`crossval.paths`). The result stays typed (`crossval.results`) until
the caller asks for the receipt (`CrossvalResult.to_receipt()`).

A model one backend cannot run fails alone, recorded in the receipt, whichever backend
it is and whatever it raised: the runner reaches backends only through `Guarded`, which
turns any `XtaskError` or `OSError` from a backend call (the reference refusing an
architecture, an engine's exit status or deadline, an unreadable output) into that
model's error, and the other models are still compared. Ctrl-C and bugs (any other
exception) propagate. What is wrong with the request itself is refused before the first
engine runs (`crossval.request`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.backends import Backend, CppBackend, Evaluation, make_backend
from bitnet_xtask.crossval.eval_options import DEFAULT_OPTIONS, EvalOptions, ExecutionPath
from bitnet_xtask.crossval.request import (
    CONTEXT_HINT,
    TOKENIZER_HINT,
    CrossvalRequest,
    PlannedModel,
    check_counts,
    context_problem,
    plan_models,
    tokenizer_problem,
)
from bitnet_xtask.crossval.results import (
    Comparison,
    CrossvalResult,
    EvaluationRecord,
    ModelResult,
    PromptRun,
    SharedDeviation,
    TokenizationParity,
)
from bitnet_xtask.errors import Interrupted, NoSpaceError, UsageError, XtaskError
from bitnet_xtask.events import NullReporter, Reporter

if TYPE_CHECKING:
    from bitnet_xtask.crossval.paths import BackendPaths
    from bitnet_xtask.crossval.trace_compare import TraceComparison

T = TypeVar("T")


class ModelError(Exception):
    """Why one model could not be compared; the runner records it as that model's error.
    Not an `XtaskError`: it never leaves the runner, so it can never stand for a whole
    run's exit status."""


@dataclass(frozen=True)
class Guarded:
    """A backend as the runner sees it: the one door through which it is called."""

    backend: Backend

    @property
    def spec(self) -> str:
        return self.backend.spec

    def call(self, action: Callable[[], T]) -> T:
        """`action()` (a call of this backend), with what a backend raises for a model it
        cannot run turned into a `ModelError` that names the backend."""
        try:
            return action()
        except (NoSpaceError, Interrupted):
            raise  # the machine's disk, or the user: the whole run's exit status
        except XtaskError as exc:
            message = exc.message or "it failed"
            hint = f" ({exc.hint})" if exc.hint else ""
            named = message if message.startswith(self.spec) else f"{self.spec}: {message}"
            raise ModelError(named + hint) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(
                    f"disk full while {self.spec} ran: {exc.strerror}",
                    "free some space (the engines write to the temp folder, $TMPDIR) and run again",
                ) from None
            raise ModelError(f"{self.spec}: {exc.strerror or exc}") from exc

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        return self.call(lambda: self.backend.tokenize(model, prompt, workdir))

    def evaluate(
        self,
        model: Path,
        tokens: list[int],
        n_predict: int,
        workdir: Path,
        options: EvalOptions = DEFAULT_OPTIONS,
    ) -> Evaluation:
        return self.call(lambda: self.backend.evaluate(model, tokens, n_predict, workdir, options))


def _compare(
    specs: tuple[str, str],
    evaluations: tuple[Evaluation, Evaluation],
    tolerances: metrics.Tolerances,
    top_k: int,
    tokens_differ_at: int | None,
) -> Comparison:
    """The candidate (second) against the reference (first), judged."""
    reference, candidate = evaluations
    if reference.logits.shape[1] != candidate.logits.shape[1]:
        raise ModelError(
            f"{specs[1]}: {candidate.logits.shape[1]} logits per position, but the reference "
            f"has {reference.logits.shape[1]}: it is not running the same model (vocabulary)"
        )
    try:  # the engines' files are read only now, a block of rows at a time
        logits = metrics.compare_logits(
            reference.logits, candidate.logits, top_k=min(top_k, reference.logits.shape[1])
        )
    except (OSError, ValueError) as exc:  # LogitsFile: a file that changed since it was checked
        raise ModelError(f"comparing {specs[1]} with {specs[0]}: {exc}") from exc
    greedy = None
    if reference.continuation is not None and candidate.continuation is not None:
        greedy = metrics.compare_greedy(reference.continuation, candidate.continuation)
    judged = metrics.verdict(logits, tolerances, greedy, tokens_differ_at)
    return Comparison(specs[0], specs[1], logits, greedy, judged)


def _tokenize(
    model: Path, prompt: str, backends: Sequence[Guarded], workdir: Path
) -> tuple[list[int], tuple[TokenizationParity, ...]]:
    """The first backend's ids, and every backend's own ids against them."""
    first = backends[0]
    tokens = first.tokenize(model, prompt, workdir / "0")
    if tokens is None:  # `tokenizer_problem` said it would
        raise ModelError(f"{first.spec}: gave no token ids for prompt {prompt!r}")
    parity = [TokenizationParity(first.spec, tuple(tokens), None)]
    for index, backend in enumerate(backends[1:], 1):
        ids = backend.tokenize(model, prompt, workdir / str(index))
        differ = None if ids is None else metrics.compare_greedy(tokens, ids).first_divergence
        parity.append(TokenizationParity(backend.spec, None if ids is None else tuple(ids), differ))
    return tokens, tuple(parity)


@dataclass(frozen=True)
class _Context:
    """What every prompt of one model runs with."""

    model: PlannedModel
    backends: Sequence[Guarded]
    request: CrossvalRequest
    reporter: Reporter


def _comparisons(
    ctx: _Context, evaluations: Sequence[Evaluation], parity: Sequence[TokenizationParity]
) -> tuple[Comparison, ...]:
    """Each backend after the first against the first, each reported as it is judged."""
    reference, compared = ctx.backends[0].spec, []
    for index, backend in enumerate(ctx.backends[1:], 1):
        differ = parity[index].first_difference if parity else None
        comparison = _compare((reference, backend.spec), (evaluations[0], evaluations[index]),
                              ctx.model.tolerances, ctx.request.top_k, differ)  # fmt: skip
        compared.append(comparison)
        summary: dict[str, float | None] = dict(comparison.logits.summary())
        ctx.reporter.emit({"phase": "comparison", "model": str(ctx.model.facts.path),
                           "candidate": backend.spec, "passed": comparison.verdict.passed,
                           "summary": summary})  # fmt: skip
    return tuple(compared)


def _shared_deviations(
    ctx: _Context, evaluations: Sequence[Evaluation], comparisons: Sequence[Comparison]
) -> tuple[SharedDeviation, ...]:
    """Every pair of failed candidates that agree with each other within the model's
    profile: a deviation from the reference they share, which comparing engines with
    engines would call parity."""
    failed = [i for i, c in enumerate(comparisons, 1) if not c.verdict.passed]
    reference, shared = ctx.backends[0].spec, []
    for first, second in itertools.combinations(failed, 2):
        specs = (ctx.backends[first].spec, ctx.backends[second].spec)
        between = _compare(specs, (evaluations[first], evaluations[second]),
                           ctx.model.tolerances, ctx.request.top_k, None)  # fmt: skip
        if between.verdict.passed:
            pair = (comparisons[first - 1], comparisons[second - 1])
            shared.append(SharedDeviation(reference, between, pair))
            ctx.reporter.info(f"  {shared[-1].message()}")
    return tuple(shared)


def _record(spec: str, evaluation: Evaluation) -> EvaluationRecord:
    ids = evaluation.continuation
    return EvaluationRecord(spec, evaluation.seconds, None if ids is None else tuple(ids))


def _run_prompt(ctx: _Context, prompt: str | None, workdir: Path) -> PromptRun:
    facts, request = ctx.model.facts, ctx.request
    parity: tuple[TokenizationParity, ...] = ()
    if prompt is None:
        tokens = list(request.token_ids or ())
    else:
        tokens, parity = _tokenize(facts.path, prompt, ctx.backends, workdir)
        if problem := context_problem(facts.path, facts.limits, len(tokens), request.n_predict):
            raise UsageError(f"the prompt {prompt[:40]!r}...: {problem}", CONTEXT_HINT)
    evaluations = []
    options = EvalOptions(trace=request.trace)
    for index, backend in enumerate(ctx.backends):
        ctx.reporter.info(f"  {backend.spec}: evaluating {len(tokens)} tokens")
        where = workdir / str(index) / "eval"
        evaluations.append(backend.evaluate(facts.path, tokens, request.n_predict, where, options))
    records = tuple(_record(b.spec, e) for b, e in zip(ctx.backends, evaluations, strict=True))
    comparisons = _comparisons(ctx, evaluations, parity)
    shared = _shared_deviations(ctx, evaluations, comparisons)
    traces = _traces(ctx, evaluations)
    paths = _paths(ctx, tokens, evaluations, comparisons, workdir)
    return PromptRun(prompt, tuple(tokens), parity, records, comparisons, shared, traces,
                     paths)  # fmt: skip


def _traces(ctx: _Context, evaluations: Sequence[Evaluation]) -> tuple[TraceComparison, ...]:
    """--trace: each candidate's intermediate tensors against the reference's, each
    finding reported (`tracing`)."""
    if ctx.request.trace is None:
        return ()
    from bitnet_xtask.crossval.tracing import trace_comparisons

    backends = [b.backend for b in ctx.backends]
    tolerance = ctx.model.tolerances.max_tensor_rel_err
    try:
        compared, untraced = trace_comparisons(backends, evaluations, ctx.model.facts.path,
                                               tolerance)  # fmt: skip
    except (NoSpaceError, Interrupted):
        raise
    except (XtaskError, OSError, ValueError) as exc:
        raise ModelError(f"comparing traces: {exc}") from exc
    for line in untraced:
        ctx.reporter.info(f"  trace: {line}")
    for comparison in compared:
        ctx.reporter.info(f"  trace {comparison.candidate}: {comparison.message()}")
    return compared


def _path_evaluator(
    ctx: _Context, backend: Guarded, tokens: list[int]
) -> Callable[[ExecutionPath, Path], Evaluation]:
    """`backend` evaluating `tokens` along a path; its failure names the path."""

    def evaluate(path: ExecutionPath, where: Path) -> Evaluation:
        try:
            return backend.evaluate(ctx.model.facts.path, tokens, ctx.request.n_predict, where,
                                    EvalOptions(path=path))  # fmt: skip
        except ModelError as exc:
            raise ModelError(f"{exc} (at {path.label()})") from exc

    return evaluate


def _paths(
    ctx: _Context,
    tokens: list[int],
    evaluations: Sequence[Evaluation],
    comparisons: Sequence[Comparison],
    workdir: Path,
) -> tuple[BackendPaths, ...]:
    """--paths: each cpp: and cmd: engine along its execution paths, each path against
    the engine's own evaluation and the reference's (`crossval.paths`)."""
    if not ctx.request.paths:
        return ()
    from bitnet_xtask.crossval.paths import Baseline, check_paths, path_matrix

    def compare(specs: tuple[str, str], pair: tuple[Evaluation, Evaluation]) -> Comparison:
        return _compare(specs, pair, ctx.model.tolerances, ctx.request.top_k, None)

    found = []
    for index, backend in enumerate(ctx.backends):
        matrix = path_matrix(backend.backend, len(tokens))
        if matrix is None:
            continue
        first = index == 0  # the reference: its own evaluation is what the others are judged by
        agrees = None if first else comparisons[index - 1].verdict.passed
        reference = None if first else (ctx.backends[0].spec, evaluations[0])
        found.append(check_paths(Baseline(backend.spec, evaluations[index], agrees), matrix,
                                 _path_evaluator(ctx, backend, tokens), reference, compare,
                                 workdir / str(index) / "paths", ctx.reporter))  # fmt: skip
    return tuple(found)


def _run_model(ctx: _Context, workdir: Path) -> ModelResult:
    facts, tolerances, audit = ctx.model.facts, ctx.model.tolerances, ctx.model.audit
    ctx.reporter.info(f"{facts.name} ({facts.quant or 'unknown quant'}, profile {tolerances.name})")
    for finding in () if audit is None else audit.semantic:
        ctx.reporter.info(f"  config audit: {finding.message()}")
    try:
        runs = tuple(
            _run_prompt(ctx, prompt, workdir / f"p{index}")
            for index, prompt in enumerate(ctx.request.inputs)
        )
    except ModelError as exc:
        ctx.reporter.info(f"  {facts.name}: {exc}")
        return ModelResult(facts, tolerances, error=str(exc), audit=audit)
    return ModelResult(facts, tolerances, runs, audit=audit)


@contextlib.contextmanager
def _opened(request: CrossvalRequest) -> Iterator[list[Guarded]]:
    """Every backend of the request (a spec that names nothing usable is refused here,
    exit 2), closed when the run ends however it ends."""
    backends = [
        make_backend(spec, request.threads, request.timeout, hf_dtype=request.hf_dtype)
        for spec in request.backends
    ]
    try:
        yield [Guarded(backend) for backend in backends]
    finally:
        for backend in backends:
            backend.close()


def _scratch() -> tempfile.TemporaryDirectory[str]:
    """Where the engines' inputs and outputs go; made only once the backends are open."""
    return tempfile.TemporaryDirectory(prefix="xtask-crossval-", ignore_cleanup_errors=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_crossval(request: CrossvalRequest, reporter: Reporter | None = None) -> CrossvalResult:
    """Run every model and prompt through every backend; `.to_receipt()` of the result is
    the receipt document."""
    reporter = reporter or NullReporter()
    check_counts(request)
    with _opened(request) as backends, _scratch() as tmp:
        started = _now()
        engines = [b.backend.engine for b in backends if isinstance(b.backend, CppBackend)]
        planned = plan_models(request, engines)  # all refusable, before any engine runs
        if problem := tokenizer_problem(request, backends[0].backend):
            raise UsageError(problem, TOKENIZER_HINT)
        models = tuple(
            _run_model(_Context(model, backends, request, reporter), Path(tmp) / f"m{index}")
            for index, model in enumerate(planned)
        )
        identities = tuple((b.spec, b.backend.identity()) for b in backends)
    from bitnet_xtask.gpu.detect import detect_runtime

    host = detect_runtime().to_dict()
    return CrossvalResult(started, _now(), host, request.settings(), identities, models)
