"""The `hf:` backend's trace and its step re-runs, with the real transformers and torch on
real twins: a checkpoint and the GGUF the pinned llama.cpp's converter made of it (llama,
bitnet), and the `bitnet-b1.58` twin (online BitLinear quantization, a bf16 checkpoint).

The hf: trace is checked against the NumPy reference's trace of the twin's GGUF at every
name: that proves the map (`trace_map`) binds each step to the module that computes it,
and that Q/K are written in the file's layout (permuted for llama, as they are for the
BitNet architectures). A re-run of a step on given inputs is checked against the trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bitnet_xtask.crossval.backends import Evaluation, NumpyBackend
from bitnet_xtask.crossval.eval_options import EvalOptions
from bitnet_xtask.crossval.hf_backend import HFBackend, open_hf_backend
from bitnet_xtask.crossval.hf_trace import PromptHooks, activation_op
from bitnet_xtask.crossval.reference import ACTIVATIONS
from bitnet_xtask.crossval.trace_compare import find
from bitnet_xtask.crossval.trace_map import BoundStep, bind
from bitnet_xtask.crossval.traces import Floats32, Trace, TraceRequest, TraceWriter
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures import TwinResult, generate_twin
from bitnet_xtask.fixtures.convert import SCRIPT
from bitnet_xtask.fixtures.names import B158

torch = pytest.importorskip("torch", reason="the hf: backend needs torch (pip install '.[hf]')")
transformers = pytest.importorskip("transformers", reason="the hf: backend needs transformers")

FAMILIES = ("llama", "bitnet", B158)
TOKENS = [1, 17, 42, 5, 88, 3, 64, 200, 12, 7, 300]
N_PREDICT = 4
TRACE_ALL = EvalOptions(trace=TraceRequest())
AGREEMENT = 1e-5
"""Relative L2 of hf's float32 against the reference's float64 steps: measured 1e-7 to
5e-7 on these twins; a step mapped to the wrong module, or Q/K in the wrong layout, is
off by order 1."""
NOT_ONE_MODULE = {"inp_embd", "q_rope", "k_rope", "kqv_out"}
"""The steps `rerun` does not re-run: token ids in, RoPE and attention are no module."""


@dataclass(frozen=True)
class Traced:
    """One twin's f32 GGUF evaluated by hf: (traced and not) and by the NumPy reference."""

    family: str
    gguf: Path
    hf: HFBackend
    traced: Evaluation
    plain: Evaluation
    reference: Evaluation

    @property
    def trace(self) -> Trace:
        assert self.traced.trace is not None
        return self.traced.trace

    @property
    def arch(self) -> str:
        """The GGUF's `general.architecture`: each twin family's is its own name."""
        return self.family

    @property
    def config(self) -> Any:
        return self.hf._network().config

    def steps(self) -> tuple[BoundStep, ...]:
        return bind(self.arch, int(self.config.num_hidden_layers))


@pytest.fixture(scope="module")
def llama_source(llama_bin: Path) -> Path:
    source = llama_bin.parent / "src"
    if not (source / "vendor" / "llama.cpp" / SCRIPT).is_file():
        pytest.skip(f"no llama.cpp source with {SCRIPT} at {source}")
    return source


def make_twin(request: pytest.FixtureRequest, family: str, out: Path) -> TwinResult:
    """The twin of `family` (the converter's families need the pinned source's converter;
    `bitnet-b1.58`'s GGUFs are written without one)."""
    source = None if family == B158 else request.getfixturevalue("llama_source")
    return generate_twin(family, "tiny", ("f32",), 5, out, llama_source=source)


@pytest.fixture(scope="module", params=FAMILIES)
def traced(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traced]:
    family: str = request.param
    out = tmp_path_factory.mktemp(family)
    twin = make_twin(request, family, out)
    gguf = twin.ggufs["f32"]
    hf = open_hf_backend(f"hf:{twin.checkpoint}", twin.checkpoint, 1, "float32")
    reference = NumpyBackend().evaluate(gguf, TOKENS, N_PREDICT, out / "numpy", TRACE_ALL)
    with_trace = hf.evaluate(gguf, TOKENS, N_PREDICT, out / "traced", TRACE_ALL)
    plain = hf.evaluate(gguf, TOKENS, N_PREDICT, out / "plain")
    yield Traced(family, gguf, hf, with_trace, plain, reference)
    hf.close()


