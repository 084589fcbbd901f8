"""A cmd: engine whose attention is wrong only when it computes more than 3 tokens at once.

The kind of bug `crossval --paths` is for: microsoft/BitNet #617 (prompts of more than
~3 tokens corrupted on AVX-only CPUs by the GEMM path, while token-by-token decoding was
right) and #468 (`-b 1` and `-b 32` differ). The engine is bitnet-xtask's NumPy
reference, run the way llama.cpp runs a prompt: fed in decode calls of `{n_batch}`
tokens, each computed in micro-batches of `{n_ubatch}` (`ReferenceModel.forward` on a
`KVCache` that carries the earlier positions), so one token at a time is incremental
decoding. Its bug is in the cache it attends through: for a micro-batch of more than
3 tokens, attention sees that micro-batch's own keys in reverse order (a kernel that
walks its tile backwards), so they no longer line up with their values or with the
causal mask. The cache keeps the right keys, so later micro-batches and the greedy
continuation (one token at a time) attend to the right past. `--no-bug` runs the same
code with the bug switched off: an engine that --paths must pass. Usage:

    cmd:python3 tests/engines/batch_bug_engine.py {model} {tokens} {logits} {continuation}
        {n_predict} {n_batch} {n_ubatch} [--no-bug]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bitnet_xtask.crossval.reference import Floats, KVCache, load_model

WIDEST_RIGHT = 3
"""The most tokens one micro-batch may hold before the bug shows."""


class ReversedChunkKeys(KVCache):
    """A KV cache that hands attention a wide micro-batch's own keys reversed."""

    def append(self, layer: int, k: Floats, v: Floats) -> tuple[Floats, Floats]:
        keys, values = super().append(layer, k, v)
        n_new = k.shape[0]
        if n_new <= WIDEST_RIGHT:
            return keys, values
        return np.concatenate([keys[:-n_new], keys[-n_new:][::-1]]), values


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("tokens", type=Path)
    parser.add_argument("logits", type=Path)
    parser.add_argument("continuation", type=Path)
    parser.add_argument("n_predict", type=int)
    parser.add_argument("n_batch", type=int)
    parser.add_argument("n_ubatch", type=int)
    parser.add_argument("--no-bug", action="store_true")
    args = parser.parse_args()
    tokens = json.loads(args.tokens.read_text())["tokens"]
    model = load_model(args.model)
    cache = (KVCache if args.no_bug else ReversedChunkKeys).empty(model.hparams)
    rows = []
    for start in range(0, len(tokens), args.n_batch):  # one decode call
        call = tokens[start : start + args.n_batch]
        for first in range(0, len(call), args.n_ubatch):  # one micro-batch
            rows.append(model.forward(call[first : first + args.n_ubatch], cache))
    logits = np.concatenate(rows)
    np.save(args.logits, logits)
    continuation: list[int] = []
    last = logits[-1]
    for _ in range(args.n_predict):  # greedy, one token at a time through the cache
        if continuation:
            last = model.forward(continuation[-1:], cache, last_only=True)[-1]
        continuation.append(int(np.argmax(last)))
    args.continuation.write_text(json.dumps({"tokens": continuation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
