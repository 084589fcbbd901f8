"""Intermediate tensors on disk: the one trace format every backend writes or is read in.

`crossval --trace` asks each backend for the tensors of its prompt evaluation, every
position, in full precision. The harness (`cpp/harness/xtask_logits.cpp`, through
llama.cpp's eval callback), the NumPy reference and the `hf:` backend (`TraceWriter`)
write a trace directory; a `cmd:` engine writes a `.npz` at `{trace}`. Both read as a
`Trace`.

A trace directory:

    DIR/index.json   {"format": "xtask-trace", "version": 1, "producer": ..., "n_tokens": N,
                      "tensors": [{"name", "op", "type", "ne": [ne0, ne1, ne2, ne3],
                                   "offset", "batch", "pos0"}, ...],   # graph order
                      "skipped": [{"name", "op", "type", "ne", "reason"}, ...],
                      "capped":  [{"name", "op", "ne", "nbytes"}, ...]}
    DIR/tensors.f32  every tensor as float32 little-endian at its offset, ggml order
                     (ne0 fastest: the NumPy shape is reversed(ne))

`ne` is ggml's order; a name may occur more than once (llama.cpp names a projection's
output, its reshape and its RoPE output all `Qcur-N`), each with its op. `batch`/`pos0`
say which llama_decode call (and its first position) a tensor came from, when the
prompt was fed in pieces. `skipped` lists what the producer could not read as floats
(a quantized tensor), `capped` what `--trace-max-bytes` left out: nothing is dropped
silently.

A `.npz` (what `np.savez(path, **{name: array})` writes): each array is one tensor,
named as the map names it (`trace_map`), positions first: (n_tokens, ...). A name
holds the first step the map gives it (`Qcur-0` is the query projection); a later
step under the same name is `<name>@<OP>` (`Qcur-0@ROPE`: the queries after RoPE).

Tensors are read one at a time with an explicit read (`Trace.positions`), never mapped
whole: a trace of a `medium` model is compared in bounded memory.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from bitnet_xtask.errors import UsageError

FORMAT = "xtask-trace"
VERSION = 1
INDEX = "index.json"
DATA = "tensors.f32"
DEFAULT_MAX_BYTES = 4 << 30
"""What one backend's trace may hold by default (`--trace-max-bytes`): 4 GiB of float32."""

Floats32 = npt.NDArray[np.float32]

PYTHON_ONLY = re.compile(r"\(\?(?![:=!])|\\[AZ]")
"""What Python's `re` accepts and ECMAScript's (the harness's `std::regex`) does not:
`(?P<name>...)`, `(?i)` and the other `(?...)` extensions but for (?:, (?= and (?!, and
the anchors \\A and \\Z. A `--trace` pattern must mean the same to every backend."""


@dataclass(frozen=True)
class TraceRequest:
    """Which tensors to trace: names matching `pattern` (all when None), up to `max_bytes`."""

    pattern: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise UsageError(
                    f"--trace {self.pattern!r} is not a regular expression: {exc}"
                ) from None
            if PYTHON_ONLY.search(self.pattern):
                raise UsageError(
                    f"--trace {self.pattern!r} uses syntax only Python's regular expressions have",
                    "the harness matches names with ECMAScript's (std::regex): use what "
                    "both share (groups (...), (?:...), lookahead (?=...), classes, "
                    "anchors ^ $)",
                )
        if self.max_bytes < 0:
            raise UsageError(f"--trace-max-bytes {self.max_bytes} is negative")

    def wants(self, name: str) -> bool:
        return self.pattern is None or re.search(self.pattern, name) is not None


@dataclass(frozen=True)
class TracedTensor:
    """One tensor of a trace: its name and op in the producer's graph, where it lies."""

    name: str
    op: str
    type: str
    ne: tuple[int, ...]
    offset: int = 0
    batch: int = 0
    pos0: int = 0
    index: int = 0  # its place in the trace's graph order

    @property
    def shape(self) -> tuple[int, ...]:
        """The NumPy shape: ggml's ne reversed, without the leading ones ggml pads with."""
        shape = list(reversed(self.ne))
        while len(shape) > 1 and shape[0] == 1:
            shape.pop(0)
        return tuple(shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))


@dataclass(frozen=True)
class Omitted:
    """A tensor the producer saw and did not write, and why (`skipped` or `capped`)."""

    name: str
    op: str
    reason: str