def rows(trace: Trace, step: BoundStep) -> Floats32:
    """The step's tensor in `trace`, found as the comparison finds it (`trace_compare`)."""
    found = find(trace, step)
    assert found is not None, f"{step.label} is not in {trace.path}"
    return trace.positions(list(found.parts))


def relative(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def features(step: BoundStep, config: Any) -> int:
    """What the step's tensor holds per position, by the checkpoint's config."""
    head_dim = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads
    )
    kv = (config.num_key_value_heads or config.num_attention_heads) * head_dim
    per_key = {"q_proj": config.num_attention_heads * head_dim, "k_proj": kv, "v_proj": kv,
               "kqv_out": config.num_attention_heads * head_dim,
               "result_output": config.vocab_size}  # fmt: skip
    ffn = ("ffn_gate", "ffn_up", "ffn_act", "ffn_gate_par", "ffn_sub_norm")
    per_key |= dict.fromkeys(ffn, config.intermediate_size)
    return int(per_key.get(step.step.key, config.hidden_size))


# --- the trace ---------------------------------------------------------------------------


def test_every_hf_sourced_step_is_traced_once_with_its_shape_and_op(traced: Traced) -> None:
    hf_steps = [s for s in traced.steps() if s.hf_module is not None]
    trace = traced.trace
    assert trace.producer == traced.hf.spec and trace.n_tokens == len(TOKENS)
    assert sorted(trace.names) == sorted(s.names[0] for s in hf_steps)
    assert trace.omitted == ()
    for step in hf_steps:
        (tensor,) = trace.occurrences(step.names[0])  # the prompt's call alone
        assert tensor.shape == (len(TOKENS), features(step, traced.config)), step.label
        if step.step.key != "ffn_act":
            assert tensor.op == (step.step.ops[0] if step.step.ops else ""), step.label
    activation = {"llama": "SILU", "bitnet": "RELU2", B158: "RELU2"}[traced.family]
    assert {t.op for t in trace.tensors if t.name.startswith("ffn_act-")} == {activation}
    # Written as the modules run: embeddings first, logits last.
    assert (trace.tensors[0].name, trace.tensors[-1].name) == ("inp_embd", "result_output")


def test_the_hf_trace_agrees_with_the_numpy_references_at_every_name(traced: Traced) -> None:
    """Same names, same layout, same numbers: the map and the Q/K layout, proven."""
    reference = traced.reference.trace
    assert reference is not None
    worst: dict[str, float] = {}
    for step in traced.steps():
        if step.hf_module is None:
            continue
        error = relative(rows(traced.trace, step), rows(reference, step))
        assert error < AGREEMENT, f"{step.label}: hf vs numpy relative L2 {error:.2e}"
        worst[step.step.key] = max(worst.get(step.step.key, 0.0), error)
    print(f"\n{traced.family}: max relative L2 hf vs numpy per step:")
    for key, error in worst.items():
        print(f"  {key:14s} {error:.2e}")


def test_q_and_k_are_in_the_files_layout(traced: Traced) -> None:
    """llama's converter permuted the file's Q/K rows: the checkpoint's own rows differ
    from the file's and the trace holds them permuted; the BitNet files keep the
    checkpoint's rows, and so does the trace."""
    reference = traced.reference.trace
    assert reference is not None
    steps = {s.label: s for s in traced.steps()}
    attention = traced.hf._network().model.layers[0].self_attn
    normed = torch.from_numpy(rows(traced.trace, steps["block 0 attn_norm"]))
    for key in ("q_proj", "k_proj"):
        with torch.inference_mode():
            checkpoint_rows = getattr(attention, key)(normed).numpy()
        step = steps[f"block 0 {key}"]
        traced_rows = rows(traced.trace, step)
        assert relative(traced_rows, rows(reference, step)) < AGREEMENT
        if traced.family == "llama":
            assert relative(checkpoint_rows, rows(reference, step)) > 0.5
        else:
            assert np.array_equal(checkpoint_rows, traced_rows)


