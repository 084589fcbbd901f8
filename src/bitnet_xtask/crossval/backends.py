"""The implementations crossval compares, behind one small interface.

A backend evaluates token ids on a GGUF model and hands back the logits of every
position (as a file read a block of rows at a time, so large vocab x positions need
no RAM) and a greedy continuation. Four kinds, named on the command line by a spec:

- `hf:<checkpoint dir>`: the model's own definition, the Hugging Face checkpoint the
  GGUF was converted from, run by transformers (`crossval.hf_backend`; the `hf` extra).
  When present it is the reference (`request.reference_first`).
- `numpy`: bitnet-xtask's NumPy reference forward pass of the model's definition
  (`crossval.reference`); `numpy:llama.cpp-graph` and `numpy:bitnet.cpp-graph` run it as
  that engine's graph of the model instead (`crossval.engine_graphs`), never by default.
- `cpp:<build>`: the `xtask-logits` harness of a fetch-cpp build. `<build>` is any
  name fetch-cpp gives a build (`cpp.layout`: `<ref>[-cpu|-cuda][-native]`, the newest
  matching build in the cache; a directory's own name; plain `llama.cpp` or `bitnet.cpp`
  also the prefix named by `XTASK_CPP_PREFIX_<REF>`), or the path of a build directory
  holding `bin/xtask-logits` (and a `receipt.json`, when there is one).
- `cmd:<template>`: any program, through a file protocol (README: "The cmd: protocol").
  The template is split like a shell command line, then `{model}`, `{tokens}`,
  `{logits}`, `{continuation}`, `{n_predict}`, `{workdir}` and the execution path's
  `{n_batch}`, `{n_ubatch}` and `{threads}` (`crossval --paths`; by default the whole
  prompt in one call, every core) are replaced in each argument; the program reads the
  token ids from `{tokens}` (JSON: `{"tokens": [...]}`), writes float32 or float64
  logits of shape (n_tokens, n_vocab) to `{logits}` as `.npy` and, when
  `{continuation}` appears, its greedy token ids as JSON `{"tokens": [...]}`; with
  `crossval --trace`, when `{trace}` appears, its intermediate tensors as a `.npz`
  (`traces`: the layout).

Backends that can tokenize (the cpp harness in its tokenize-only mode; hf, with the
checkpoint's tokenizer) are asked to tokenize the prompt, so crossval can check
tokenization parity (the GGUF's tokenizer against the checkpoint's); every backend
evaluates the same ids. A backend may keep what it loaded between calls (the NumPy
reference keeps the model it is running) until `close()`.

An engine is someone else's program and may hang, print without end or leave a FIFO
where a file belongs: each call runs through `engine_process` (its own session, a
deadline, output to files, what it writes read only from bounded regular files).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from bitnet_xtask.cache import cpp_cache_root
from bitnet_xtask.crossval.engine_process import (
    BackendError,
    read_engine_json,
    read_ids,
    run_engine,
)
from bitnet_xtask.crossval.eval_options import (
    DEFAULT_OPTIONS,
    EvalOptions,
    ExecutionPath,
    every_core,
)
from bitnet_xtask.crossval.logits_file import LogitsFile
from bitnet_xtask.crossval.traces import Trace, TraceRequest, read_trace
from bitnet_xtask.errors import UsageError

if TYPE_CHECKING:
    from bitnet_xtask.crossval.engine_graphs import GraphName
    from bitnet_xtask.crossval.reference import ReferenceModel

PREFIX_ENV = "XTASK_CPP_PREFIX_"  # + LLAMA_CPP / BITNET_CPP: a prefix with bin/ (Nix)


@dataclass(frozen=True)
class Evaluation:
    """One backend's answer for one model and one sequence of token ids."""

    logits: LogitsFile  # (n_tokens, n_vocab), on disk, read a block of rows at a time
    continuation: list[int] | None
    seconds: float
    trace: Trace | None = None  # when asked for (`EvalOptions.trace`) and the backend traces


class Backend(Protocol):
    """What crossval needs from an implementation."""

    spec: str
    #: Whether `tokenize` gives ids (else None): the first backend must, unless the ids
    #: come from --tokens-file.
    tokenizes: ClassVar[bool]

    def identity(self) -> dict[str, Any]:
        """What this backend is, for the receipt (for cpp: the fetch-cpp receipt)."""
        ...

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        """The ids this backend makes of `prompt` (with BOS as the model asks), or None
        when it does not tokenize."""
        ...

    def evaluate(
        self,
        model: Path,
        tokens: list[int],
        n_predict: int,
        workdir: Path,
        options: EvalOptions = DEFAULT_OPTIONS,
    ) -> Evaluation:
        """Logits for every position of `tokens`, and a greedy continuation; with
        `options.trace`, the intermediate tensors of the prompt's evaluation too."""
        ...

    def close(self) -> None:
        """Let go of whatever the backend kept between calls."""
        ...


