"""An "external engine under test" speaking crossval's cmd: protocol.

It evaluates with bitnet-xtask's NumPy reference, and can misbehave on purpose the
ways a real engine under development does: run another (corrupted) model, or add an
error to one logit. Usage, as a crossval backend:

    cmd:python3 tests/engines/numpy_engine.py {model} {tokens} {logits} {continuation} {n_predict}
        [--model-override PATH] [--perturb POSITION:TOKEN:DELTA]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bitnet_xtask.crossval.reference import load_model


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("tokens", type=Path)
    parser.add_argument("logits", type=Path)
    parser.add_argument("continuation", type=Path)
    parser.add_argument("n_predict", type=int)
    parser.add_argument("--model-override", type=Path)
    parser.add_argument("--perturb", help="POSITION:TOKEN:DELTA")
    args = parser.parse_args()
    tokens = json.loads(args.tokens.read_text())["tokens"]
    model = load_model(args.model_override or args.model)
    logits = np.array(model.logits(tokens), dtype=np.float32)
    if args.perturb:
        position, token, delta = args.perturb.split(":")
        logits[int(position), int(token)] += float(delta)
    np.save(args.logits, logits)
    continuation = model.greedy(tokens, args.n_predict)
    args.continuation.write_text(json.dumps({"tokens": continuation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
