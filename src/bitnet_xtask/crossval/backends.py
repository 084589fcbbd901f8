"""The implementations crossval compares, behind one small interface.

A backend evaluates token ids on a GGUF model and hands back the logits of every
position (as a file read a block of rows at a time, so large vocab x positions need
no RAM) and a greedy continuation. Three kinds, named on the command line by a spec:

- `numpy`: bitnet-xtask's NumPy reference forward pass (`crossval.reference`).
- `cpp:<build>`: the `xtask-logits` harness of a fetch-cpp build. `<build>` is a
  reference (`llama.cpp`, `bitnet.cpp`, optionally with `-cuda`: the newest matching
  build in the cache, or the prefix named by `XTASK_CPP_PREFIX_<REF>`), or the path of a
  build directory holding `bin/xtask-logits` (and a `receipt.json`, when there is one).
- `cmd:<template>`: any program, through a file protocol (README: "The cmd: protocol").
  The template is split like a shell command line, then `{model}`, `{tokens}`,
  `{logits}`, `{continuation}`, `{n_predict}` and `{workdir}` are replaced in each
  argument; the program reads the token ids from `{tokens}` (JSON: `{"tokens": [...]}`),
  writes float32 or float64 logits of shape (n_tokens, n_vocab) to `{logits}` as `.npy`
  and, when `{continuation}` appears, its greedy token ids as JSON `{"tokens": [...]}`.

Backends that can tokenize (the cpp harness) are also asked to tokenize the prompt, so
crossval can check tokenization parity; every backend evaluates the same ids.

An engine is someone else's program and may hang, print without end or leave a FIFO
where a file belongs: each call runs in its own session within a deadline (then its
whole process group is killed, as on Ctrl-C), its output goes to files, and what it
writes is read only from regular files, bounded (`bitnet_xtask.inputs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bitnet_xtask.cache import cpp_cache_root
from bitnet_xtask.crossval.logits_file import LogitsFile
from bitnet_xtask.errors import UsageError, XtaskError

PREFIX_ENV = "XTASK_CPP_PREFIX_"  # + LLAMA_CPP / BITNET_CPP: a prefix with bin/ (Nix)


class BackendError(XtaskError):
    """A backend failed to evaluate (exit 1); the message names it and what it said."""


@dataclass(frozen=True)
class Evaluation:
    """One backend's answer for one model and one sequence of token ids."""

    tokens: list[int]
    logits: LogitsFile  # (n_tokens, n_vocab), on disk, read a block of rows at a time
    continuation: list[int] | None
    seconds: float


class Backend(Protocol):
    """What crossval needs from an implementation."""

    spec: str

    def identity(self) -> dict[str, Any]:
        """What this backend is, for the receipt (for cpp: the fetch-cpp receipt)."""
        ...

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        """The ids this backend makes of `prompt` (with BOS as the model asks), or None
        when it does not tokenize."""
        ...

    def evaluate(self, model: Path, tokens: list[int], n_predict: int, workdir: Path) -> Evaluation:
        """Logits for every position of `tokens`, and a greedy continuation."""
        ...


DEFAULT_TIMEOUT = 600.0
"""Seconds one engine call (a tokenization or an evaluation) may take (`--backend-timeout`)."""

OUTPUT_TAIL_BYTES = 4096
"""How much of an engine's stderr (or stdout) a failure message shows."""


def _tail(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - OUTPUT_TAIL_BYTES))
        text = handle.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-10:])


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the engine and everything it started (its own session and process group):
    killing only the direct child would leave a shell's children running."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _run(argv: list[str], what: str, timeout: float, logs: Path) -> None:
    """Run an engine to completion within `timeout` seconds, or kill its process group.

    Its stdout and stderr go to files in `logs` (an engine that prints without end fills
    a file, not this process's memory); a failure shows the last lines.
    """
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / "stdout.txt", logs / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        except FileNotFoundError:
            raise BackendError(f"{what}: {argv[0]} not found") from None
        except OSError as exc:
            raise BackendError(f"{what}: cannot start {argv[0]}: {exc.strerror}") from None
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise BackendError(
                f"{what}: no answer within {timeout:g} s (--backend-timeout); "
                "the engine and its children were killed"
            ) from None
        except BaseException:  # Ctrl-C, SIGTERM: the engine must not outlive us
            _kill_group(process)
            raise
    if returncode != 0:
        tail = _tail(stderr) or _tail(stdout)
        raise BackendError(f"{what} failed (exit {returncode}):\n{tail}")


