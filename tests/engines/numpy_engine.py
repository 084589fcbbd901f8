"""An "external engine under test" speaking crossval's cmd: protocol.

It evaluates with bitnet-xtask's NumPy reference, and can misbehave on purpose the
ways a real engine under development does: run another (corrupted) model, or add an
error to one logit. Usage, as a crossval backend:

    cmd:python3 tests/engines/numpy_engine.py {model} {tokens} {logits} {continuation} {n_predict}
        [--model-override PATH] [--perturb POSITION:TOKEN:DELTA] [--graph llama.cpp]
        [--trace {trace}]

`--graph llama.cpp` evaluates llama.cpp's graph of the model instead of its definition:
on a BitNet model, SiLU where the model says squared ReLU, the deviation engines share.
`--trace {trace}` writes the prompt's intermediate tensors as crossval's `.npz` trace
layout documents (README, "Traces"): one array per name, `<name>@<OP>` for a later
step under a name already written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_xtask.crossval.engine_graphs import GRAPH_NAMES
from bitnet_xtask.crossval.reference import KVCache, load_model


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("tokens", type=Path)
    parser.add_argument("logits", type=Path)
    parser.add_argument("continuation", type=Path)
    parser.add_argument("n_predict", type=int)
    parser.add_argument("--model-override", type=Path)
    parser.add_argument("--perturb", help="POSITION:TOKEN:DELTA")
    parser.add_argument("--graph", choices=GRAPH_NAMES, default="definition")
    parser.add_argument("--trace", type=Path)
    args = parser.parse_args()
    tokens = json.loads(args.tokens.read_text())["tokens"]
    model = load_model(args.model_override or args.model, graph=args.graph)
    traced: dict[str, np.ndarray] = {}

    def emit(name: str, tensor: np.ndarray, op: str) -> None:
        traced[f"{name}@{op}" if name in traced else name] = tensor.astype(np.float32)

    logits = np.array(model.forward(tokens, KVCache.empty(model.hparams), emit=emit))
    if args.trace:
        savez: Any = np.savez  # its stubs type **arrays as its own keyword arguments
        savez(args.trace, **traced)
    if args.perturb:
        position, token, delta = args.perturb.split(":")
        logits[int(position), int(token)] += float(delta)
    np.save(args.logits, logits)
    continuation = model.greedy(tokens, args.n_predict)
    args.continuation.write_text(json.dumps({"tokens": continuation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