def test_result_output_is_the_logits_the_backend_returns(traced: Traced) -> None:
    (result,) = [s for s in traced.steps() if s.step.key == "result_output"]
    logits = traced.traced.logits[0 : len(TOKENS)]
    assert np.array_equal(rows(traced.trace, result), logits)


def test_tracing_changes_neither_the_logits_nor_the_continuation(traced: Traced) -> None:
    n = len(TOKENS)
    assert np.array_equal(traced.traced.logits[0:n], traced.plain.logits[0:n])
    assert traced.traced.continuation == traced.plain.continuation
    assert traced.traced.continuation == traced.reference.continuation
    assert len(traced.plain.continuation or []) == N_PREDICT
    assert traced.plain.trace is None


def test_the_filter_and_the_cap_apply(traced: Traced, tmp_path: Path) -> None:
    hf, gguf = traced.hf, traced.gguf
    only = EvalOptions(trace=TraceRequest(pattern=r"^ffn_act-"))
    filtered = hf.evaluate(gguf, TOKENS, 1, tmp_path / "filtered", only).trace
    assert filtered is not None
    assert filtered.names == ("ffn_act-0", "ffn_act-1") and filtered.omitted == ()
    embeddings = len(TOKENS) * int(traced.config.hidden_size) * 4
    cap = EvalOptions(trace=TraceRequest(max_bytes=embeddings))
    capped = hf.evaluate(gguf, TOKENS, 1, tmp_path / "capped", cap).trace
    assert capped is not None and capped.names == ("inp_embd",)
    expected = [t.name for t in traced.trace.tensors[1:]]
    assert [o.name for o in capped.omitted] == expected
    assert all(o.reason.startswith("over --trace-max-bytes") for o in capped.omitted)


def test_hooks_are_gone_after_the_call_and_after_an_error(traced: Traced, tmp_path: Path) -> None:
    network = traced.hf._network()

    def hooks() -> int:
        modules = network.modules()
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)

    assert hooks() == 0  # after the fixture's traced evaluation
    with TraceWriter(tmp_path / "t", "x", 1, TraceRequest()) as writer:
        prompt_hooks = PromptHooks(network, traced.arch, writer)
        with pytest.raises(RuntimeError), prompt_hooks:
            assert hooks() == len(prompt_hooks.sites) == len(traced.trace.names)
            network(input_ids=torch.tensor([[1.5]]))  # float ids: the embedding refuses
    assert hooks() == 0