DEFAULT_TIMEOUT = 600.0
"""Seconds one engine call (a tokenization or an evaluation) may take (`--backend-timeout`)."""


def _check_shape(logits: LogitsFile, n_tokens: int, what: str) -> LogitsFile:
    if logits.ndim != 2 or logits.shape[0] != n_tokens:
        raise BackendError(
            f"{what}: logits have shape {logits.shape}, expected ({n_tokens}, n_vocab)"
        )
    return logits


@dataclass
class NumpyBackend:
    """The NumPy reference: the executable specification of the architectures.

    The model is loaded (its header checked, its weights dequantized as they are first
    used) once per model, not per prompt: crossval runs every prompt of a model before
    the next model, so the one loaded last is kept, and let go when another is asked for
    or at `close()`.
    """

    tokenizes: ClassVar[bool] = False

    spec: str = "numpy"
    graph: GraphName = "definition"  # or an engine's graph of the model (`engine_graphs`)
    _loaded: tuple[Path, ReferenceModel] | None = field(default=None, repr=False)
    _choices: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def identity(self) -> dict[str, Any]:
        """Which graph ran, and per model what it computed and why (`choices()`: each
        choice with its source, the model's definition or the file)."""
        from bitnet_xtask import __version__

        return {"kind": "numpy", "numpy": np.__version__, "bitnet_xtask": __version__,
                "graph": self.graph, "models": dict(self._choices)}  # fmt: skip

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        return None

    def model(self, path: Path) -> ReferenceModel:
        """The reference model of `path`, loaded once and kept until another is asked for."""
        if self._loaded is None or self._loaded[0] != path:
            from bitnet_xtask.crossval.reference import load_model

            self._loaded = None  # two models' weights are never held at once
            self._loaded = (path, load_model(path, graph=self.graph))
            self._choices[str(path)] = self._loaded[1].choices()
        return self._loaded[1]

    def close(self) -> None:
        self._loaded = None

    def evaluate(
        self,
        model: Path,
        tokens: list[int],
        n_predict: int,
        workdir: Path,
        options: EvalOptions = DEFAULT_OPTIONS,
    ) -> Evaluation:
        started = time.monotonic()
        workdir.mkdir(parents=True, exist_ok=True)
        trace = None
        if options.trace is None:
            logits, continuation = self.model(model).evaluate(tokens, n_predict)
        else:
            from bitnet_xtask.crossval.traces import TraceWriter

            with TraceWriter(workdir / "trace", self.spec, len(tokens), options.trace) as writer:
                logits, continuation = self.model(model).evaluate(tokens, n_predict, writer.add)
            trace = read_trace(workdir / "trace", len(tokens))
        path = workdir / "logits.npy"
        save_npy(path, np.ascontiguousarray(logits, dtype=np.float32))
        return Evaluation(LogitsFile.npy(path), continuation, time.monotonic() - started, trace)


def save_npy(path: Path, array: npt.NDArray[np.float32]) -> None:
    """`np.save`, written a row at a time through Python's file object: numpy's own fast
    path (`tofile`) reports a full disk as "N requested and M written" without an errno
    (numpy/_core/src/multiarray/convert.c), which would read as this model's failure
    rather than the machine's exit 10."""
    with path.open("wb") as handle:
        header = np.lib.format.header_data_from_array_1_0(array)
        np.lib.format.write_array_header_1_0(handle, header)
        for row in array.reshape(array.shape[0], -1):
            handle.write(row.tobytes())


def _mapping(value: Any) -> dict[str, Any]:
    """A receipt's object, or {} for anything else (a receipt from another version)."""
    return value if isinstance(value, dict) else {}


TOKENIZE_ONLY = "--tokenize-only"
"""The harness's mode that loads the vocabulary alone and only tokenizes."""


