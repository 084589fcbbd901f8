"""`plan_crossval()`: what `xtask crossval` would do (`--dry-run`), running nothing.

The plan is made by the checks the run makes (`crossval.request`: two backends or more,
readable models whose inputs fit, a known profile), so whatever they refuse is refused
here with the same error (exit 2). Each backend is resolved as the run resolves it
(`make_backend`): the build a `cpp:` backend would use, or why it cannot be used (a
build that is missing, and how to make it) is recorded instead of refused, since that
is what a dry run is for. No engine is started and no model is evaluated; the host is
described as the receipt would describe it (`detect_runtime`, so `BITNET_GPU_FAKE` is
honoured).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_xtask.crossval.backends import CppBackend, make_backend
from bitnet_xtask.crossval.request import (
    TOKENIZER_HINT,
    CrossvalRequest,
    PlannedModel,
    check_counts,
    plan_models,
    tokenizer_problem,
)
from bitnet_xtask.crossval.results import Settings
from bitnet_xtask.errors import UsageError


@dataclass(frozen=True)
class PlannedBackend:
    """A backend as the run would use it, or why it could not."""

    spec: str
    kind: str | None  # numpy | cpp | cmd | hf; None when the spec names nothing usable
    build: Path | None  # the build directory of a cpp: backend (hf: the checkpoint)
    problem: str | None  # why it cannot run, and what to do (None: it can)
    engine: str | None = None  # a cpp: backend's engine, as the config audit names it

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind,
                "build": None if self.build is None else str(self.build),
                "problem": self.problem}  # fmt: skip


def _planned_model(model: PlannedModel) -> dict[str, Any]:
    audit = None if model.audit is None else model.audit.to_json()
    return {**model.facts.to_json(), "tolerances": model.tolerances.to_dict(),
            "config_audit": audit}  # fmt: skip


@dataclass(frozen=True)
class CrossvalPlan:
    """Everything `xtask crossval` would run, compare and judge by."""

    models: tuple[PlannedModel, ...]
    backends: tuple[PlannedBackend, ...]
    settings: Settings
    host: dict[str, Any]

    @property
    def problems(self) -> list[str]:
        """What would stop the run (each a backend's), in the order of the backends."""
        return [f"{b.spec}: {b.problem}" for b in self.backends if b.problem is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [_planned_model(m) for m in self.models],
            "backends": [b.to_json() for b in self.backends],
            "settings": self.settings.to_json(),
            "host": self.host,
        }

    def lines(self) -> list[str]:
        """The plan for a person."""
        gpus = [name for name in ("cuda", "rocm", "metal", "wgpu") if self.host.get(name)]
        fake = " (BITNET_GPU_FAKE)" if self.host.get("fake") else ""
        ids, prompts = self.settings.token_ids, self.settings.prompts
        inputs = f"{len(ids)} token ids" if ids is not None else f"{len(prompts)} prompt(s)"
        lines = [f"host: GPU runtimes: {', '.join(gpus) or 'none'}{fake}",
                 f"inputs: {inputs}, --n-predict {self.settings.n_predict}"]  # fmt: skip
        for index, backend in enumerate(self.backends):
            role = "reference" if index == 0 else "candidate"
            where = f" ({backend.build})" if backend.build else ""
            state = f"MISSING: {backend.problem}" if backend.problem else "ready"
            lines.append(f"backend {backend.spec} [{role}]{where}: {state}")
        for model in self.models:
            facts, t = model.facts, model.tolerances
            lines.append(
                f"model {facts.path} ({facts.arch or 'unknown arch'}, "
                f"{facts.quant or 'unknown quant'}): profile {t.name} (max KL {t.max_kl:g}, "
                f"min cosine {t.min_cosine:g}, max |d| {t.max_abs_diff:g})"
            )
            findings = () if model.audit is None else model.audit.semantic
            lines += [f"  config audit: {finding.message()}" for finding in findings]
        return lines


def _plan_backend(spec: str, request: CrossvalRequest, *, first: bool) -> PlannedBackend:
    try:
        backend = make_backend(spec, request.threads, request.timeout, hf_dtype=request.hf_dtype)
    except UsageError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        return PlannedBackend(spec, None, None, exc.message + hint)
    try:
        identity = backend.identity()
        problem = tokenizer_problem(request, backend) if first else None
    finally:
        backend.close()
    build = identity.get("directory")
    why = None if problem is None else f"{problem} ({TOKENIZER_HINT})"
    engine = backend.engine if isinstance(backend, CppBackend) else None
    return PlannedBackend(spec, identity["kind"], None if build is None else Path(build), why,
                          engine)  # fmt: skip


def plan_crossval(request: CrossvalRequest) -> CrossvalPlan:
    """The plan of `run_crossval(request)`, checked as the run checks it; runs nothing."""
    from bitnet_xtask.gpu.detect import detect_runtime

    check_counts(request)
    backends = tuple(
        _plan_backend(spec, request, first=index == 0)
        for index, spec in enumerate(request.backends)
    )
    engines = [backend.engine for backend in backends if backend.engine is not None]
    return CrossvalPlan(
        models=plan_models(request, engines),
        backends=backends,
        settings=request.settings(),
        host=detect_runtime().to_dict(),
    )