@dataclass(frozen=True, eq=False)
class Trace:
    """A trace as read back: its tensors in graph order and what was left out."""

    path: Path
    producer: str
    n_tokens: int
    tensors: tuple[TracedTensor, ...]
    omitted: tuple[Omitted, ...] = ()
    _by_name: dict[str, list[TracedTensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for tensor in self.tensors:
            self._by_name.setdefault(tensor.name, []).append(tensor)

    @property
    def names(self) -> tuple[str, ...]:
        """Every traced name once, in the order it first occurs."""
        return tuple(self._by_name)

    def occurrences(self, name: str) -> list[TracedTensor]:
        return list(self._by_name.get(name, ()))

    def find(
        self, name: str, ops: tuple[str, ...] = (), untyped: bool = True
    ) -> list[TracedTensor]:
        """The occurrences of `name` (with one of `ops`, when given; one without an op
        only when `untyped`) that make up the tensor over all positions: the last fitting
        occurrence in each graph (`batch`: one per micro-batch of the prompt)."""
        chosen: dict[int, TracedTensor] = {}
        for tensor in self._by_name.get(name, ()):
            if (tensor.op in ops or not ops) if tensor.op else untyped:
                chosen[tensor.batch] = tensor
        return [chosen[batch] for batch in sorted(chosen)]

    def positions(self, parts: list[TracedTensor]) -> Floats32:
        """The tensor `parts` make up (`find`), read now, as (n_tokens, features)."""
        rows = [self._read(part).reshape(self._tokens_in(part), -1) for part in parts]
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    def _tokens_in(self, part: TracedTensor) -> int:
        """How many positions the graph of `part` evaluated: up to the next graph's first
        position, or the last; checked against the tensor's own outermost dimension (a
        trace cut short by its byte cap has no tensors of its later graphs)."""
        later = sorted({t.pos0 for t in self.tensors if t.pos0 > part.pos0})
        end = later[0] if later else self.n_tokens
        tokens = end - part.pos0
        outer = next((n for n in reversed(part.ne) if n > 1), 1)
        if tokens < 1 or part.size % tokens or (tokens > 1 and outer != tokens):
            raise ValueError(
                f"{self.path}: {part.name} (ne {list(part.ne)}) is not the {tokens} positions "
                f"from {part.pos0} its place in the trace says"
            )
        return tokens

    def _read(self, part: TracedTensor) -> Floats32:
        if self.path.suffix == ".npz":
            member = f"{part.name}@{part.op}" if part.op else part.name
            try:
                with zipfile.ZipFile(self.path) as archive, archive.open(f"{member}.npy") as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
            except (OSError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise ValueError(f"{self.path}: cannot read {member}: {exc}") from None
            return np.ascontiguousarray(array, dtype=np.float32)
        with _open_data(self.path / DATA) as handle:
            handle.seek(part.offset)
            block = np.fromfile(handle, dtype="<f4", count=part.size)
        if block.size != part.size:
            raise ValueError(f"{self.path / DATA} is shorter than its index says ({part.name})")
        return block.astype(np.float32, copy=False)


def _open_data(path: Path) -> BinaryIO:
    from bitnet_xtask.inputs import open_regular

    try:
        fd, _ = open_regular(path, what="trace data")
    except UsageError as exc:
        raise ValueError(exc.message) from None
    return os.fdopen(fd, "rb")


def read_trace(path: Path, n_tokens: int, request: TraceRequest | None = None) -> Trace:
    """The trace at `path`: a trace directory, or a `.npz` of (n_tokens, ...) arrays
    (filtered and capped by `request` here: the engine that wrote it was not told).
    ValueError names what is wrong with one (a backend's output: the caller decides
    whose failure that is)."""
    if path.suffix == ".npz":
        return _read_npz(path, n_tokens, request or TraceRequest())
    from bitnet_xtask.inputs import read_json

    try:
        index = read_json(path / INDEX, what="trace index")
    except UsageError as exc:
        raise ValueError(exc.message) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path / INDEX} is not an {FORMAT} index")
    if index.get("version") != VERSION:
        raise ValueError(f"{path / INDEX}: version {index.get('version')!r}, expected {VERSION}")
    size = (path / DATA).stat().st_size if (path / DATA).is_file() else 0
    tensors = tuple(_entry(e, path, i) for i, e in enumerate(_list(index, "tensors", path)))
    for tensor in tensors:
        if tensor.offset < 0 or tensor.offset + 4 * tensor.size > size:
            raise ValueError(f"{path}: {tensor.name} lies outside {DATA} ({size} bytes)")
    omitted = tuple(
        Omitted(str(e.get("name")), str(e.get("op", "")), reason)
        for key in ("skipped", "capped")
        for e in _list(index, key, path)
        for reason in (_omission(key, e),)
    )
    return Trace(path, str(index.get("producer", "")), n_tokens, tensors, omitted)


def _omission(key: str, entry: dict[str, Any]) -> str:
    if key == "capped":
        return f"over --trace-max-bytes ({entry.get('nbytes')} bytes)"  # as _read_npz says
    return str(entry.get("reason") or f"type {entry.get('type')} is not read as floats")


def _list(index: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = index.get(key, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ValueError(f"{path / INDEX}: {key!r} is not a list of objects")
    return value


def _entry(entry: dict[str, Any], path: Path, position: int) -> TracedTensor:
    ne = entry.get("ne")
    if not (isinstance(ne, list) and ne and all(type(n) is int and n >= 1 for n in ne)):
        raise ValueError(f"{path / INDEX}: malformed tensor entry {str(entry)[:120]}")
    fields_ok = all(type(entry.get(k, 0)) is int for k in ("offset", "batch", "pos0"))
    if not (fields_ok and isinstance(entry.get("name"), str)):
        raise ValueError(f"{path / INDEX}: malformed tensor entry {str(entry)[:120]}")
    return TracedTensor(entry["name"], str(entry.get("op", "")), str(entry.get("type", "f32")),
                        tuple(ne), entry.get("offset", 0), entry.get("batch", 0),
                        entry.get("pos0", 0), position)  # fmt: skip


def _read_npz(path: Path, n_tokens: int, request: TraceRequest) -> Trace:
    """A `cmd:` engine's `.npz`, every member checked now (its CRC, a float array of
    (n_tokens, ...), a name read back to one member), filtered and capped as `request`
    says."""
    tensors: list[TracedTensor] = []
    omitted: list[Omitted] = []
    written = 0
    try:
        with zipfile.ZipFile(path) as archive:
            if (bad := archive.testzip()) is not None:
                raise ValueError(f"member {bad!r} is corrupt (its CRC does not match)")
            for info in archive.infolist():
                tensor = _npz_entry(archive, info, n_tokens, len(tensors))
                if not request.wants(tensor.name):
                    continue
                nbytes = 4 * tensor.size
                if written + nbytes > request.max_bytes:
                    reason = f"over --trace-max-bytes ({nbytes} bytes)"
                    omitted.append(Omitted(tensor.name, tensor.op, reason))
                    continue
                written += nbytes
                tensors.append(tensor)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError) as exc:
        raise ValueError(f"{path} is not a readable .npz trace: {exc}") from None
    names = [(t.name, t.op) for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two members read back as the same tensor")
    return Trace(path, "npz", n_tokens, tuple(tensors), tuple(omitted))


def _npz_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, n_tokens: int, position: int
) -> TracedTensor:
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not an array")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    name, at, op = info.filename.removesuffix(".npy").partition("@")
    if not name or (at and not op):
        raise ValueError(f"member {info.filename!r}: want <name>.npy or <name>@<OP>.npy")
    if dtype.kind not in "fi" or not shape or shape[0] != n_tokens:
        raise ValueError(f"{info.filename}: a {dtype} array of shape {shape}, not a float "
                         f"tensor of ({n_tokens}, ...): positions first")  # fmt: skip
    return TracedTensor(name, op, str(dtype), tuple(int(n) for n in reversed(shape)),
                        index=position)  # fmt: skip


class TraceWriter:
    """Writes a trace directory a tensor at a time (`add`), the index last (`close`):
    what the NumPy reference and the hf: backend emit, with the harness's semantics
    (a filter, a byte cap whose overflow is listed, not dropped)."""

    def __init__(self, directory: Path, producer: str, n_tokens: int, request: TraceRequest):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.request = directory, request
        self._index: dict[str, Any] = {"format": FORMAT, "version": VERSION,
                                       "producer": producer, "n_tokens": n_tokens,
                                       "tensors": [], "skipped": [], "capped": []}  # fmt: skip
        self._data = (directory / DATA).open("wb")
        self._written = 0

    def add(self, name: str, array: npt.NDArray[Any], op: str = "") -> None:
        """Record `array` (positions first) as `name`, when the request wants it."""
        if not self.request.wants(name):
            return
        ne = list(reversed(array.shape)) + [1] * (4 - array.ndim)
        nbytes = 4 * int(array.size)
        if self._written + nbytes > self.request.max_bytes:
            self._index["capped"].append({"name": name, "op": op, "ne": ne, "nbytes": nbytes})
            return
        self._index["tensors"].append({"name": name, "op": op, "type": "f32", "ne": ne,
                                       "offset": self._written, "batch": 0, "pos0": 0})  # fmt: skip
        self._data.write(np.ascontiguousarray(array, dtype="<f4").tobytes())
        self._written += nbytes

    def close(self) -> None:
        from bitnet_xtask.fs import atomic_write_text

        self._data.close()
        atomic_write_text(self.directory / INDEX, json.dumps(self._index))

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._data.close()