@dataclass
class CppBackend:
    """The `xtask-logits` harness of one fetch-cpp build."""

    tokenizes: ClassVar[bool] = True

    spec: str
    directory: Path
    threads: int | None = None
    receipt: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    _tokenize_only: bool | None = field(default=None, repr=False)  # None: not asked yet

    @property
    def harness(self) -> Path:
        return self.directory / "bin" / "xtask-logits"

    def identity(self) -> dict[str, Any]:
        return {"kind": "cpp", "directory": str(self.directory), "receipt": self.receipt}

    @property
    def engine(self) -> str:
        """The engine as the config audit names it, `<ref>@<revision>`: the revision in
        the build directory's name (`cpp.layout`: `local` for a --source build, so no
        pinned facts apply to it), else the pin its receipt records (a Nix prefix), as
        fetch-cpp names builds (`pin_revision`); a bare `<ref>` when neither says."""
        from bitnet_xtask.cpp.layout import parse_build_name
        from bitnet_xtask.cpp.pins import load_pins

        inputs = _mapping(self.receipt.get("inputs"))
        ref = inputs.get("ref") or self.spec.removeprefix("cpp:").split("-")[0]
        named = parse_build_name(self.directory.name, load_pins())
        pin = _mapping(inputs.get("pin"))
        revision = (
            (named.revision if named else None)
            or _mapping(pin.get("upstream")).get("rev")
            or (pin.get("rev") or "")[:12]
            or None
        )
        return f"{ref}@{revision}" if isinstance(revision, str) else str(ref)

    def _harness(
        self,
        model: Path,
        source: list[str],
        out: Path,
        n_predict: int | None,
        extra: tuple[str, ...] = (),
    ) -> Path:
        """Run the harness on `model` (`n_predict` None: tokenize only) into `out`."""
        out.mkdir(parents=True, exist_ok=True)
        given = self.threads and "--threads" not in extra  # a path's --threads rules
        threads = ["--threads", str(self.threads)] if given else []
        predict = [] if n_predict is None else ["--n-predict", str(n_predict)]
        argv = [str(self.harness), "--model", str(model), *source, "--out", str(out),
                *predict, *threads, *extra]  # fmt: skip
        run_engine(argv, f"{self.spec} ({self.harness})", self.timeout, out)
        return out

    def _has_tokenize_only(self, logs: Path) -> bool:
        """Whether the harness has --tokenize-only (its --help says so). A harness built by
        an earlier bitnet-xtask lacks it: fetch-cpp rebuilds it (the harness's sources are
        a build input), and until then it tokenizes by a whole evaluation, as it did."""
        if self._tokenize_only is None:
            run_engine([str(self.harness), "--help"], f"{self.spec} ({self.harness}) --help",
                 self.timeout, logs)  # fmt: skip
            with (logs / "stdout.txt").open("rb") as usage:  # our own file, not the engine's
                self._tokenize_only = TOKENIZE_ONLY.encode() in usage.read(1 << 16)
        return self._tokenize_only

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        out = workdir / "tokenize"
        if self._has_tokenize_only(workdir / "help"):
            self._harness(model, ["--prompt", prompt, TOKENIZE_ONLY], out, None)
        else:
            self._harness(model, ["--prompt", prompt], out, 0)
        return read_ids(out / "tokens.json", self.spec)

    def close(self) -> None:
        """Nothing is kept between calls: every call is its own process."""

    def evaluate(
        self,
        model: Path,
        tokens: list[int],
        n_predict: int,
        workdir: Path,
        options: EvalOptions = DEFAULT_OPTIONS,
    ) -> Evaluation:
        started = time.monotonic()
        ids = workdir / "tokens.txt"
        workdir.mkdir(parents=True, exist_ok=True)
        ids.write_text(" ".join(map(str, tokens)) + "\n", encoding="utf-8")
        traced = workdir / "trace"
        extra = () if options.trace is None else _trace_arguments(options.trace, traced)
        if options.path is not None:
            extra += options.path.harness_arguments()
        out = self._harness(model, ["--tokens-file", str(ids)], workdir / "eval", n_predict, extra)
        summary = read_engine_json(out / "tokens.json", self.spec)
        n_vocab = summary.get("n_vocab") if isinstance(summary, dict) else None
        if type(n_vocab) is not int or n_vocab < 1:
            raise BackendError(f"{self.spec}: {out / 'tokens.json'} has no n_vocab")
        try:
            logits = LogitsFile.raw(out / "logits.f32", len(tokens), n_vocab)
        except ValueError as exc:
            raise BackendError(f"{self.spec}: {exc}") from None
        continuation = read_ids(out / "continuation.json", self.spec)
        trace = None
        if options.trace is not None:
            trace = _engine_trace(traced, len(tokens), self.spec, options.trace)
        return Evaluation(logits, continuation, time.monotonic() - started, trace)


