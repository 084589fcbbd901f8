"""A stand-in engine for crossval's memory benchmark, speaking the cmd: protocol.

It writes (n_tokens, n_vocab) float32 logits derived from the token ids (no model is
run: the benchmark measures crossval, not an engine), row by row into an .npy memory
map, so this process itself never holds the whole matrix.

    synthetic_engine.py {tokens} {logits} {continuation} N_VOCAB [NOISE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    tokens_path, logits_path, continuation_path = map(Path, sys.argv[1:4])
    n_vocab = int(sys.argv[4])
    noise = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    tokens = json.loads(tokens_path.read_text())["tokens"]
    out = np.lib.format.open_memmap(
        logits_path, mode="w+", dtype=np.float32, shape=(len(tokens), n_vocab)
    )
    for i, token in enumerate(tokens):
        row = np.random.default_rng(token * 7919 + i).standard_normal(n_vocab, np.float32)
        if noise:
            row += np.random.default_rng(10**9 + i).standard_normal(n_vocab, np.float32) * noise
        out[i] = row * 3
    out.flush()
    continuation_path.write_text(json.dumps({"tokens": [int(out[-1].argmax())]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
