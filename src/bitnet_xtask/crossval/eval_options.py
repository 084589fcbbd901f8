"""How a backend is asked to evaluate, beyond the model and the token ids.

`EvalOptions` travels with every `Backend.evaluate` call: the tensors to trace
(`crossval --trace`, `traces.TraceRequest`) and the execution path to take
(`crossval --paths`, `ExecutionPath`). The defaults ask for neither: the logits of one
whole-prompt evaluation, as crossval always did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from bitnet_xtask.crossval.traces import TraceRequest


def every_core() -> int:
    """The thread count an engine gets by default: every core, as the harness takes it
    (std::thread::hardware_concurrency(), `cpp/harness/xtask_logits.cpp`, parse_args)."""
    return os.cpu_count() or 1


#: The settings a path can fix, in the order a label names them, with the harness flag of each.
SETTINGS = {"n_batch": "--n-batch", "n_ubatch": "--n-ubatch", "threads": "--threads",
            "n_gpu_layers": "--n-gpu-layers"}  # fmt: skip


@dataclass(frozen=True)
class ExecutionPath:
    """One way of running an engine over a prompt: the prompt fed in decode calls of
    `n_batch` tokens, each split into micro-batches of `n_ubatch`, on `threads` threads,
    with `n_gpu_layers` layers offloaded. A setting left None is the engine's default
    (the harness: the whole prompt in one call, micro-batches of the whole call, every
    core, no offload; `cpp/harness/xtask_logits.cpp`, `evaluate`)."""

    n_batch: int | None = None
    n_ubatch: int | None = None
    threads: int | None = None
    n_gpu_layers: int | None = None

    def settings(self) -> dict[str, int]:
        """The settings this path fixes, by name, in `SETTINGS` order."""
        return {name: value for name in SETTINGS if (value := getattr(self, name)) is not None}

    def label(self) -> str:
        """How reports name the path: "n_batch=3 n_ubatch=3 threads=2"."""
        return " ".join(f"{name}={value}" for name, value in self.settings().items()) or "defaults"

    def harness_arguments(self) -> tuple[str, ...]:
        """The `xtask-logits` flags that take this path."""
        return tuple(part for name, value in self.settings().items()
                     for part in (SETTINGS[name], str(value)))  # fmt: skip

    def resolved(self, n_tokens: int) -> ExecutionPath:
        """The path as a prompt of `n_tokens` takes it, as the harness clamps it: no call
        holds more than the prompt, no micro-batch more than its call (so n_batch=512 on
        a 40-token prompt is the one-batch run)."""
        n_batch = None if self.n_batch is None else min(self.n_batch, n_tokens)
        limit = n_tokens if n_batch is None else n_batch
        n_ubatch = None if self.n_ubatch is None else min(self.n_ubatch, limit)
        return replace(self, n_batch=n_batch, n_ubatch=n_ubatch)

    def to_json(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in SETTINGS}, "label": self.label()}


@dataclass(frozen=True)
class EvalOptions:
    """What one evaluation is asked for besides the logits."""

    trace: TraceRequest | None = None
    path: ExecutionPath | None = None


DEFAULT_OPTIONS = EvalOptions()
