"""`run_crossval()`: the same token ids through every backend, compared with the first.

For each model and prompt: the first backend tokenizes the prompt; every backend that
tokenizes too is checked for the same ids; every backend evaluates those ids; each
backend after the first is compared with it (logits per position, greedy continuation)
and judged against the model's tolerance profile. The result is the receipt document
(`crossval.receipt`), whose `verdict` says whether everything passed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.backends import (
    DEFAULT_TIMEOUT,
    Backend,
    BackendError,
    Evaluation,
    make_backend,
)
from bitnet_xtask.crossval.receipt import RECEIPT_KIND, RECEIPT_VERSION, ModelLimits, inspect_model
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import NullReporter, Reporter

DEFAULT_PROMPT = "The capital of France is Paris, and the capital of Germany is"
DEFAULT_BACKENDS = ("cpp:llama.cpp", "numpy")
STRICT_QUANTS = frozenset({"f32", "f16", "bf16"})


@dataclass(frozen=True)
class CrossvalRequest:
    """What to compare; every field lands in the receipt."""

    models: tuple[Path, ...]
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    token_ids: tuple[int, ...] | None = None  # instead of prompts: no tokenizing at all
    n_predict: int = 8
    profile: str | None = None  # strict | quantized | a JSON file; None: from the quant
    top_k: int = metrics.DEFAULT_TOP_K
    threads: int | None = None
    timeout: float = DEFAULT_TIMEOUT  # seconds per engine call; then its process group is killed


def discover_models(root: Path) -> tuple[Path, ...]:
    """Every complete GGUF under `root` (the reference guide: crossval looks in models/)."""
    found = tuple(sorted(p for p in root.rglob("*.gguf") if p.is_file()))
    if not found:
        raise UsageError(
            f"no .gguf models under {root}/",
            "pass --model PATH, or make one: xtask gen-fixtures --size tiny --output models",
        )
    return found


def tolerances_for(quant: str | None, profile: str | None) -> metrics.Tolerances:
    """The profile asked for, else strict for float weights and quantized for the rest."""
    if profile is None:
        return metrics.tolerance_profile("strict" if quant in STRICT_QUANTS else "quantized")
    if profile in metrics.PROFILES:
        return metrics.tolerance_profile(profile)
    if not Path(profile).exists():
        raise UsageError(
            f"unknown tolerance profile {profile!r}",
            f"use {', '.join(metrics.PROFILES)} or the path of a JSON file (README: crossval)",
        )
    return metrics.load_tolerances(Path(profile))


def _profile_file(profile: str | None) -> metrics.Tolerances | None:
    """A profile given as a file, read once, up front (None: a built-in one, or none)."""
    if profile is None or profile in metrics.PROFILES:
        return None
    return tolerances_for(None, profile)


def context_problem(model: Path, limits: ModelLimits, n_tokens: int, n_predict: int) -> str | None:
    """Why `n_tokens` ids plus `n_predict` continued ones do not fit the model's context
    (None when they do, or when the model does not say its context). The harness sizes
    its context to the sequence, so an unchecked 60,000-token prompt would allocate for
    60,000 positions; the NumPy reference would build 60,000 x 60,000 attention scores."""
    n_ctx = limits.context_length
    if n_ctx is None or n_tokens + n_predict <= n_ctx:
        return None
    return (
        f"{n_tokens} tokens + --n-predict {n_predict} = {n_tokens + n_predict} positions, "
        f"more than the {n_ctx}-token context of {model.name}"
    )


def prompt_problem(model: Path, limits: ModelLimits, prompt: str, n_predict: int) -> str | None:
    """Why a prompt surely does not fit, known before it is tokenized: no token covers
    more bytes of text than the vocabulary's longest token (as stored: SPM writes a space
    as 3-byte `▁`, a byte token as `<0x41>`), so a prompt longer than
    (context - n_predict) x that many bytes needs more positions than the context has."""
    n_ctx, longest = limits.context_length, limits.longest_token_bytes
    if n_ctx is None or longest is None:
        return None
    room = max(n_ctx - n_predict, 0) * longest
    size = len(prompt.encode("utf-8", "surrogatepass"))
    if size <= room:
        return None
    return (
        f"a prompt of {size:,} bytes cannot fit the {n_ctx}-token context of "
        f"{model.name} with --n-predict {n_predict} (at most {room:,} bytes: "
        f"{max(n_ctx - n_predict, 0)} tokens of at most {longest} bytes)"
    )


def _check_fits(
    request: CrossvalRequest, inputs: Sequence[str | None], model: Path, limits: ModelLimits
) -> None:
    """Refuse, before anything runs, what cannot fit a model's context."""
    for index, prompt in enumerate(inputs):
        if prompt is None:
            n_ids = len(request.token_ids or ())
            problem = context_problem(model, limits, n_ids, request.n_predict)
        else:
            problem = prompt_problem(model, limits, prompt, request.n_predict)
        if problem:
            which = "--tokens-file" if prompt is None else f"prompt {index + 1}"
            raise UsageError(f"{which}: {problem}", CONTEXT_HINT)


