"""`crossval --trace`: intermediate tensors from every backend, the first divergent step
named, and error a step adds told from error it inherits.

Real engines and real bugs: the NumPy reference run as llama.cpp's graph of a BitNet
model (SiLU where the model says relu2), the same graph in a `cmd:` engine that writes
its trace as `.npz`, the trace format read back as written. The Hugging Face and
llama.cpp proofs (a conversion bug only the checkpoint shows, the SiLU deviation of a
real llama.cpp build) are in tests/test_trace_proofs.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Xtask
from test_crossval_cli import checked, engine_backend

from bitnet_xtask.crossval.receipt import verdict_errors
from bitnet_xtask.crossval.trace_map import bind, to_file_layout
from bitnet_xtask.crossval.traces import (
    DATA,
    INDEX,
    TraceRequest,
    TraceWriter,
    read_trace,
)
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures import generate_fixture

IDS = "1 5 9 20 33 7 100 4 8 12"


@pytest.fixture(scope="module")
def bitnet_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_fixture("tiny", "bitnet", "f32", 3, tmp_path_factory.mktemp("fx")).model


def traced(xtask: Xtask, tmp_path: Path, model: Path, *backends: str, code: int,
           trace: tuple[str, ...] = ("--trace",)) -> dict[str, Any]:  # fmt: skip
    ids = tmp_path / "ids.txt"
    ids.write_text(IDS)
    receipt = tmp_path / "receipt.json"
    args = [a for b in backends for a in ("--backend", b)]
    run = xtask.run("crossval", "--model", str(model), *args, "--tokens-file", str(ids),
                    *trace, "--n-predict", "2", "--receipt", str(receipt), timeout=300)  # fmt: skip
    assert run.code == code, run.stderr
    document = checked(json.loads(receipt.read_text()))
    document["stderr"] = run.stderr
    return document


def traces_of(receipt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (run,) = receipt["models"][0]["runs"]
    return {t["candidate"]: t for t in run["traces"]}


# --- the format -------------------------------------------------------------------------


def test_a_trace_reads_back_as_written_with_filter_and_cap_listed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    q, q_rope = rng.normal(size=(5, 2, 4)), rng.normal(size=(5, 2, 4))
    norm = rng.normal(size=(5, 8))
    request = TraceRequest(pattern="cur|norm", max_bytes=4 * 80)
    with TraceWriter(tmp_path / "t", "test", 5, request) as writer:
        writer.add("attn_norm-0", norm, "MUL")
        writer.add("Qcur-0", q, "MUL_MAT")
        writer.add("ffn_out-0", norm, "MUL_MAT")  # not matched by the filter
        writer.add("Qcur-0", q_rope, "ROPE")  # over the cap: 80 floats are written already
    trace = read_trace(tmp_path / "t", 5)
    assert [(t.name, t.op, t.shape) for t in trace.tensors] == [
        ("attn_norm-0", "MUL", (5, 8)),
        ("Qcur-0", "MUL_MAT", (5, 2, 4)),
    ]
    assert [(o.name, o.op) for o in trace.omitted] == [("Qcur-0", "ROPE")]
    assert "over --trace-max-bytes" in trace.omitted[0].reason
    np.testing.assert_array_equal(
        trace.positions(trace.find("Qcur-0", ("MUL_MAT",))), q.reshape(5, 8).astype(np.float32)
    )
    assert trace.find("Qcur-0", ("ROPE",)) == []  # capped, so not there: never the wrong one


def test_a_malformed_trace_is_refused_by_name(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t", "test", 2, TraceRequest()) as writer:
        writer.add("l_out-0", np.ones((2, 3)), "ADD")
    index = json.loads((tmp_path / "t" / INDEX).read_text())
    index["tensors"][0]["offset"] = 4  # 24 bytes from byte 4 overruns the 24-byte file
    (tmp_path / "t" / INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"lies outside {DATA}"):
        read_trace(tmp_path / "t", 2)
    (tmp_path / "t" / INDEX).write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an xtask-trace index"):
        read_trace(tmp_path / "t", 2)
    with pytest.raises(UsageError, match="not a regular expression"):
        TraceRequest(pattern="(")


def test_an_npz_trace_names_a_later_step_with_its_op(tmp_path: Path) -> None:
    q, q_rope = np.ones((3, 4), np.float32), np.full((3, 4), 2.0, np.float32)
    savez: Any = np.savez  # its stubs type **arrays as its own keyword arguments
    savez(tmp_path / "t.npz", **{"Qcur-0": q, "Qcur-0@ROPE": q_rope})
    trace = read_trace(tmp_path / "t.npz", 3)
    steps = {s.step.key: s for s in bind("llama", 1)}
    from bitnet_xtask.crossval.trace_compare import find

    projection, rotated = find(trace, steps["q_proj"]), find(trace, steps["q_rope"])
    assert projection is not None and rotated is not None
    np.testing.assert_array_equal(trace.positions(list(projection.parts)), q)
    np.testing.assert_array_equal(trace.positions(list(rotated.parts)), q_rope)


def test_the_llama_converter_layout_interleaves_each_heads_halves() -> None:
    """conversion/llama.py:176-181: per head, rows i and i + d/2 become 2i and 2i + 1."""
    rows = np.arange(8, dtype=np.float32)[None, :]  # one position, 2 heads of 4
    np.testing.assert_array_equal(to_file_layout(rows, 2), [[0, 2, 1, 3, 4, 6, 5, 7]])


def test_the_map_binds_sub_norms_only_for_bitnet_graphs() -> None:
    llama = [s.label for s in bind("llama", 2)]
    bitnet = [s.label for s in bind("bitnet-b1.58", 2)]
    assert "block 0 attn_sub_norm" not in llama and "block 1 ffn_sub_norm" in bitnet
    assert llama[0] == "inp_embd" and llama[-2:] == ["result_norm", "result_output"]
    steps = {s.label: s for s in bind("bitnet", 2)}
    assert steps["block 1 attn_norm"].inputs == ("block 0 l_out",)
    assert steps["block 0 ffn_out"].inputs == ("block 0 ffn_sub_norm",)
    assert steps["result_norm"].inputs == ("block 1 l_out",)


# --- the first divergence, end to end -------------------------------------------------


def test_the_silu_graph_is_localised_to_block_0s_ffn_activation(
    xtask: Xtask, tmp_path: Path, bitnet_tiny: Path
) -> None:
    receipt = traced(xtask, tmp_path, bitnet_tiny, "numpy", "numpy:llama.cpp-graph", code=1)
    trace = traces_of(receipt)["numpy:llama.cpp-graph"]
    assert trace["first_divergence"] == "block 0 ffn_act"
    assert trace["oracle"] == "numpy"
    steps = {s["label"]: s for s in trace["steps"]}
    first = steps["block 0 ffn_act"]
    assert (first["reference"]["op"], first["candidate"]["op"]) == ("RELU2", "SILU")
    assert first["added_rel_err"] > 0.1  # the step itself, not its input
    before = trace["steps"][: [s["label"] for s in trace["steps"]].index("block 0 ffn_act")]
    assert len(before) == 14 and all(s["metrics"]["rel_err"] < 1e-6 for s in before)
    # downstream steps inherit it: each computes right on its own (wrong) inputs
    for label in ("block 0 ffn_sub_norm", "block 0 ffn_out", "block 1 attn_norm"):
        assert steps[label]["over"] and steps[label]["added_rel_err"] < 1e-6, label
    assert steps["block 0 ffn_gate_par"]["added_rel_err"] > 0.1  # act(gate) * up holds act
    assert (
        "first divergence: block 0 ffn_act (numpy:llama.cpp-graph: silu, numpy: relu2)"
        in (trace["message"])
    )
    assert "the step itself is wrong" in trace["message"]
    assert "trace: first divergence: block 0 ffn_act" in receipt["stderr"]  # the summary


def test_verify_receipt_checks_every_traced_step(
    xtask: Xtask, tmp_path: Path, bitnet_tiny: Path
) -> None:
    receipt = traced(xtask, tmp_path, bitnet_tiny, "numpy", "numpy:llama.cpp-graph", code=1)
    receipt.pop("stderr")
    steps = receipt["models"][0]["runs"][0]["traces"][0]["steps"]
    steps[2]["over"] = True  # block 0 q_proj, well within tolerance
    errors = verdict_errors(receipt)
    assert any("block 0 q_proj is recorded over=True" in e for e in errors)
    assert any("the first divergence is recorded as 'block 0 ffn_act'" in e for e in errors)


def test_a_cmd_engine_traces_through_its_npz(
    xtask: Xtask, tmp_path: Path, bitnet_tiny: Path
) -> None:
    wrong = engine_backend("--graph", "llama.cpp", "--trace", "{trace}")
    untraced = engine_backend()
    receipt = traced(xtask, tmp_path, bitnet_tiny, "numpy", wrong, untraced, code=1)
    traces = traces_of(receipt)
    assert list(traces) == [wrong]  # the engine without {trace} gave none, and it is said
    assert f"{untraced} gave no trace" in receipt["stderr"]
    assert traces[wrong]["first_divergence"] == "block 0 ffn_act"
    rope = {s["label"]: s for s in traces[wrong]["steps"]}["block 1 q_rope"]
    assert rope["candidate"] == {"name": "Qcur-1", "op": "ROPE"}  # from "Qcur-1@ROPE"


def test_the_filter_and_the_cap_leave_steps_out_and_say_so(
    xtask: Xtask, tmp_path: Path, bitnet_tiny: Path
) -> None:
    receipt = traced(xtask, tmp_path, bitnet_tiny, "numpy", "numpy:llama.cpp-graph", code=1,
                     trace=("--trace", "^ffn_(gate|act)-0$"))  # fmt: skip
    steps = traces_of(receipt)["numpy:llama.cpp-graph"]["steps"]
    compared = [s["label"] for s in steps if s["metrics"] is not None]
    assert compared == ["block 0 ffn_gate", "block 0 ffn_act"]
    assert receipt["settings"]["trace"]["pattern"] == "^ffn_(gate|act)-0$"
    capped = traced(xtask, tmp_path, bitnet_tiny, "numpy", "numpy:llama.cpp-graph", code=1,
                    trace=("--trace", "--trace-max-bytes", "0"))  # fmt: skip
    trace = traces_of(capped)["numpy:llama.cpp-graph"]
    assert trace["first_divergence"] is None
    assert all(s["note"] == "not in the reference's trace" for s in trace["steps"])
    assert {o["name"] for o in trace["omitted"]["numpy"]} >= {"inp_embd", "result_output"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--trace-max-bytes", "10"), "--trace-max-bytes needs --trace"),
        (("--trace", "(unclosed"), "is not a regular expression"),
    ],
)
def test_bad_trace_options_are_refused_before_anything_runs(
    xtask: Xtask, tmp_path: Path, bitnet_tiny: Path, args: tuple[str, ...], message: str
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(IDS)
    run = xtask.run("crossval", "--model", str(bitnet_tiny), "--backend", "numpy",
                    "--backend", "numpy:llama.cpp-graph", "--tokens-file", str(ids),
                    "--receipt", str(tmp_path / "r.json"), *args)  # fmt: skip
    assert not (tmp_path / "r.json").exists()
    assert run.code == 2 and message in run.stderr, run.stderr


def test_a_damaged_or_misshapen_npz_is_refused_by_name(tmp_path: Path) -> None:
    savez: Any = np.savez  # its stubs type **arrays as its own keyword arguments
    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    savez(tmp_path / "crc.npz", **{"l_out-0": good})
    data = bytearray((tmp_path / "crc.npz").read_bytes())
    at = data.index(good.tobytes())  # stored uncompressed: flip a byte of the array
    data[at] ^= 0xFF
    (tmp_path / "crc.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        read_trace(tmp_path / "crc.npz", 3)
    savez(tmp_path / "at.npz", **{"Qcur-0@": good})
    with pytest.raises(ValueError, match=r"want <name>\.npy or <name>@<OP>\.npy"):
        read_trace(tmp_path / "at.npz", 3)
    savez(tmp_path / "heads.npz", **{"Qcur-0": good.reshape(1, 3, 4)})  # head-major
    with pytest.raises(ValueError, match=r"not a float tensor of \(3, ...\): positions first"):
        read_trace(tmp_path / "heads.npz", 3)


def test_an_npz_trace_is_filtered_and_capped_as_the_request_says(tmp_path: Path) -> None:
    savez: Any = np.savez
    rows = np.ones((2, 4), np.float32)
    savez(tmp_path / "t.npz", **{"attn_norm-0": rows, "ffn_out-0": rows, "l_out-0": rows})
    trace = read_trace(tmp_path / "t.npz", 2, TraceRequest(pattern="norm|out", max_bytes=32))
    assert [t.name for t in trace.tensors] == ["attn_norm-0"]  # 32 bytes: one tensor
    assert [(o.name, o.reason) for o in trace.omitted] == [
        ("ffn_out-0", "over --trace-max-bytes (32 bytes)"),
        ("l_out-0", "over --trace-max-bytes (32 bytes)"),
    ]


def test_a_pattern_only_python_reads_is_refused() -> None:
    """The harness matches with ECMAScript's std::regex: one pattern, one meaning."""
    for pattern in ("(?i)ffn", "(?P<n>ffn)", r"\Affn"):
        with pytest.raises(UsageError, match="only Python's regular expressions have"):
            TraceRequest(pattern=pattern)
    TraceRequest(pattern=r"^(?:ffn|attn)_\w+-0$")  # what both read alike


