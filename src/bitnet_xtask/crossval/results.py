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
from typing import Any

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.model_facts import ModelFacts

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


@dataclass(frozen=True)
class PromptRun:
    """One prompt (None: the given ids) through every backend of one model."""

    prompt: str | None
    tokens: tuple[int, ...]
    tokenization: tuple[TokenizationParity, ...]  # one per backend; () for given ids
    evaluations: tuple[EvaluationRecord, ...]  # one per backend
    comparisons: tuple[Comparison, ...]  # one per backend after the first

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "tokenization": [t.to_json() for t in self.tokenization],
            "evaluations": [e.to_json() for e in self.evaluations],
            "comparisons": [c.to_json() for c in self.comparisons],
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

    def failures(self) -> list[dict[str, Any]]:
        """Every failure of this model, each message naming the model (and candidate)."""
        if self.error is not None:
            return [_failure("backend_error", f"{self.facts.name}: {self.error}")]
        return [
            {**failure.to_dict(),
             "message": f"{self.facts.name} / {c.candidate}: {failure.message()}"}
            for run in self.runs
            for c in run.comparisons
            for failure in c.verdict.failures
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            **self.facts.to_json(),
            "tolerances": self.tolerances.to_dict(),
            "runs": [run.to_json() for run in self.runs],
            "error": self.error,
        }


@dataclass(frozen=True)
class Settings:
    """The run's settings as the receipt records them."""

    n_predict: int
    top_k: int
    profile: str | None
    prompts: tuple[str, ...]  # () when ids were given
    token_ids: tuple[int, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
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
            "verdict": {"passed": not failures, "failures": failures},
        }