CONTEXT_HINT = "shorten the prompt or lower --n-predict (the model's context_length is the limit)"


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    return metrics.compare_greedy(a, b).first_divergence


def _compare(
    reference: Evaluation,
    candidate: Evaluation,
    tolerances: metrics.Tolerances,
    top_k: int,
    name: str,
) -> dict[str, Any]:
    if reference.logits.shape[1] != candidate.logits.shape[1]:
        raise BackendError(
            f"{name}: {candidate.logits.shape[1]} logits per position, but the reference has "
            f"{reference.logits.shape[1]}: it is not running the same model (vocabulary)"
        )
    logits = metrics.compare_logits(
        reference.logits, candidate.logits, top_k=min(top_k, reference.logits.shape[1])
    )
    greedy = None
    if reference.continuation is not None and candidate.continuation is not None:
        greedy = metrics.compare_greedy(reference.continuation, candidate.continuation)
    judged = metrics.verdict(logits, tolerances, greedy)
    return {
        "metrics": logits.to_dict(),
        "greedy": greedy.to_dict() if greedy else None,
        "verdict": judged.to_dict(),
    }


def _tokenize(
    model: Path, prompt: str, backends: Sequence[Backend], workdir: Path
) -> tuple[list[int], list[dict[str, Any]]]:
    """The first backend's ids, and every tokenizing backend's agreement with them."""
    first = backends[0]
    tokens = first.tokenize(model, prompt, workdir / "0")
    if tokens is None:
        raise UsageError(
            f"the first backend ({first.spec}) does not tokenize",
            "put a tokenizing backend (cpp:...) first, or give the ids with --tokens-file",
        )
    tokenization = []
    for index, backend in enumerate(backends):
        ids = tokens if index == 0 else backend.tokenize(model, prompt, workdir / str(index))
        difference = None if ids is None else _first_difference(tokens, ids)
        match = None if ids is None else difference is None
        tokenization.append(
            {"backend": backend.spec, "tokens": ids, "match": match, "first_difference": difference}
        )
    return tokens, tokenization


def _run_prompt(
    model: Path,
    limits: ModelLimits,
    prompt: str | None,
    backends: Sequence[Backend],
    request: CrossvalRequest,
    tolerances: metrics.Tolerances,
    workdir: Path,
    reporter: Reporter,
) -> dict[str, Any]:
    first = backends[0]
    tokenization: list[dict[str, Any]] = []
    if prompt is None:
        tokens = list(request.token_ids or ())
    else:
        tokens, tokenization = _tokenize(model, prompt, backends, workdir)
        if problem := context_problem(model, limits, len(tokens), request.n_predict):
            raise UsageError(f"the prompt {prompt[:40]!r}...: {problem}", CONTEXT_HINT)
    evaluations: list[Evaluation] = []
    for index, backend in enumerate(backends):
        reporter.info(f"  {backend.spec}: evaluating {len(tokens)} tokens")
        evaluations.append(
            backend.evaluate(model, tokens, request.n_predict, workdir / str(index) / "eval")
        )
    comparisons = []
    for backend, evaluation in zip(backends[1:], evaluations[1:], strict=True):
        compared = _compare(evaluations[0], evaluation, tolerances, request.top_k, backend.spec)
        parity = next((t for t in tokenization if t["backend"] == backend.spec), {})
        if parity.get("match") is False:
            compared["verdict"]["passed"] = False
            compared["verdict"]["failures"].append(
                {"metric": "tokenization", "value": 0.0, "bound": "min", "threshold": 1.0,
                 "position": parity["first_difference"], "excess": 1.0,
                 "message": f"tokenization differs from {first.spec} at token "
                            f"{parity['first_difference']}"}
            )  # fmt: skip
        comparisons.append({"reference": first.spec, "candidate": backend.spec, **compared})
        reporter.emit({"phase": "comparison", "model": str(model), "candidate": backend.spec,
                       "passed": compared["verdict"]["passed"],
                       "summary": compared["metrics"]["summary"]})  # fmt: skip
    return {
        "prompt": prompt,
        "tokens": tokens,
        "tokenization": tokenization,
        "evaluations": [
            {"backend": b.spec, "seconds": round(e.seconds, 3), "continuation": e.continuation}
            for b, e in zip(backends, evaluations, strict=True)
        ],
        "comparisons": comparisons,
    }