def test_the_default_byte_cap_is_one_number() -> None:
    from bitnet_xtask.commands import options
    from bitnet_xtask.crossval.traces import DEFAULT_MAX_BYTES

    assert options.TRACE_MAX_BYTES == DEFAULT_MAX_BYTES


def test_a_step_of_other_shapes_is_a_divergence_not_a_pass(tmp_path: Path) -> None:
    from bitnet_xtask.crossval.trace_compare import compare_traces

    steps = bind("llama", 1)
    for name, width in (("ref", 8), ("cand", 6)):
        with TraceWriter(tmp_path / name, name, 2, TraceRequest()) as writer:
            writer.add("attn_norm-0", np.ones((2, width)), "MUL")
    ref, cand = read_trace(tmp_path / "ref", 2), read_trace(tmp_path / "cand", 2)
    compared = compare_traces(("ref", "cand"), (ref, cand), steps, 0.02, 4)
    assert compared.first_divergence is not None
    assert compared.first_divergence.label == "block 0 attn_norm"
    assert compared.first_divergence.status == "incomparable"
    assert "shapes differ" in compared.message()
    nothing = compare_traces(("ref", "cand"), (ref, read_trace(tmp_path / "ref", 2)),
                             steps[2:], 0.02, 4)  # fmt: skip
    assert nothing.message().startswith("no traced tensor could be compared")
