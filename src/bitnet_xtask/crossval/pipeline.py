"""`run_full_crossval()`: model -> C++ reference -> crossval, each step idempotent.

Step 1 gets a model: a gen-fixtures fixture (the default, and what works with no
network) or a download-model download. Step 2 builds the C++ reference with fetch-cpp
(or takes the prebuilt one an `XTASK_CPP_PREFIX_*` variable names, as the Nix apps do).
Step 3 runs crossval. A failure names its step and what to do next; running again
skips what is already done (the fixture is reused when its bytes match its metadata,
the download and the build find their own caches).

With a Hugging Face checkpoint (`--hf DIR`, or `--hf-id ORG/NAME` fetched by
download-model), the model's own definition joins as the reference (`hf:<dir>`): a
`checkpoint` step comes first, and unless a GGUF is downloaded with `--id`, a `convert`
step after fetch-cpp makes the GGUF from the checkpoint with the pinned llama.cpp's own
converter (reused while the checkpoint, the converter and the quant are the same). The
crossval step then runs the triangle: hf against numpy and the built engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bitnet_xtask.cache import FIXTURES_DIR, MODELS_DIR
from bitnet_xtask.crossval.backends import DEFAULT_TIMEOUT, prefix_variable
from bitnet_xtask.crossval.request import DEFAULT_PROMPT, CrossvalRequest
from bitnet_xtask.crossval.results import CrossvalResult
from bitnet_xtask.crossval.runner import run_crossval
from bitnet_xtask.errors import UsageError, XtaskError
from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.fs import hash_file

if TYPE_CHECKING:
    from bitnet_xtask.crossval.traces import TraceRequest
    from bitnet_xtask.hf.checkpoint import Checkpoint
    from bitnet_xtask.models.catalog import Catalog, CatalogFile

T = TypeVar("T")


@dataclass(frozen=True)
class FullCrossvalRequest:
    """The pipeline's inputs; neither `repo` nor `model_name` means a generated fixture."""

    fixture: str = "tiny"
    arch: str = "llama"
    quant: str = "f32"
    seed: int = 0
    fixtures_dir: Path = FIXTURES_DIR
    repo: str | None = None
    file: str | None = None
    models_dir: Path = MODELS_DIR
    model_name: str | None = None  # --model: a catalog model, fetched by `models fetch`
    catalog: Path | None = None  # --catalog: the project's catalog (default ./models.toml)
    lock_path: Path | None = None  # --lock (default: models.lock.json beside the catalog)
    ref: str | None = None  # None: bitnet.cpp for i2_s models, else llama.cpp
    jobs: int | None = None
    backends: tuple[str, ...] = ()  # empty: cpp:<ref> and numpy
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    n_predict: int = 8
    profile: str | None = None
    threads: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    hf_dir: Path | None = None  # --hf: a local checkpoint, the reference
    hf_repo: str | None = None  # --hf-id: a checkpoint to fetch (into models_dir)
    hf_revision: str = "main"  # --hf-rev
    hf_dtype: str = "float32"
    trace: TraceRequest | None = None  # --trace

    @property
    def downloads(self) -> bool:
        """The GGUF is downloaded (--id or --model), not generated or converted."""
        return self.repo is not None or self.model_name is not None

    @property
    def has_checkpoint(self) -> bool:
        return self.hf_dir is not None or self.hf_repo is not None

    def steps(self) -> tuple[str, ...]:
        """The steps this request runs, in order."""
        converts = self.has_checkpoint and not self.downloads
        return (
            *(("checkpoint",) if self.has_checkpoint else ()),
            *(() if converts else ("model",)),
            "fetch-cpp",
            *(("convert",) if converts else ()),
            "crossval",
        )