def run_crossval(request: CrossvalRequest, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run every model and prompt through every backend; returns the receipt document."""
    reporter = reporter or NullReporter()
    if len(request.backends) < 2:
        raise UsageError(
            "crossval compares at least two backends",
            "e.g. --backend cpp:llama.cpp --backend numpy",
        )
    if not request.models:
        raise UsageError("no models to compare")
    backends = [make_backend(spec, request.threads, request.timeout) for spec in request.backends]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    inputs: Sequence[str | None] = request.prompts if request.token_ids is None else [None]
    # Everything that can be refused is refused before the first engine runs.
    profile = _profile_file(request.profile)
    inspected = [inspect_model(model) for model in request.models]
    for model, (_facts, limits) in zip(request.models, inspected, strict=True):
        _check_fits(request, inputs, model, limits)
    workdir = Path(tempfile.mkdtemp(prefix="xtask-crossval-"))
    models = []
    try:
        for model_index, (model, (facts, limits)) in enumerate(
            zip(request.models, inspected, strict=True)
        ):
            tolerances = profile or tolerances_for(facts["quant"], request.profile)
            reporter.info(
                f"{model.name} ({facts['quant'] or 'unknown quant'}, profile {tolerances.name})"
            )
            entry = {**facts, "tolerances": tolerances.to_dict(), "runs": [], "error": None}
            try:
                entry["runs"] = [
                    _run_prompt(model, limits, prompt, backends, request, tolerances,
                                workdir / f"m{model_index}" / f"p{i}", reporter)
                    for i, prompt in enumerate(inputs)
                ]  # fmt: skip
            except BackendError as exc:
                # One model an engine cannot run (say i2_s in upstream llama.cpp) fails
                # that model, not the whole run: the others are still compared.
                reporter.info(f"  {model.name}: {exc.message}")
                entry["error"] = exc.message or "the backend failed"
            models.append(entry)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    from bitnet_xtask import __version__
    from bitnet_xtask.gpu.detect import detect_runtime

    failures = [
        {**failure, "message": f"{Path(m['path']).name} / {c['candidate']}: {failure['message']}"}
        for m in models
        for r in m["runs"]
        for c in r["comparisons"]
        for failure in c["verdict"]["failures"]
    ] + [
        {"metric": "backend_error", "value": None, "bound": "max", "threshold": 0.0,
         "position": None, "excess": None, "message": f"{Path(m['path']).name}: {m['error']}"}
        for m in models
        if m["error"] is not None
    ]  # fmt: skip
    return {
        "kind": RECEIPT_KIND,
        "version": RECEIPT_VERSION,
        "tool": {"name": "bitnet-xtask", "version": __version__},
        "started_at": started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": detect_runtime().to_dict(),
        "settings": {
            "n_predict": request.n_predict,
            "top_k": request.top_k,
            "profile": request.profile,
            "prompts": list(request.prompts) if request.token_ids is None else [],
            "token_ids": None if request.token_ids is None else list(request.token_ids),
        },
        "backends": [{"spec": b.spec, "identity": b.identity()} for b in backends],
        "models": models,
        "verdict": {"passed": not failures, "failures": failures},
    }