def _trace_arguments(request: TraceRequest, directory: Path) -> tuple[str, ...]:
    """The harness's --trace flags for `request`."""
    pattern = () if request.pattern is None else ("--trace-filter", request.pattern)
    return ("--trace", str(directory), *pattern, "--trace-max-bytes", str(request.max_bytes))


def _engine_trace(path: Path, n_tokens: int, spec: str, request: TraceRequest) -> Trace:
    """The trace an engine wrote at `path` (a `.npz` filtered and capped by `request`
    here); a missing or malformed one is its failure."""
    try:
        return read_trace(path, n_tokens, request)
    except (OSError, ValueError) as exc:
        raise BackendError(f"{spec}: cannot read its trace {path}: {exc}") from None


@dataclass
class CommandBackend:
    """Any engine, through the documented file protocol."""

    tokenizes: ClassVar[bool] = False

    spec: str
    template: str
    timeout: float = DEFAULT_TIMEOUT
    threads: int | None = None  # {threads} unless a path says (default: every core)

    def identity(self) -> dict[str, Any]:
        return {"kind": "cmd", "template": self.template}

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        return None

    def close(self) -> None:
        """Nothing is kept between calls: every call is its own process."""

    @property
    def traces(self) -> bool:
        """Whether the engine is given a `{trace}` file to write."""
        return "{trace}" in self.template

    def evaluate(
        self,
        model: Path,
        tokens: list[int],
        n_predict: int,
        workdir: Path,
        options: EvalOptions = DEFAULT_OPTIONS,
    ) -> Evaluation:
        workdir.mkdir(parents=True, exist_ok=True)
        path = (options.path or ExecutionPath()).resolved(len(tokens))
        n_batch = path.n_batch or len(tokens)
        files = {
            "model": str(model),
            "tokens": str(workdir / "tokens.json"),
            "logits": str(workdir / "logits.npy"),
            "continuation": str(workdir / "continuation.json"),
            "n_predict": str(n_predict),
            "workdir": str(workdir),
            "trace": str(workdir / "trace.npz"),
            "n_batch": str(n_batch),
            "n_ubatch": str(path.n_ubatch or n_batch),
            "threads": str(path.threads or self.threads or every_core()),
        }
        Path(files["tokens"]).write_text(json.dumps({"tokens": tokens}), encoding="utf-8")
        argv = command_line(self.template, files)
        started = time.monotonic()
        run_engine(argv, self.spec, self.timeout, workdir / ".xtask-engine-output")
        try:
            logits = LogitsFile.npy(Path(files["logits"]))
        except (OSError, ValueError) as exc:
            raise BackendError(f"{self.spec}: cannot read {files['logits']}: {exc}") from None
        if logits.dtype not in (np.float32, np.float64):
            raise BackendError(
                f"{self.spec}: logits must be float32 or float64, not {logits.dtype}"
            )
        checked = _check_shape(logits, len(tokens), self.spec)
        continuation = None
        if "{continuation}" in self.template:
            continuation = read_ids(Path(files["continuation"]), self.spec)
        trace = None
        if options.trace is not None and self.traces:
            trace = _engine_trace(Path(files["trace"]), len(tokens), self.spec, options.trace)
        return Evaluation(checked, continuation, time.monotonic() - started, trace)


PLACEHOLDERS = (
    "model",
    "tokens",
    "logits",
    "continuation",
    "n_predict",
    "workdir",
    "trace",
    "n_batch",
    "n_ubatch",
    "threads",
)