def _read_json(path: Path, what: str) -> Any:
    """A JSON file an engine wrote: regular, bounded and well-formed, or a BackendError."""
    from bitnet_xtask.inputs import read_json

    try:
        return read_json(path, what=f"{what}: its output")
    except UsageError as exc:
        raise BackendError(exc.message) from None


def _read_ids(path: Path, what: str) -> list[int]:
    loaded = _read_json(path, what)
    ids = loaded.get("tokens") if isinstance(loaded, dict) else None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise BackendError(f'{what}: {path} must hold {{"tokens": [int, ...]}}')
    return ids


def _check_shape(logits: LogitsFile, n_tokens: int, what: str) -> LogitsFile:
    if logits.ndim != 2 or logits.shape[0] != n_tokens:
        raise BackendError(
            f"{what}: logits have shape {logits.shape}, expected ({n_tokens}, n_vocab)"
        )
    return logits


@dataclass
class NumpyBackend:
    """The NumPy reference: the executable specification of the architectures."""

    spec: str = "numpy"

    def identity(self) -> dict[str, Any]:
        from bitnet_xtask import __version__

        return {"kind": "numpy", "numpy": np.__version__, "bitnet_xtask": __version__}

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        return None

    def evaluate(self, model: Path, tokens: list[int], n_predict: int, workdir: Path) -> Evaluation:
        from bitnet_xtask.crossval.reference import load_model

        started = time.monotonic()
        reference = load_model(model)
        logits = reference.logits(tokens)
        continuation = reference.greedy(tokens, n_predict) if n_predict else []
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "logits.npy"
        np.save(path, np.asarray(logits, dtype=np.float32))
        return Evaluation(tokens, LogitsFile.npy(path), continuation, time.monotonic() - started)


@dataclass
class CppBackend:
    """The `xtask-logits` harness of one fetch-cpp build."""

    spec: str
    directory: Path
    threads: int | None = None
    receipt: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def harness(self) -> Path:
        return self.directory / "bin" / "xtask-logits"

    def identity(self) -> dict[str, Any]:
        return {"kind": "cpp", "directory": str(self.directory), "receipt": self.receipt}

    def _harness(self, model: Path, source: list[str], out: Path, n_predict: int) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        threads = ["--threads", str(self.threads)] if self.threads else []
        argv = [str(self.harness), "--model", str(model), *source, "--out", str(out),
                "--n-predict", str(n_predict), *threads]  # fmt: skip
        _run(argv, f"{self.spec} ({self.harness})", self.timeout, out)
        return out

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        out = self._harness(model, ["--prompt", prompt], workdir / "tokenize", 0)
        return _read_ids(out / "tokens.json", self.spec)

    def evaluate(self, model: Path, tokens: list[int], n_predict: int, workdir: Path) -> Evaluation:
        started = time.monotonic()
        ids = workdir / "tokens.txt"
        workdir.mkdir(parents=True, exist_ok=True)
        ids.write_text(" ".join(map(str, tokens)) + "\n", encoding="utf-8")
        out = self._harness(model, ["--tokens-file", str(ids)], workdir / "eval", n_predict)
        summary = _read_json(out / "tokens.json", self.spec)
        n_vocab = summary.get("n_vocab") if isinstance(summary, dict) else None
        if type(n_vocab) is not int or n_vocab < 1:
            raise BackendError(f"{self.spec}: {out / 'tokens.json'} has no n_vocab")
        try:
            logits = LogitsFile.raw(out / "logits.f32", len(tokens), n_vocab)
        except ValueError as exc:
            raise BackendError(f"{self.spec}: {exc}") from None
        continuation = _read_ids(out / "continuation.json", self.spec)
        return Evaluation(tokens, logits, continuation, time.monotonic() - started)


