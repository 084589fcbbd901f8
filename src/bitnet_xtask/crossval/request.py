"""What a crossval run is asked to do, and everything about it that is refused up front.

`run_crossval` and `plan_crossval` (`--dry-run`) check a request with the same
functions, so a plan that says a run would start is one whose run starts: fewer than two
backends, no models, an unknown or unreadable tolerance profile, a model whose GGUF
header is not readable, or inputs that cannot fit a model's context are refused (exit 2)
before the first engine runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.backends import DEFAULT_TIMEOUT, Backend
from bitnet_xtask.crossval.model_facts import ModelFacts, ModelLimits, inspect_model
from bitnet_xtask.crossval.results import Settings
from bitnet_xtask.errors import UsageError

DEFAULT_PROMPT = "The capital of France is Paris, and the capital of Germany is"
DEFAULT_BACKENDS = ("cpp:llama.cpp", "numpy")
STRICT_QUANTS = frozenset({"f32", "f16", "bf16"})
CONTEXT_HINT = "shorten the prompt or lower --n-predict (the model's context_length is the limit)"


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

    @property
    def inputs(self) -> tuple[str | None, ...]:
        """One entry per run of each model: each prompt, or None for the given ids."""
        return self.prompts if self.token_ids is None else (None,)

    def settings(self) -> Settings:
        """The settings as the receipt (and the plan) record them."""
        return Settings(
            n_predict=self.n_predict,
            top_k=self.top_k,
            profile=self.profile,
            prompts=self.prompts if self.token_ids is None else (),
            token_ids=self.token_ids,
        )


@dataclass(frozen=True)
class PlannedModel:
    """A model that passed the up-front checks, and the thresholds it will be judged by."""

    facts: ModelFacts
    tolerances: metrics.Tolerances


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


def check_counts(request: CrossvalRequest) -> None:
    """Two backends or more, one model or more."""
    if len(request.backends) < 2:
        raise UsageError(
            "crossval compares at least two backends",
            "e.g. --backend cpp:llama.cpp --backend numpy",
        )
    if not request.models:
        raise UsageError("no models to compare")


#: What to do when the first backend cannot tokenize the prompts.
TOKENIZER_HINT = "put a tokenizing backend (cpp:...) first, or give the ids with --tokens-file"


def tokenizer_problem(request: CrossvalRequest, first: Backend) -> str | None:
    """Why the run cannot make its token ids, or None: prompts need a first backend that
    tokenizes (the run and its plan both ask here)."""
    if request.token_ids is None and not first.tokenizes:
        return f"the first backend ({first.spec}) does not tokenize"
    return None


def _check_fits(request: CrossvalRequest, inputs: Sequence[str | None], facts: ModelFacts) -> None:
    """Refuse, before anything runs, what cannot fit a model's context."""
    for index, prompt in enumerate(inputs):
        if prompt is None:
            n_ids = len(request.token_ids or ())
            problem = context_problem(facts.path, facts.limits, n_ids, request.n_predict)
        else:
            problem = prompt_problem(facts.path, facts.limits, prompt, request.n_predict)
        if problem:
            which = "--tokens-file" if prompt is None else f"prompt {index + 1}"
            raise UsageError(f"{which}: {problem}", CONTEXT_HINT)


def plan_models(request: CrossvalRequest) -> tuple[PlannedModel, ...]:
    """Every model inspected (its header read, refused when unreadable), its inputs
    checked against its context, and its thresholds chosen: a profile given as a file is
    read once, for all of them."""
    given = request.profile
    from_file = None if given is None or given in metrics.PROFILES else tolerances_for(None, given)
    planned = []
    for model in request.models:
        facts = inspect_model(model)
        _check_fits(request, request.inputs, facts)
        planned.append(PlannedModel(facts, from_file or tolerances_for(facts.quant, given)))
    return tuple(planned)
