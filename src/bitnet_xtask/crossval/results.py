"""crossval's results, typed until the receipt is written.

The runner builds these from the bottom up (a prompt's tokenization parity and
comparisons, then the prompt's run, the model's result, the whole run) and never edits
one after the fact: a tokenization that differs is judged inside the comparison's
verdict (`metrics.verdict`), not patched into it. `CrossvalResult.to_receipt()` is the
one place that turns them into the receipt document (`bitnet-xtask/crossval-receipt`
version 1, `receipt.schema.json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.model_facts import ModelFacts

if TYPE_CHECKING:
    from bitnet_xtask.crossval.audit import ConfigAudit
    from bitnet_xtask.crossval.paths import BackendPaths
    from bitnet_xtask.crossval.trace_compare import TraceComparison
    from bitnet_xtask.crossval.traces import TraceRequest

RECEIPT_KIND = "bitnet-xtask/crossval-receipt"
RECEIPT_VERSION = 1


@dataclass(frozen=True)
class TokenizationParity:
    """One backend's ids for a prompt, against the reference's (the first backend's)."""

    backend: str
    tokens: tuple[int, ...] | None  # None: this backend does not tokenize
    first_difference: int | None  # None: the same ids (or none to compare)

    @property
    def match(self) -> bool | None:
        return None if self.tokens is None else self.first_difference is None

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "tokens": None if self.tokens is None else list(self.tokens),
            "match": self.match,
            "first_difference": self.first_difference,
        }


@dataclass(frozen=True)
class EvaluationRecord:
    """How long one backend took on a prompt's ids, and its greedy continuation."""

    backend: str
    seconds: float
    continuation: tuple[int, ...] | None

    def to_json(self) -> dict[str, Any]:
        continuation = None if self.continuation is None else list(self.continuation)
        return {"backend": self.backend, "seconds": round(self.seconds, 3),
                "continuation": continuation}  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """One candidate against the reference on one prompt, and the verdict."""

    reference: str
    candidate: str
    logits: metrics.LogitsComparison
    greedy: metrics.GreedyComparison | None
    verdict: metrics.Verdict

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "metrics": self.logits.to_dict(),
            "greedy": None if self.greedy is None else self.greedy.to_dict(),
            "verdict": self.verdict.to_dict(),
        }


def _worst_failure(verdict: metrics.Verdict) -> metrics.Failure:
    """The failure that says most about a deviation: KL when it failed, else the first."""
    return next((f for f in verdict.failures if f.metric == "kl"), verdict.failures[0])


def _briefly(failure: metrics.Failure) -> str:
    where = "" if failure.position is None else f" at position {failure.position}"
    name = "KL" if failure.metric == "kl" else failure.metric
    return f"{name} {failure.value:.3g}{where}"


@dataclass(frozen=True)
class SharedDeviation:
    """Two candidates that fail against the reference the same way: they agree with each
    other within the model's profile, so comparing them with each other would call both
    right. With the model's definition (`hf:`) as the reference, this is a deviation they
    share from the model, the kind of bug pairwise engine comparisons cannot find."""

    reference: str
    between: Comparison  # the second candidate against the first
    against_reference: tuple[Comparison, Comparison]  # each candidate against the reference

    @property
    def candidates(self) -> tuple[str, str]:
        return self.between.reference, self.between.candidate

    def message(self) -> str:
        first, second = self.candidates
        max_kl = self.between.logits.summary()["max_kl"]
        worst = _briefly(_worst_failure(self.against_reference[0].verdict))
        return (
            f"{first} and {second} agree with each other (max KL {max_kl:.2g}) but both "
            f"differ from {self.reference} ({worst}): a deviation they share from "
            + ("the model's definition" if self.reference.startswith("hf:") else "the reference")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "shared_deviation",
            "reference": self.reference,
            "candidates": list(self.candidates),
            "between": self.between.to_json(),
            "against_reference": [
                _worst_failure(c.verdict).to_dict() for c in self.against_reference
            ],
            "message": self.message(),
        }


@dataclass(frozen=True)
class PromptRun:
    """One prompt (None: the given ids) through every backend of one model."""

    prompt: str | None
    tokens: tuple[int, ...]
    tokenization: tuple[TokenizationParity, ...]  # one per backend; () for given ids
    evaluations: tuple[EvaluationRecord, ...]  # one per backend
    comparisons: tuple[Comparison, ...]  # one per backend after the first
    shared_deviations: tuple[SharedDeviation, ...] = ()
    traces: tuple[TraceComparison, ...] = ()  # --trace: one per candidate that traced
    paths: tuple[BackendPaths, ...] = ()  # --paths: one per cpp: and cmd: backend

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "tokenization": [t.to_json() for t in self.tokenization],
            "evaluations": [e.to_json() for e in self.evaluations],
            "comparisons": [c.to_json() for c in self.comparisons],
            "shared_deviations": [s.to_json() for s in self.shared_deviations],
            "traces": [t.to_json() for t in self.traces],
            "paths": [p.to_json() for p in self.paths],
        }