@dataclass(frozen=True)
class _Steps:
    """The request's steps, each run by name: its number, the event, the failure."""

    names: tuple[str, ...]
    reporter: Reporter

    def run(self, name: str, action: Callable[[], T], next_action: str) -> T:
        """Run one step; an expected failure keeps its exit code and says where it happened."""
        number, total = self.names.index(name) + 1, len(self.names)
        self.reporter.info(f"[{number}/{total}] {name}")
        self.reporter.emit({"phase": "step", "step": name, "index": number, "of": total})
        try:
            return action()
        except XtaskError as exc:
            hint = f"{exc.hint}; then " if exc.hint else ""
            raise type(exc)(
                f"full-crossval step {number}/{total} ({name}) failed: {exc.message}",
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


def _catalog_model(request: FullCrossvalRequest, reporter: Reporter) -> Path:
    """Step `model` for --model: the catalog model fetched as `models fetch` does (its
    lock entry written), and its GGUF."""
    from bitnet_xtask.models.fetch import FetchRequest, fetch_models
    from bitnet_xtask.models.hash_cache import HashCache
    from bitnet_xtask.models.lock import lock_path

    assert request.model_name is not None
    catalog, gguf = _catalog_gguf(request)
    lock = lock_path(request.lock_path, request.catalog)
    fetch = FetchRequest((request.model_name,), request.models_dir, lock)
    cache = HashCache.load(note=reporter.debug)
    try:
        fetched = fetch_models(fetch, catalog, cache, reporter)
    finally:
        cache.save()
    return next(f.path for f in fetched.models[0].files if f.path.name == gguf.name)


def _catalog_gguf(request: FullCrossvalRequest) -> tuple[Catalog, CatalogFile]:
    """The catalog, and the GGUF of --model (refused, exit 2, unless it has exactly one)."""
    from bitnet_xtask.models.catalog import load_catalog

    assert request.model_name is not None
    catalog = load_catalog(request.catalog)
    gguf = catalog.get(request.model_name).gguf()
    if gguf is None:
        raise UsageError(
            f"--model {request.model_name}: the catalog entry has no single .gguf file to run",
            "give a model with one GGUF (xtask models list)",
        )
    return catalog, gguf


def reference_for(request: FullCrossvalRequest) -> str:
    """bitnet.cpp runs i2_s (upstream llama.cpp no longer has the type); else llama.cpp."""
    if request.ref:
        return request.ref
    from bitnet_xtask.download.defaults import DEFAULT_FILE

    if request.model_name is not None:
        i2_s = "i2_s" in _catalog_gguf(request)[1].name.lower()
    elif request.repo is None:
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


def _engine(
    request: FullCrossvalRequest, ref: str, model: Path | None, reporter: Reporter
) -> str | None:
    """Step `fetch-cpp`: the cpp backend spec, or None when the pinned engine cannot load
    the model's architecture (BitNet b1.58 2B-4T's `bitnet-b1.58`: no pinned engine
    knows it) and no prebuilt one is named (`XTASK_CPP_PREFIX_*`): nothing is built. The
    definition and the NumPy reference then compare alone, with any --backend given;
    with neither a checkpoint nor a --backend there is nothing to compare, exit 2."""
    prebuilt = os.environ.get(prefix_variable(ref))
    why = None if model is None or prebuilt else _cannot_load(ref, model)
    if why is None:
        return _build(ref, request.jobs, reporter)
    engine = (
        "git clone --recursive https://github.com/microsoft/BitNet && xtask fetch-cpp "
        "--ref bitnet.cpp --source BitNet, then --backend cpp:bitnet.cpp-local-cpu"
    )
    if not (request.has_checkpoint or request.backends):
        raise UsageError(
            f"{model}: {why}, so there is nothing to compare the NumPy reference with",
            f"add the model's checkpoint (--hf-id or --hf), or an engine that loads it: {engine}",
        )
    reporter.info(f"fetch-cpp skipped: {why}; nothing is built (an engine that loads it: "
                  f"{engine})")  # fmt: skip
    return None


def _present(spec: str | None) -> tuple[str, ...]:
    return () if spec is None else (spec,)


def _cannot_load(ref: str, model: Path) -> str | None:
    from bitnet_xtask.crossval.engine_graphs import cannot_load
    from bitnet_xtask.crossval.gguf_file import GGUFFile

    arch = GGUFFile(model).metadata("general.architecture")
    return cannot_load(ref, arch) if isinstance(arch, str) else None


def _checkpoint(request: FullCrossvalRequest, reporter: Reporter) -> Checkpoint:
    """The local checkpoint, or the one --hf-id names fetched (files already here are
    revalidated); read and checked either way (exit 2 for one crossval cannot run)."""
    from bitnet_xtask.hf.checkpoint import read_checkpoint

    if request.hf_dir is not None:
        return read_checkpoint(request.hf_dir)
    from bitnet_xtask.hf.fetch import fetch_checkpoint

    assert request.hf_repo is not None
    directory = fetch_checkpoint(request.hf_repo, revision=request.hf_revision,
                                 out=request.models_dir, reporter=reporter)  # fmt: skip
    return read_checkpoint(directory)


def _convert(request: FullCrossvalRequest, checkpoint: Checkpoint, reporter: Reporter) -> Path:
    """The checkpoint's GGUF in --quant, made by the pinned converter beside the other
    models (`<models>/<checkpoint>-<quant>.gguf`), reused while it is up to date."""
    from bitnet_xtask.fixtures.convert import convert_checkpoint
    from bitnet_xtask.fixtures.twin_spec import CHECKPOINT_DIR

    directory = checkpoint.directory.resolve()
    named = directory.parent if directory.name == CHECKPOINT_DIR else directory  # a twin's
    target = request.models_dir / f"{named.name}-{request.quant}.gguf"
    return convert_checkpoint(checkpoint, target, request.quant, reporter)


def _model(request: FullCrossvalRequest, steps: _Steps) -> Path | None:
    """Step `model`: the fixture, the --id download or the --model fetch; None when the
    GGUF is converted from the checkpoint (after fetch-cpp, which brings the converter)."""
    if "model" not in steps.names:
        return None
    if request.model_name is not None:
        fetch = f"retry, or fetch it alone: xtask models fetch {request.model_name}"
        return steps.run("model", lambda: _catalog_model(request, steps.reporter), fetch)
    if request.repo is None:
        return steps.run("model", lambda: _fixture(request, steps.reporter),
                         "check --fixture/--arch/--quant and free disk space")  # fmt: skip
    retry = f"retry, or fetch it alone: xtask download-model --id {request.repo}"
    return steps.run("model", lambda: _download(request, steps.reporter), retry)


def run_full_crossval(
    request: FullCrossvalRequest, reporter: Reporter | None = None
) -> CrossvalResult:
    """The steps; returns crossval's result (`.to_receipt()`: the receipt)."""
    reporter = reporter or NullReporter()
    steps = _Steps(request.steps(), reporter)
    if "convert" in steps.names:
        from bitnet_xtask.fixtures.convert import CONVERTER_QUANTS

        if request.quant not in CONVERTER_QUANTS:  # before the build, not after it
            raise UsageError(
                f"--quant {request.quant}: the converter cannot write it",
                f"with --hf and no --id, choose one of {', '.join(CONVERTER_QUANTS)}",
            )
    ref = reference_for(request)
    checkpoint = None
    if request.has_checkpoint:
        where = f"--hf {request.hf_dir}" if request.hf_dir else f"--hf-id {request.hf_repo}"
        checkpoint = steps.run("checkpoint", lambda: _checkpoint(request, reporter),
                               f"check {where}")  # fmt: skip
    model = _model(request, steps)
    cpp = steps.run("fetch-cpp", lambda: _engine(request, ref, model, reporter),
                    f"retry, or build it alone: xtask fetch-cpp --ref {ref}")  # fmt: skip
    if model is None:
        assert checkpoint is not None  # no model step: the GGUF comes from the checkpoint
        ready = checkpoint
        model = steps.run("convert", lambda: _convert(request, ready, reporter),
                          "check --hf and --quant")  # fmt: skip
    definition = () if checkpoint is None else (f"hf:{checkpoint.directory}",)
    crossval = CrossvalRequest(
        models=(model,),
        backends=(*definition, *(request.backends or (*_present(cpp), "numpy"))),
        prompts=request.prompts,
        n_predict=request.n_predict,
        profile=request.profile,
        threads=request.threads,
        timeout=request.timeout,
        hf_dtype=request.hf_dtype,
        trace=request.trace,
    )
    return steps.run("crossval", lambda: run_crossval(crossval, reporter),
                     f"rerun it alone: xtask crossval --model {model}")  # fmt: skip
