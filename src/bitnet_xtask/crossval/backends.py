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
"""

from __future__ import annotations

import json
import os
import shlex
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


def _run(argv: list[str], what: str, timeout: float = 3600) -> str:
    try:
        process = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise BackendError(f"{what}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{what}: no answer within {timeout:.0f} s") from None
    if process.returncode != 0:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-10:])
        raise BackendError(f"{what} failed (exit {process.returncode}):\n{tail}")
    return process.stdout


def _read_ids(path: Path, what: str) -> list[int]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))["tokens"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"{what}: cannot read token ids from {path}: {exc}") from None
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
        _run(argv, f"{self.spec} ({self.harness})")
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
        n_vocab = json.loads((out / "tokens.json").read_text(encoding="utf-8"))["n_vocab"]
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
        _run(argv, self.spec)
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
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{spec}: {path} is unreadable: {exc}", "rebuild: xtask fetch-cpp --force"
        ) from None
    return loaded if isinstance(loaded, dict) else {}


def make_backend(spec: str, threads: int | None = None) -> Backend:
    """Parse a backend spec from the command line."""
    kind, _, rest = spec.partition(":")
    if spec == "numpy":
        return NumpyBackend()
    if kind == "cpp" and rest:
        directory = find_build(rest)
        backend = CppBackend(spec, directory, threads, _build_receipt(directory, spec))
        if not backend.harness.is_file():
            raise UsageError(
                f"{spec}: no harness at {backend.harness}",
                "point cpp: at a fetch-cpp build directory (or an XTASK_CPP_PREFIX_* "
                "prefix) holding bin/xtask-logits; xtask fetch-cpp builds one",
            )
        return backend
    if kind == "cmd" and rest:
        command_line(rest, {name: name for name in PLACEHOLDERS})  # fail now, not mid-run
        return CommandBackend(spec, rest)
    raise UsageError(
        f"unknown backend {spec!r}", "use numpy, cpp:<build> or cmd:<command template>"
    )