def _failure(metric: str, message: str) -> dict[str, Any]:
    """An overall failure with no number behind it (a model no backend pair compared)."""
    return {"metric": metric, "value": None, "bound": "max", "threshold": 0.0,
            "position": None, "excess": None, "message": message}  # fmt: skip


@dataclass(frozen=True)
class ModelResult:
    """One model: every prompt's run, or the error that kept a backend from running it."""

    facts: ModelFacts
    tolerances: metrics.Tolerances
    runs: tuple[PromptRun, ...] = ()
    error: str | None = None  # then no runs: the model failed alone
    audit: ConfigAudit | None = None  # config.json against the GGUF, with an hf: reference

    def failures(self) -> list[dict[str, Any]]:
        """Every failure of this model, each message naming the model (and candidate, and
        for --paths the engine's path)."""
        if self.error is not None:
            return [_failure("backend_error", f"{self.facts.name}: {self.error}")]
        compared = [
            {**failure.to_dict(),
             "message": f"{self.facts.name} / {c.candidate}: {failure.message()}"}
            for run in self.runs
            for c in run.comparisons
            for failure in c.verdict.failures
        ]  # fmt: skip
        paths = [f for run in self.runs for p in run.paths for f in p.failures(self.facts.name)]
        return compared + paths

    def to_json(self) -> dict[str, Any]:
        return {
            **self.facts.to_json(),
            "tolerances": self.tolerances.to_dict(),
            "runs": [run.to_json() for run in self.runs],
            "error": self.error,
            "config_audit": None if self.audit is None else self.audit.to_json(),
        }


@dataclass(frozen=True)
class Settings:
    """The run's settings as the receipt records them."""

    n_predict: int
    top_k: int
    profile: str | None
    prompts: tuple[str, ...]  # () when ids were given
    token_ids: tuple[int, ...] | None
    hf_dtype: str = "float32"
    trace: TraceRequest | None = None
    paths: bool = False  # --paths: every cpp: and cmd: backend over its execution paths

    def to_json(self) -> dict[str, Any]:
        trace = None
        if self.trace is not None:
            trace = {"pattern": self.trace.pattern, "max_bytes": self.trace.max_bytes}
        return {
            "hf_dtype": self.hf_dtype,
            "trace": trace,
            "paths": self.paths,
            "n_predict": self.n_predict,
            "top_k": self.top_k,
            "profile": self.profile,
            "prompts": list(self.prompts),
            "token_ids": None if self.token_ids is None else list(self.token_ids),
        }


@dataclass(frozen=True)
class CrossvalResult:
    """A whole crossval run; `to_receipt()` is its receipt."""

    started_at: str
    finished_at: str
    host: dict[str, Any]  # gpu-preflight's report (`detect_runtime().to_dict()`)
    settings: Settings
    backends: tuple[tuple[str, dict[str, Any]], ...]  # (spec, identity), in order
    models: tuple[ModelResult, ...]

    def failures(self) -> list[dict[str, Any]]:
        """Every comparison's failures, then every model's error."""
        failed = [f for m in self.models if m.error is None for f in m.failures()]
        return failed + [f for m in self.models if m.error is not None for f in m.failures()]

    def findings(self) -> list[dict[str, Any]]:
        """What the failures mean together: every shared deviation, naming the model."""
        return [
            {**shared.to_json(), "message": f"{model.facts.name}: {shared.message()}"}
            for model in self.models
            for run in model.runs
            for shared in run.shared_deviations
        ]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_receipt(self) -> dict[str, Any]:
        from bitnet_xtask import __version__

        failures = self.failures()
        return {
            "kind": RECEIPT_KIND,
            "version": RECEIPT_VERSION,
            "tool": {"name": "bitnet-xtask", "version": __version__},
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "host": self.host,
            "settings": self.settings.to_json(),
            "backends": [{"spec": spec, "identity": identity} for spec, identity in self.backends],
            "models": [model.to_json() for model in self.models],
            "verdict": {"passed": not failures, "failures": failures, "findings": self.findings()},
        }
