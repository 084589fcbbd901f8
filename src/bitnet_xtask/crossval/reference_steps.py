"""One step of the NumPy reference, re-run on inputs given from outside.

`crossval --trace` tells error a step adds from error it inherits by re-running the
reference's step on the candidate's own inputs (`trace_compare`): when the result
matches the candidate, the step is right and its input was already off. This module is
that re-run for the NumPy reference: each step of the map (`trace_map.STEPS`) as the
same function `reference.ReferenceModel` applies in its forward pass, with the same
weights (the file's), in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bitnet_xtask.crossval.reference import (
    ACTIVATIONS,
    Floats,
    ReferenceModel,
    Rope,
    causal_attention,
)
from bitnet_xtask.crossval.trace_map import BoundStep

Inputs = Sequence[npt.NDArray[np.float32]]


@dataclass(frozen=True)
class ReferenceSteps:
    """The steps of `model`'s forward pass, each callable on (n_tokens, features) inputs
    in the file's layout."""

    model: ReferenceModel
    name: str = "numpy"

    def rerun(self, step: BoundStep, inputs: Inputs) -> npt.NDArray[np.float64] | None:
        """The step's output on `inputs` (one per `step.inputs`), or None for the
        embeddings (whose input is token ids, not a tensor)."""
        run = self._steps().get(step.step.key)
        if run is None:
            return None
        return run(step.layer, [np.asarray(x, dtype=np.float64) for x in inputs])

    def _steps(self) -> dict[str, Callable[[int | None, list[Floats]], Floats]]:
        model, hp = self.model, self.model.hparams

        def norm(weight: str) -> Callable[[int | None, list[Floats]], Floats]:
            def run(layer: int | None, x: list[Floats]) -> Floats:
                name = weight if layer is None else f"blk.{layer}.{weight}"
                return model._norm(x[0], name)

            return run

        def project(matrix: str) -> Callable[[int | None, list[Floats]], Floats]:
            return lambda layer, x: model._project(x[0], _block(layer), matrix)

        def rope(n_heads: int) -> Callable[[int | None, list[Floats]], Floats]:
            def run(layer: int | None, x: list[Floats]) -> Floats:
                n = x[0].shape[0]
                rotated = Rope.at(model, np.arange(n)).apply(x[0].reshape(n, n_heads, -1))
                return rotated.reshape(n, -1)

            return run

        def attention(layer: int | None, x: list[Floats]) -> Floats:
            q, k, v = (t.reshape(t.shape[0], -1, hp.head_dim) for t in x)
            return causal_attention(q, k, v, 1.0 / math.sqrt(hp.head_dim))

        act = ACTIVATIONS[model.graph.ffn_activation]
        return {
            "attn_norm": norm("attn_norm.weight"),
            "q_proj": project("attn_q"),
            "k_proj": project("attn_k"),
            "v_proj": project("attn_v"),
            "q_rope": rope(hp.n_head),
            "k_rope": rope(hp.n_head_kv),
            "kqv_out": attention,
            "attn_sub_norm": norm("attn_sub_norm.weight"),
            "attn_out": project("attn_output"),
            "ffn_inp": lambda layer, x: x[0] + x[1],
            "ffn_norm": norm("ffn_norm.weight"),
            "ffn_gate": project("ffn_gate"),
            "ffn_up": project("ffn_up"),
            "ffn_act": lambda layer, x: act(x[0]),
            "ffn_gate_par": lambda layer, x: act(x[0]) * x[1],
            "ffn_sub_norm": norm("ffn_sub_norm.weight"),
            "ffn_out": project("ffn_down"),
            "l_out": lambda layer, x: x[0] + x[1],
            "result_norm": norm("output_norm.weight"),
            "result_output": lambda layer, x: model._head(x[0]).astype(np.float64),
        }


def _block(layer: int | None) -> int:
    if layer is None:
        raise ValueError("a projection belongs to a block")
    return layer