def command_line(template: str, values: dict[str, str]) -> list[str]:
    """The cmd: template split like a shell line, each placeholder replaced."""
    try:
        argv = [part.format(**values) for part in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(
            f"bad cmd: template {template!r}: {exc!r}",
            "placeholders: " + " ".join(f"{{{name}}}" for name in PLACEHOLDERS),
        ) from None
    if not argv:
        raise UsageError("cmd: needs a command, e.g. cmd:'my-engine {model} {tokens} {logits}'")
    return argv


def prefix_variable(ref: str) -> str:
    """The variable naming a prebuilt `ref` (what the Nix apps set): XTASK_CPP_PREFIX_LLAMA_CPP."""
    return PREFIX_ENV + ref.replace(".", "_").upper()


def find_build(name: str) -> Path:
    """The build directory a `cpp:<name>` spec names (README, "Backends"): a path (anything
    with a `/`, or starting with `.` or `~`: a `./llama.cpp` checkout in the working
    directory must not shadow the reference's name); a variant `<ref>[-cpu|-cuda][-native]`
    (the prefix in `XTASK_CPP_PREFIX_<REF>` for a plain CPU one, else the pin's build,
    else the newest); or a build directory's own name, `<ref>-<rev>-<backend>[-native]`.
    Every name is `cpp.layout`'s, the rule fetch-cpp builds by."""
    if "/" in name or name.startswith((".", "~")):
        return Path(name).expanduser()
    from bitnet_xtask.cpp.layout import RECEIPT, build_directory, parse_build_name, pin_revision
    from bitnet_xtask.cpp.pins import load_pins

    pins = load_pins()
    wanted = parse_build_name(name, pins)
    if wanted is None:
        raise UsageError(
            f"unknown cpp build {name!r}",
            f"use cpp:<ref>[-cuda][-native] (<ref>: {', '.join(pins)}), a build directory's "
            "name (cpp:llama.cpp-local-cpu) or cpp:<build dir>",
        )
    pinned = pin_revision(pins[wanted.ref])
    plain = wanted.backend == "cpu" and not wanted.native and wanted.revision is None
    if plain and (prefix := os.environ.get(prefix_variable(wanted.ref))):
        return Path(prefix)
    first = build_directory(wanted.ref, wanted.revision or pinned, wanted.backend,
                            native=wanted.native)  # fmt: skip
    if (first / RECEIPT).is_file():
        return first  # the named build, or the pin's before --rev/--tag/--source ones
    builds = [] if wanted.revision else cpp_cache_root().glob(f"{wanted.pattern}/{RECEIPT}")
    newest = max(builds, key=lambda p: p.stat().st_mtime, default=None)
    if newest is None:
        raise UsageError(
            f"no {wanted} build in {cpp_cache_root()}",
            f"build it first: {wanted.fetch_command(pinned)}",
        )
    return newest.parent


def _build_receipt(directory: Path, spec: str) -> dict[str, Any]:
    """The fetch-cpp receipt of a build, for the crossval receipt ({} when it has none)."""
    from bitnet_xtask.cpp.layout import RECEIPT

    path = directory / RECEIPT
    if not path.exists():
        return {}
    from bitnet_xtask.inputs import read_json

    try:
        loaded = read_json(path, what=f"{spec}: the build receipt")
    except UsageError as exc:
        raise UsageError(exc.message, "rebuild: xtask fetch-cpp --force") from None
    return loaded if isinstance(loaded, dict) else {}


GRAPH_SUFFIX = "-graph"


def _engine_graph(spec: str, rest: str) -> GraphName:
    """`numpy:<engine>-graph`: the reference run as that engine's graph of the model."""
    from bitnet_xtask.crossval.engine_graphs import GRAPH_NAMES

    engines = [g for g in GRAPH_NAMES if g != "definition"]
    for graph in engines:
        if rest == f"{graph}{GRAPH_SUFFIX}":
            return graph
    raise UsageError(
        f"unknown backend {spec!r}",
        "numpy runs the model's definition; numpy:<engine>-graph an engine's graph of it "
        f"({', '.join(f'numpy:{g}{GRAPH_SUFFIX}' for g in engines)})",
    )


def make_backend(
    spec: str,
    threads: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    hf_dtype: str = "float32",
) -> Backend:
    """Parse a backend spec from the command line; `timeout` bounds each engine call,
    `hf_dtype` is what an `hf:` backend computes in (`hf_backend.DTYPES`)."""
    kind, _, rest = spec.partition(":")
    if spec == "numpy":
        return NumpyBackend()
    if kind == "numpy" and rest:
        return NumpyBackend(spec, _engine_graph(spec, rest))
    if kind == "hf" and rest:
        from bitnet_xtask.crossval.hf_backend import open_hf_backend

        return open_hf_backend(spec, Path(rest).expanduser(), threads, hf_dtype)
    if kind == "cpp" and rest:
        directory = find_build(rest)
        backend = CppBackend(spec, directory, threads, _build_receipt(directory, spec), timeout)
        if not backend.harness.is_file():
            raise UsageError(
                f"{spec}: no harness at {backend.harness}",
                "point cpp: at a fetch-cpp build directory (or an XTASK_CPP_PREFIX_* "
                "prefix) holding bin/xtask-logits; xtask fetch-cpp builds one",
            )
        return backend
    if kind == "cmd" and rest:
        command_line(rest, {name: name for name in PLACEHOLDERS})  # fail now, not mid-run
        return CommandBackend(spec, rest, timeout, threads)
    raise UsageError(
        f"unknown backend {spec!r}",
        "use numpy, numpy:<engine>-graph, cpp:<build>, cmd:<command template> or "
        "hf:<checkpoint dir>",
    )
