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
from typing import TYPE_CHECKING

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.backends import DEFAULT_TIMEOUT, Backend
from bitnet_xtask.crossval.model_facts import ModelFacts, ModelLimits, inspect_model
from bitnet_xtask.crossval.results import Settings
from bitnet_xtask.crossval.traces import TraceRequest
from bitnet_xtask.errors import UsageError

if TYPE_CHECKING:
    from bitnet_xtask.crossval.audit import ConfigAudit
    from bitnet_xtask.hf.checkpoint import Checkpoint

DEFAULT_PROMPT = "The capital of France is Paris, and the capital of Germany is"
DEFAULT_BACKENDS = ("cpp:llama.cpp", "numpy")
STRICT_QUANTS = frozenset({"f32", "f16", "bf16"})
CONTEXT_HINT = "shorten the prompt or lower --n-predict (the model's context_length is the limit)"


DEFINITION_PREFIX = "hf:"
"""The backend that runs the model's own definition (transformers): the reference."""


def reference_first(backends: Sequence[str]) -> tuple[str, ...]:
    """The backends in the order given, except that the first `hf:` one leads: with the
    model's definition present, every engine (and the NumPy reference) is judged against
    it, not against another engine."""
    at = next((i for i, b in enumerate(backends) if b.startswith(DEFINITION_PREFIX)), None)
    if at is None:
        return tuple(backends)
    return (backends[at], *backends[:at], *backends[at + 1 :])


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
    hf_dtype: str = "float32"  # what an hf: backend computes in (crossval.hf_backend.DTYPES)
    trace: TraceRequest | None = None  # --trace: intermediate tensors, compared step by step
    paths: bool = False  # --paths: each cpp: and cmd: engine against itself (crossval.paths)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", reference_first(self.backends))

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
            hf_dtype=self.hf_dtype,
            trace=self.trace,
            paths=self.paths,
        )


@dataclass(frozen=True)
class PlannedModel:
    """A model that passed the up-front checks, the thresholds it will be judged by, and
    with an `hf:` reference, the audit of its config.json against the GGUF and engines."""

    facts: ModelFacts
    tolerances: metrics.Tolerances
    audit: ConfigAudit | None = None


def discover_models(root: Path) -> tuple[Path, ...]:
    """Every complete GGUF under `root` (the reference guide: crossval looks in models/)."""
    found = tuple(sorted(p for p in root.rglob("*.gguf") if p.is_file()))
    if not found:
        raise UsageError(
            f"no .gguf models under {root}/",
            "pass --model PATH, or make one: xtask gen-fixtures --size tiny --output models",
        )
    return found


def quantizes_activations(arch: str | None) -> bool:
    """Whether the definition of `arch` rounds every projection's input to int8 (BitNet
    b1.58's BitLinear). Then any difference in a file's rounding or an engine's arithmetic
    moves activations across rounding steps, and is amplified: the f16 form of a
    bitnet-b1.58 twin, whose per-tensor scales are float16, is KL 1.5e-3 from its f32
    checkpoint (tests/test_b158_crossval.py). Such a model is judged by the quantized
    profile, whatever its weights' type."""
    from bitnet_xtask.crossval.definitions import DEFINITIONS

    definition = DEFINITIONS.get(arch) if arch is not None else None
    return definition is not None and definition.graph.quantizes_activations


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
    """Two backends or more, one model or more; with --paths, an engine whose path can
    be varied (`paths.check_paths_request`)."""
    if len(request.backends) < 2:
        raise UsageError(
            "crossval compares at least two backends",
            "e.g. --backend cpp:llama.cpp --backend numpy",
        )
    if not request.models:
        raise UsageError("no models to compare")
    if request.paths:
        from bitnet_xtask.crossval.paths import check_paths_request

        check_paths_request(request.backends)


#: What to do when the first backend cannot tokenize the prompts.
TOKENIZER_HINT = (
    "put a tokenizing backend (cpp:... or hf:...) first, or give the ids with --tokens-file"
)


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


def _audit(
    checkpoint: Checkpoint | None, model: Path, engines: Sequence[str]
) -> ConfigAudit | None:
    """The reference checkpoint's config.json against the model and the engines' graphs;
    a GGUF that cannot be the checkpoint's model (other shapes) is refused (exit 2)."""
    if checkpoint is None:
        return None
    from bitnet_xtask.crossval.audit import audit_config
    from bitnet_xtask.crossval.gguf_file import GGUFFile

    audit = audit_config(checkpoint.config, GGUFFile(model), engines, checkpoint.directory)
    try:
        audit.refuse()
    except UsageError as exc:
        raise UsageError(f"{model.name} against {checkpoint.directory}: {exc.message}",
                         exc.hint) from None  # fmt: skip
    return audit


def reference_checkpoint(request: CrossvalRequest) -> Checkpoint | None:
    """The checkpoint of the `hf:` reference (the first backend when there is one)."""
    first = request.backends[0]
    if not first.startswith(DEFINITION_PREFIX):
        return None
    from bitnet_xtask.hf.checkpoint import read_checkpoint

    return read_checkpoint(Path(first.removeprefix(DEFINITION_PREFIX)).expanduser())


def plan_models(request: CrossvalRequest, engines: Sequence[str] = ()) -> tuple[PlannedModel, ...]:
    """Every model inspected (its header read, refused when unreadable), its inputs
    checked against its context, its thresholds chosen (a profile given as a file is read
    once, for all of them), and with an `hf:` reference, its config audited against the
    checkpoint and `engines` (`CppBackend.engine` of each engine compared)."""
    given = request.profile
    from_file = None if given is None or given in metrics.PROFILES else tolerances_for(None, given)
    checkpoint = reference_checkpoint(request)
    # The NumPy reference refuses, by tensor or key, a file of an architecture it
    # implements that is not whole (a missing sub-norm, a misshapen tensor): bad input,
    # refused before any engine runs. An architecture it does not implement fails that
    # model alone, as any backend's error does (runner).
    numpy = any(spec.partition(":")[0] == "numpy" for spec in request.backends)
    from bitnet_xtask.crossval.definitions import DEFINITIONS
    from bitnet_xtask.crossval.reference import load_model

    # A reference that computes in the checkpoint's bf16/f16 rounds as a quantized
    # engine does: judged strictly, every candidate would fail (and "share" it).
    rounded = (
        checkpoint is not None
        and request.hf_dtype != "float32"
        and (checkpoint.dtype not in (None, "float32"))
    )
    planned = []
    for model in request.models:
        facts = inspect_model(model)
        if numpy and facts.arch in DEFINITIONS:
            load_model(model)  # a malformed file of a known architecture: exit 2, named
        _check_fits(request, request.inputs, facts)
        strict_able = not (rounded or quantizes_activations(facts.arch))
        tolerances = from_file or tolerances_for(facts.quant if strict_able else None, given)
        planned.append(PlannedModel(facts, tolerances, _audit(checkpoint, model, engines)))
    return tuple(planned)