def test_the_architecture_comes_from_the_gguf_twin(traced: Traced, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        traced.hf.evaluate(tmp_path / "absent.gguf", TOKENS, 0, tmp_path / "e", TRACE_ALL)
    assert traced.hf.step_runner(traced.gguf).arch == traced.arch


# --- re-running one step ------------------------------------------------------------------


def rerun_all(traced: Traced, trace: Trace) -> dict[str, float | None]:
    """Every step whose inputs `trace` holds, re-run on them: relative L2 against the hf
    trace's own output (None: not re-run)."""
    runner = traced.hf.step_runner(traced.gguf)
    steps = traced.steps()
    by_label = {s.label: s for s in steps}
    held = {s.label for s in steps if find(trace, s) is not None}
    errors: dict[str, float | None] = {}
    for step in steps:
        if not set(step.inputs) <= held:
            continue
        output = runner.rerun(step, [rows(trace, by_label[label]) for label in step.inputs])
        if output is None:
            errors[step.label] = None
            continue
        assert output.dtype == np.float32
        errors[step.label] = relative(output, rows(traced.trace, step))
    return errors


def test_a_rerun_on_hfs_own_inputs_is_its_trace_bit_for_bit(traced: Traced) -> None:
    errors = rerun_all(traced, traced.trace)
    rerun = {s.label for s in traced.steps() if s.step.key not in NOT_ONE_MODULE}
    assert {label: e for label, e in errors.items() if e is not None} == dict.fromkeys(rerun, 0.0)


def test_a_rerun_on_the_references_inputs_reproduces_the_hf_trace(traced: Traced) -> None:
    """On the NumPy reference's tensors (float64 rounded to float32) each step lands
    within float32 rounding of hf's own output, for plain float projections. BitLinear
    quantizes each projection's input to int8 per token, so a 1e-7 difference of input
    can move one value across a rounding boundary: measured 4e-4 on `bitnet-b1.58`."""
    reference = traced.reference.trace
    assert reference is not None
    errors = rerun_all(traced, reference)
    assert len(errors) == len(traced.steps())  # the reference holds every step's inputs
    assert {label.split()[-1] for label, e in errors.items() if e is None} == NOT_ONE_MODULE
    bound = 1e-3 if traced.family == B158 else AGREEMENT
    measured = {label: e for label, e in errors.items() if e is not None}
    assert all(e < bound for e in measured.values()), measured
    worst = max(measured, key=lambda label: measured[label])
    print(f"\n{traced.family}: rerun on numpy's inputs, worst {worst}: {measured[worst]:.2e}")


def test_a_rerun_takes_one_input_per_label(traced: Traced) -> None:
    """The gated product takes the gate and the up projection: act(gate) * up, with the
    checkpoint's activation (SiLU for llama, relu2 for bitnet)."""
    runner = traced.hf.step_runner(traced.gguf)
    assert runner.name == traced.hf.spec
    (gate_par,) = [s for s in traced.steps() if s.label == "block 0 ffn_gate_par"]
    gate = np.linspace(-3, 3, 2 * int(traced.config.intermediate_size), dtype=np.float32)
    gate, up = gate.reshape(2, -1), np.full((2, gate.size // 2), 3, np.float32)
    with pytest.raises(ValueError, match="takes 2 inputs, given 1"):
        runner.rerun(gate_par, [gate])
    with pytest.raises(ValueError, match=r"block 0 ffn_gate_par cannot take inputs of shapes"):
        runner.rerun(gate_par, [gate, up[:, :5]])
    (q_proj,) = [s for s in traced.steps() if s.label == "block 0 q_proj"]
    with pytest.raises(ValueError, match=r"block 0 q_proj cannot take inputs of shapes"):
        runner.rerun(q_proj, [gate])  # intermediate_size features, not hidden_size
    product = runner.rerun(gate_par, [gate, up])
    act = ACTIVATIONS["silu" if traced.family == "llama" else "relu2"]
    expected = act(gate.astype(np.float64)) * up
    assert product is not None and relative(product, expected) < 1e-6


def test_the_step_runner_loads_the_network(traced: Traced) -> None:
    fresh = open_hf_backend("hf:again", traced.hf.checkpoint.directory, 1, "float32")
    assert fresh._model is None
    runner = fresh.step_runner(traced.gguf)
    assert fresh._model is not None and runner.network is fresh._model
    fresh.close()


def test_the_checkpoint_dtype_is_what_a_rerun_computes_in(tmp_path: Path) -> None:
    """`--hf-dtype checkpoint` on the bf16 `bitnet-b1.58` twin: the trace holds bf16
    values (as float32) and a re-run on them, computed in bf16, gives them back exactly."""
    twin = generate_twin(B158, "tiny", ("f32",), 5, tmp_path)
    hf = open_hf_backend("hf:bf16", twin.checkpoint, 1, "checkpoint")
    gguf = twin.ggufs["f32"]
    evaluation = hf.evaluate(gguf, TOKENS, 0, tmp_path / "e", TRACE_ALL)
    assert hf.identity()["compute_dtype"] == "bfloat16" and evaluation.trace is not None
    trace = evaluation.trace
    (norm,) = [s for s in bind(B158, 2) if s.label == "block 1 ffn_norm"]
    (inp,) = [s for s in bind(B158, 2) if s.label == "block 1 ffn_inp"]
    normed = rows(trace, norm)
    assert not (normed.view(np.uint32) & 0xFFFF).any()  # bf16 values: no low mantissa bits
    again = hf.step_runner(gguf).rerun(norm, [rows(trace, inp)])
    assert again is not None and np.array_equal(again, normed)
    hf.close()


@pytest.mark.parametrize(
    ("name", "op"),
    [("silu", "SILU"), ("swish", "SILU"), ("relu2", "RELU2"), ("gelu", "GELU")],
)
def test_the_activation_op_is_named_by_the_modules_class(name: str, op: str) -> None:
    from transformers.activations import ACT2FN

    assert activation_op(ACT2FN[name]) == op
