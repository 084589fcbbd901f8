"""The `hf:` backend's intermediate tensors: module outputs through forward hooks, and one
step re-run on given inputs.

Where each step of the map (`trace_map.bind`) is computed in transformers is the map's
`hf` source: a module under the decoder layer `model.model.layers[i]` (block steps) or
under the CausalLM (`model.embed_tokens`, `model.norm`, `lm_head`), and whether the
step's tensor is that module's forward output or its first positional input. The
attention's merged heads are the input of `o_proj` in `LlamaAttention.forward`
(models/llama/modeling_llama.py:270 in transformers 5.24) and of `attn_sub_norm` in
`BitNetAttention.forward` (models/bitnet/modeling_bitnet.py:217); the gated FFN product
is the input of `down_proj` / `ffn_sub_norm` (modeling_bitnet.py:77). `PromptHooks`
records them during one forward call; `HFStepRunner` re-runs one step on another
backend's tensors.

Every tensor is (n_tokens, features) float32 in the GGUF file's layout: the batch
dimension dropped, and a llama model's Q and K (`q_proj`, `k_proj` outputs) permuted as
the llama converter permuted the file's rows (`trace_map.to_file_layout`). A step whose
module the checkpoint lacks (the map's module for another architecture) is not hooked,
so the comparison finds it absent from this backend's trace.

torch is imported inside the functions: this module is imported with the backend, before
`require_extra` has said whether torch is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_xtask.crossval.engine_process import BackendError
from bitnet_xtask.crossval.trace_map import BoundStep, bind, permutes_qk, to_file_layout
from bitnet_xtask.crossval.traces import Floats32, TraceWriter

if TYPE_CHECKING:
    import torch

MODULE_ACTIVATIONS = {"SiLUActivation": "SILU", "SiLU": "SILU", "ReLUSquaredActivation": "RELU2",
                      "GELUActivation": "GELU"}  # fmt: skip
"""The FFN activation module's class (`ACT2CLS`, transformers activations.py:325-349 in
5.24: "silu" is `SiLUActivation`, "swish" `nn.SiLU`, "relu2" `ReLUSquaredActivation`,
"gelu" `GELUActivation`) -> the op the NumPy reference names it by
(`reference.ACTIVATIONS`, upper-cased, which `trace_map.ACTIVATION_OPS` reads back); any
other class is named by its class name, upper-cased."""

_PERMUTED_HEADS = {"q_proj": "num_attention_heads", "k_proj": "num_key_value_heads"}
"""The steps a llama file holds permuted, and the config field counting their heads."""

_RESIDUAL_ADDS = ("ffn_inp", "l_out")
"""Steps that are no module's call but the decoder layer's `residual + hidden_states`
(modeling_bitnet.py:256 and :262, modeling_llama.py:308 and :314 in transformers 5.24):
the sum of the two inputs."""


def architecture(model: Path) -> str:
    """The GGUF twin's `general.architecture`: which map and which Q/K layout apply."""
    from bitnet_xtask.crossval.gguf_file import GGUFFile

    arch = GGUFFile(model).metadata("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise BackendError(f"{model} has no general.architecture to map the hf: trace by")
    return arch


def activation_op(module: Any) -> str:
    """What the FFN activation module computes, in the NumPy reference's words."""
    name = type(module).__name__
    return MODULE_ACTIVATIONS.get(name, name.upper())


@dataclass(frozen=True)
class Site:
    """A step of the map and the module of one loaded model that computes it."""

    step: BoundStep
    module: Any  # a torch.nn.Module
    heads: int | None  # permute the output to the file's Q/K layout with this many heads

    @property
    def name(self) -> str:
        return self.step.names[0]

    @property
    def op(self) -> str:
        if self.step.step.key == "ffn_act":
            return activation_op(self.module)
        return self.step.step.ops[0] if self.step.step.ops else ""


def site(network: Any, arch: str, step: BoundStep) -> Site | None:
    """Where `network` computes `step`, or None when the map names no module for it or
    the checkpoint has none there."""
    if step.hf_module is None:
        return None
    root = network.model.layers[step.layer] if step.step.block else network
    try:
        module = root.get_submodule(step.hf_module)
    except AttributeError:
        return None
    field = _PERMUTED_HEADS.get(step.step.key) if permutes_qk(arch) else None
    config = network.config
    heads = (
        None if field is None else int(getattr(config, field, None) or config.num_attention_heads)
    )
    return Site(step, module, heads)


def sites(network: Any, arch: str) -> list[Site]:
    """Every step of `arch`'s map that `network` computes in a module, in graph order."""
    steps = bind(arch, int(network.config.num_hidden_layers))
    return [found for step in steps if (found := site(network, arch, step)) is not None]


def file_rows(tensor: Any, heads: int | None) -> Floats32:
    """A (1, n_tokens, features) torch activation (or a tuple whose first item is one, a
    decoder layer's output) as (n_tokens, features) float32 in the file's layout: a view
    of the tensor's memory unless it is permuted or converted from another dtype."""
    if isinstance(tensor, tuple):
        tensor = tensor[0]
    rows = np.asarray(tensor.detach().reshape(-1, tensor.shape[-1]).float().numpy(), np.float32)
    return to_file_layout(rows, heads) if heads else rows


class PromptHooks:
    """A context manager: while entered, every map step `network` computes that `writer`'s
    request wants is written to `writer` as its module runs, a tensor at a time (nothing
    is kept); leaving removes the hooks, on an error too."""

    def __init__(self, network: Any, arch: str, writer: TraceWriter) -> None:
        self.writer = writer
        self.sites = [s for s in sites(network, arch) if writer.request.wants(s.name)]
        self._handles: list[Any] = []

    def _write(self, found: Site, tensor: torch.Tensor) -> None:
        self.writer.add(found.name, file_rows(tensor, found.heads), found.op)

    def _hook(self, found: Site) -> Any:
        """A forward hook (the output) or a forward pre-hook (the first input)."""
        if found.step.step.hf is not None and found.step.step.hf.side == "input":

            def before(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                self._write(found, args[0] if args else next(iter(kwargs.values())))

            return found.module.register_forward_pre_hook(before, with_kwargs=True)

        def after(module: Any, args: tuple[Any, ...], output: Any) -> None:
            self._write(found, output)

        return found.module.register_forward_hook(after)

    def __enter__(self) -> PromptHooks:
        try:
            for found in self.sites:
                self._handles.append(self._hook(found))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


def _one_module_call(found: Site, n_inputs: int) -> bool:
    """Whether the step is its module's output on its one input."""
    return found.step.step.hf is not None and found.step.step.hf.side == "output" and n_inputs == 1


class HFStepRunner:
    """Re-runs one step of the loaded model on given inputs: the reference's step on a
    candidate's tensors, so the comparison (`trace_compare.StepOracle`) tells error a
    step adds from error it inherits. Inputs and output are (n_tokens, features) float32
    in the file's layout; the step computes in the model's dtype, as in its forward."""

    def __init__(self, network: Any, arch: str, name: str) -> None:
        self.network, self.arch, self.name = network, arch, name
        self._sites = {(s.step.step.key, s.step.layer): s for s in sites(network, arch)}

    def rerun(self, step: BoundStep, inputs: Sequence[Floats32]) -> Floats32 | None:
        """The step's output on `inputs` (one per `step.inputs` label, in that order), or
        None where the step is not one module on one input (attention, RoPE, the
        embeddings, a step the checkpoint has no module for). The residual adds are the
        sum of their inputs; the gated product, the layer's `act_fn` on the gate times
        the up projection (`act_fn(gate_proj(x)) * up_proj(x)`, modeling_bitnet.py:77)."""
        import torch

        if len(inputs) != len(step.inputs):
            raise ValueError(f"{step.label} takes {len(step.inputs)} inputs, given {len(inputs)}")
        try:
            with torch.inference_mode():
                return self._run(step, inputs)
        except RuntimeError as exc:  # torch's word for tensors of shapes a module refuses
            raise ValueError(f"{step.label} cannot take inputs of shapes "
                             f"{[x.shape for x in inputs]}: {exc}") from None  # fmt: skip

    def _run(self, step: BoundStep, inputs: Sequence[Floats32]) -> Floats32 | None:
        key = step.step.key
        if key in _RESIDUAL_ADDS:
            added, residual = (self._tensor(rows) for rows in inputs)  # (step, stream)
            return file_rows(added + residual, None)
        if key == "ffn_gate_par":
            act = self._sites.get(("ffn_act", step.layer))
            if act is None:
                return None
            gate, up = (self._tensor(rows) for rows in inputs)
            return file_rows(act.module(gate) * up, None)
        found = self._sites.get((key, step.layer))
        if found is None or not _one_module_call(found, len(inputs)):
            return None
        return file_rows(found.module(self._tensor(inputs[0])), found.heads)

    def _tensor(self, rows: Floats32) -> torch.Tensor:
        import torch

        if rows.ndim != 2:
            raise ValueError(f"an input of shape {rows.shape} is not (n_tokens, features)")
        array = np.ascontiguousarray(rows, dtype=np.float32)
        return torch.from_numpy(array).to(self.network.dtype).unsqueeze(0)
