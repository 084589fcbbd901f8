"""`crossval --trace` on real engines and real bugs (issue 15's proofs).

- A conversion bug: a llama twin's GGUF whose block-1 `ffn_up` rows were reversed after
  conversion. The NumPy reference and the pinned llama.cpp read the same wrong file and
  agree with each other, so only the checkpoint (`hf:`) shows it; the trace localises it
  to block 1's FFN up projection and says that the step is right for the file's weights.
- The SiLU deviation: the BitNet twin (relu2) against the pinned llama.cpp, which fuses
  SiLU into its gated product (SWIGLU), and against bitnet.cpp's 2024 fork, which
  computes `ffn_silu` alone: block 0's FFN activation on both, with the activation each
  side computed named.
- The map, proven on both engine generations: every step of `trace_map.bind` is found in
  a real trace of each (but the activation upstream fuses), and every one agrees with
  the NumPy reference of the engine's graph within the strict profile.

Needs torch and transformers for the first two, and both C++ builds (session fixtures).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Xtask
from test_crossval_cli import checked

from bitnet_xtask.crossval.gguf_file import GGUFFile
from bitnet_xtask.fixtures import TwinResult, generate_fixture, generate_twin

PROMPT = "Hello world, the BitNet model of 42 tokens"


def crossval(xtask: Xtask, tmp_path: Path, model: Path, *backends: str) -> dict[str, Any]:
    receipt = tmp_path / "receipt.json"
    args = [a for b in backends for a in ("--backend", b)]
    run = xtask.run("crossval", "--model", str(model), *args, "--prompt", PROMPT,
                    "--n-predict", "2", "--trace", "--receipt", str(receipt),
                    timeout=600)  # fmt: skip
    assert run.code == 1, run.stderr  # every case here fails its logits somewhere
    document = checked(json.loads(receipt.read_text()))
    document["stderr"] = run.stderr
    return document


def traces_of(receipt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (run,) = receipt["models"][0]["runs"]
    return {t["candidate"]: t for t in run["traces"]}


def steps_of(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["label"]: s for s in trace["steps"]}


@pytest.fixture(scope="module")
def twins(llama_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TwinResult]:
    pytest.importorskip("torch", reason="the hf: backend needs torch (pip install '.[hf]')")
    pytest.importorskip("transformers", reason="the hf: backend needs transformers")
    out = tmp_path_factory.mktemp("twins")
    source = llama_bin.parent / "src"  # the build's verified sdist tree holds the converter
    return {
        family: generate_twin(family, "tiny", ("f32",), 5, out, llama_source=source)
        for family in ("llama", "bitnet")
    }


def reverse_rows(source: Path, target: Path, tensor: str) -> None:
    """A copy of `source` whose f32 `tensor` has its rows in reverse order: what a
    converter that wrote them backwards would leave, every header byte the same."""
    shutil.copyfile(source, target)
    info = GGUFFile(target).tensor_infos[tensor]
    assert info.type_id == 0  # F32
    rows = np.memmap(target, dtype="<f4", mode="r+", offset=info.offset, shape=info.shape)
    rows[:] = rows[::-1].copy()
    rows.flush()
    del rows


def test_a_conversion_bug_only_the_checkpoint_shows_is_localised_to_block_1s_ffn(
    twins: dict[str, TwinResult], llama_bin: Path, xtask: Xtask, tmp_path: Path
) -> None:
    twin, cpp = twins["llama"], f"cpp:{llama_bin.parent}"
    altered = tmp_path / "altered.gguf"
    reverse_rows(twin.ggufs["f32"], altered, "blk.1.ffn_up.weight")
    receipt = crossval(xtask, tmp_path, altered, f"hf:{twin.checkpoint}", "numpy", cpp)
    for candidate in ("numpy", cpp):
        trace = traces_of(receipt)[candidate]
        assert trace["first_divergence"] == "block 1 ffn_up", trace["message"]
        first = steps_of(trace)["block 1 ffn_up"]
        assert first["metrics"]["rel_err"] > 1.0
        assert first["inputs_rel_err"] < 0.02  # its input, block 1's ffn_norm, is right
        assert first["added_rel_err"] > 1.0  # the checkpoint's up_proj on that input differs
        assert first["file_rel_err"] < 1e-5  # the file's weights give the engine's output
        assert (
            "the file's weights differ from the checkpoint's (a conversion bug)"
            in (trace["message"])
        )
    # the engines agree with each other: comparing engines alone would call it parity
    (shared,) = receipt["models"][0]["runs"][0]["shared_deviations"]
    assert set(shared["candidates"]) == {"numpy", cpp}


def test_the_silu_deviation_is_localised_to_block_0s_activation_on_both_generations(
    twins: dict[str, TwinResult], llama_bin: Path, bitnet_bin: Path, xtask: Xtask, tmp_path: Path
) -> None:
    twin = twins["bitnet"]
    hf, upstream, fork = (
        f"hf:{twin.checkpoint}",
        f"cpp:{llama_bin.parent}",
        f"cpp:{bitnet_bin.parent}",
    )
    receipt = crossval(xtask, tmp_path, twin.ggufs["f32"], hf, "numpy", upstream, fork)
    traces = traces_of(receipt)
    assert traces["numpy"]["first_divergence"] is None  # the reference follows relu2
    # upstream fuses SiLU into its gated product (ffn_sub_out-0, a SWIGLU): it shows there
    assert traces[upstream]["first_divergence"] == "block 0 ffn_gate_par"
    assert steps_of(traces[upstream])["block 0 ffn_act"]["note"] == "not in the candidate's trace"
    # the fork computes ffn_silu-0 on its own: the activation itself
    assert traces[fork]["first_divergence"] == "block 0 ffn_act"
    for spec, label in ((upstream, "ffn_gate_par"), (fork, "ffn_act")):
        message = traces[spec]["message"]
        assert f"first divergence: block 0 {label} ({spec}: silu, {hf}: relu2)" in message
        assert "the step itself is wrong" in message
        first = steps_of(traces[spec])[f"block 0 {label}"]
        assert first["inputs_rel_err"] < 0.02 and first["added_rel_err"] > 0.3
        within = [s for s in traces[spec]["steps"][: traces[spec]["steps"].index(first)]]
        assert all(s["metrics"] is None or not s["over"] for s in within)


ENGINE_GRAPH = {"llama": "numpy", "bitnet": "numpy:llama.cpp-graph"}
#: What a generation's graph does not hold as a tensor of its own: upstream fuses the
#: activation into the gated product (a SWIGLU).
FUSED = {"llama.cpp": {"ffn_act"}, "bitnet.cpp": set()}


@pytest.mark.parametrize("engine", ["llama.cpp", "bitnet.cpp"])
@pytest.mark.parametrize("arch", ["llama", "bitnet"])
def test_the_map_finds_every_step_on_both_engine_generations(
    request: pytest.FixtureRequest, xtask: Xtask, tmp_path: Path, engine: str, arch: str
) -> None:
    bin_dir: Path = request.getfixturevalue("llama_bin" if engine == "llama.cpp" else "bitnet_bin")
    model = generate_fixture("small", arch, "f32", 3, tmp_path).model
    ids = tmp_path / "ids.txt"
    ids.write_text("1 5 9 20 33 7 100 4 8 12")
    receipt_path = tmp_path / "receipt.json"
    cpp = f"cpp:{bin_dir.parent}"
    run = xtask.run("crossval", "--model", str(model), "--backend", ENGINE_GRAPH[arch],
                    "--backend", cpp, "--tokens-file", str(ids), "--trace",
                    "--receipt", str(receipt_path), timeout=600)  # fmt: skip
    assert run.code == 0, run.stderr
    (trace,) = traces_of(checked(json.loads(receipt_path.read_text()))).values()
    missing = {s["label"].rsplit(" ", 1)[-1] for s in trace["steps"] if s["metrics"] is None}
    assert missing == FUSED[engine], [s["note"] for s in trace["steps"] if s["note"]]
    assert trace["first_divergence"] is None, trace["message"]
    worst = max(s["metrics"]["rel_err"] for s in trace["steps"] if s["metrics"])
    assert worst < 5e-3  # f32 weights: the f16 KV cache's rounding, measured <= 1.6e-3
    attention = steps_of(trace)["block 0 kqv_out"]
    assert attention["added_rel_err"] > 1e-5  # the f16 cache rounds here, and only here
    assert steps_of(trace)["block 0 q_rope"]["added_rel_err"] < 1e-5