@dataclass
class CommandBackend:
    """Any engine, through the documented file protocol."""

    spec: str
    template: str
    timeout: float = DEFAULT_TIMEOUT

    def identity(self) -> dict[str, Any]:
        return {"kind": "cmd", "template": self.template}

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        return None

    def evaluate(self, model: Path, tokens: list[int], n_predict: int, workdir: Path) -> Evaluation:
        workdir.mkdir(parents=True, exist_ok=True)
        files = {
            "model": str(model),
            "tokens": str(workdir / "tokens.json"),
            "logits": str(workdir / "logits.npy"),
            "continuation": str(workdir / "continuation.json"),
            "n_predict": str(n_predict),
            "workdir": str(workdir),
        }
        Path(files["tokens"]).write_text(json.dumps({"tokens": tokens}), encoding="utf-8")
        argv = command_line(self.template, files)
        started = time.monotonic()
        _run(argv, self.spec, self.timeout, workdir / ".xtask-engine-output")
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
            continuation = _read_ids(Path(files["continuation"]), self.spec)
        return Evaluation(tokens, checked, continuation, time.monotonic() - started)


PLACEHOLDERS = ("model", "tokens", "logits", "continuation", "n_predict", "workdir")


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
    """A fetch-cpp build by reference name (`llama.cpp`, `bitnet.cpp-cuda`, ...) or by path
    (anything with a `/`, or starting with `.` or `~`: a `./llama.cpp` checkout in the
    working directory must not shadow the reference's name)."""
    if "/" in name or name.startswith((".", "~")):
        return Path(name).expanduser()
    ref, _, backend = name.partition("-")
    backend = backend or "cpu"
    if ref not in ("llama.cpp", "bitnet.cpp") or backend not in ("cpu", "cuda"):
        raise UsageError(
            f"unknown cpp build {name!r}",
            "use cpp:llama.cpp, cpp:bitnet.cpp (add -cuda for CUDA builds) or cpp:<build dir>",
        )
    variable = prefix_variable(ref)
    if backend == "cpu" and (prefix := os.environ.get(variable)):
        return Path(prefix)
    from bitnet_xtask.cpp.build import revision
    from bitnet_xtask.cpp.pins import load_pins

    pinned = cpp_cache_root() / f"{ref}-{revision(load_pins()[ref])}-{backend}"
    if (pinned / "receipt.json").is_file():
        return pinned  # the pin's build, before --rev/--tag/--source ones
    builds = sorted(
        cpp_cache_root().glob(f"{ref}-*-{backend}/receipt.json"),
        key=lambda p: p.stat().st_mtime,
    )
    if not builds:
        flag = " --backend cuda" if backend == "cuda" else ""
        raise UsageError(
            f"no {ref} {backend} build in {cpp_cache_root()}",
            f"build it first: xtask fetch-cpp --ref {ref}{flag}",
        )
    return builds[-1].parent


def _build_receipt(directory: Path, spec: str) -> dict[str, Any]:
    """The fetch-cpp receipt of a build, for the crossval receipt ({} when it has none)."""
    path = directory / "receipt.json"
    if not path.exists():
        return {}
    from bitnet_xtask.inputs import read_json

    try:
        loaded = read_json(path, what=f"{spec}: the build receipt")
    except UsageError as exc:
        raise UsageError(exc.message, "rebuild: xtask fetch-cpp --force") from None
    return loaded if isinstance(loaded, dict) else {}


def make_backend(
    spec: str, threads: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Backend:
    """Parse a backend spec from the command line; `timeout` bounds each engine call."""
    kind, _, rest = spec.partition(":")
    if spec == "numpy":
        return NumpyBackend()
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
        return CommandBackend(spec, rest, timeout)
    raise UsageError(
        f"unknown backend {spec!r}", "use numpy, cpp:<build> or cmd:<command template>"
    )
