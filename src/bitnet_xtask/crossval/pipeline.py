"""`run_full_crossval()`: model -> C++ reference -> crossval, each step idempotent.

Step 1 gets a model: a gen-fixtures fixture (the default, and what works with no
network) or a download-model download. Step 2 builds the C++ reference with fetch-cpp
(or takes the prebuilt one an `XTASK_CPP_PREFIX_*` variable names, as the Nix apps do).
Step 3 runs crossval. A failure names its step and what to do next; running again
skips what is already done (the fixture is reused when its bytes match its metadata,
the download and the build find their own caches).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bitnet_xtask.cache import FIXTURES_DIR, MODELS_DIR
from bitnet_xtask.crossval.backends import DEFAULT_TIMEOUT, prefix_variable
from bitnet_xtask.crossval.request import DEFAULT_PROMPT, CrossvalRequest
from bitnet_xtask.crossval.results import CrossvalResult
from bitnet_xtask.crossval.runner import run_crossval
from bitnet_xtask.errors import UsageError, XtaskError
from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.fs import hash_file

T = TypeVar("T")
STEPS = ("model", "fetch-cpp", "crossval")


@dataclass(frozen=True)
class FullCrossvalRequest:
    """The pipeline's inputs; `repo` None means a generated fixture."""

    fixture: str = "tiny"
    arch: str = "llama"
    quant: str = "f32"
    seed: int = 0
    fixtures_dir: Path = FIXTURES_DIR
    repo: str | None = None
    file: str | None = None
    models_dir: Path = MODELS_DIR
    ref: str | None = None  # None: bitnet.cpp for i2_s models, else llama.cpp
    jobs: int | None = None
    backends: tuple[str, ...] = ()  # empty: cpp:<ref> and numpy
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    n_predict: int = 8
    profile: str | None = None
    threads: int | None = None
    timeout: float = DEFAULT_TIMEOUT


def _step(number: int, reporter: Reporter, action: Callable[[], T], next_action: str) -> T:
    """Run one step; an expected failure keeps its exit code and says where it happened."""
    name = STEPS[number - 1]
    reporter.info(f"[{number}/{len(STEPS)}] {name}")
    reporter.emit({"phase": "step", "step": name, "index": number})
    try:
        return action()
    except XtaskError as exc:
        hint = f"{exc.hint}; then " if exc.hint else ""
        raise type(exc)(
            f"full-crossval step {number}/{len(STEPS)} ({name}) failed: {exc.message}",
            f"{hint}{next_action} (finished steps are skipped on the next run)",
        ) from exc


def _fixture(request: FullCrossvalRequest, reporter: Reporter) -> Path:
    from bitnet_xtask.fixtures import FixtureSpec, generate_fixture

    try:
        spec = FixtureSpec.parse(request.fixture, request.arch, request.quant, request.seed)
    except ValueError as exc:
        raise UsageError(str(exc), "i2_s goes with --arch bitnet") from None
    model = request.fixtures_dir / f"{spec.stem}.gguf"
    if _up_to_date(model, model.with_suffix(".json")):
        reporter.info(f"fixture {model} is up to date")
        return model  # even in a read-only --fixtures-dir
    try:
        result = generate_fixture(
            request.fixture, request.arch, request.quant, request.seed, request.fixtures_dir
        )
    except UsageError as exc:  # read-only, not a directory, a device where a file goes
        raise UsageError(exc.message, "give a writable --fixtures-dir") from None
    reporter.info(f"generated {result.model}")
    return result.model


def _up_to_date(model: Path, metadata: Path) -> bool:
    """The fixture is there, and its bytes are the ones its metadata describes (a
    metadata file that is not a bounded, regular JSON file counts as absent)."""
    from bitnet_xtask.inputs import read_json

    if not (model.is_file() and metadata.is_file()):
        return False
    try:
        recorded = read_json(metadata, what="fixture metadata")
    except UsageError:
        return False
    return isinstance(recorded, dict) and recorded.get("sha256") == hash_file(model)


def _download(request: FullCrossvalRequest, reporter: Reporter) -> Path:
    from bitnet_xtask.download import download_model
    from bitnet_xtask.download.defaults import DEFAULT_FILE

    assert request.repo is not None
    file = request.file or DEFAULT_FILE
    return download_model(request.repo, file, reporter=reporter, out=request.models_dir).path


def reference_for(request: FullCrossvalRequest) -> str:
    """bitnet.cpp runs i2_s (upstream llama.cpp no longer has the type); else llama.cpp."""
    if request.ref:
        return request.ref
    from bitnet_xtask.download.defaults import DEFAULT_FILE

    if request.repo is None:
        i2_s = request.quant == "i2_s"
    else:
        i2_s = "i2_s" in (request.file or DEFAULT_FILE).lower()
    return "bitnet.cpp" if i2_s else "llama.cpp"


def _build(ref: str, jobs: int | None, reporter: Reporter) -> str:
    """The cpp backend spec for the built (or Nix-provided) reference."""
    if os.environ.get(variable := prefix_variable(ref)):
        reporter.info(f"using the prebuilt {ref} named by {variable}")
        return f"cpp:{ref}"
    from bitnet_xtask.cpp.build import BuildRequest, build_reference

    result = build_reference(BuildRequest(ref=ref, jobs=jobs), reporter=reporter)
    return f"cpp:{result.directory}"


def run_full_crossval(
    request: FullCrossvalRequest, reporter: Reporter | None = None
) -> CrossvalResult:
    """The three steps; returns crossval's result (`.to_receipt()`: the receipt)."""
    reporter = reporter or NullReporter()
    ref = reference_for(request)
    if request.repo is None:
        model = _step(1, reporter, lambda: _fixture(request, reporter),
                      "check --fixture/--arch/--quant and free disk space")  # fmt: skip
    else:
        retry = f"retry, or fetch it alone: xtask download-model --id {request.repo}"
        model = _step(1, reporter, lambda: _download(request, reporter), retry)
    cpp = _step(2, reporter, lambda: _build(ref, request.jobs, reporter),
                f"retry, or build it alone: xtask fetch-cpp --ref {ref}")  # fmt: skip
    crossval = CrossvalRequest(
        models=(model,),
        backends=request.backends or (cpp, "numpy"),
        prompts=request.prompts,
        n_predict=request.n_predict,
        profile=request.profile,
        threads=request.threads,
        timeout=request.timeout,
    )
    return _step(3, reporter, lambda: run_crossval(crossval, reporter),
                 f"rerun it alone: xtask crossval --model {model}")  # fmt: skip
