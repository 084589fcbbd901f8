"""Issue 10, crossval / GGUF reader / fixtures share: the fault-and-abuse suite.

Everything here is real: the CLI in a subprocess, engines that hang, fork children or
leave a FIFO behind, device nodes made with mknod (root only), FIFOs, symlinks, hostile
GGUF headers cut from a real fixture, a full tmpfs and a read-only mount (root only).
Each test names the defect it guards (#N of issue 10).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Xtask, wait_for
from mounts import Mounts

from bitnet_xtask.crossval.reference import load_model
from bitnet_xtask.errors import XtaskError
from bitnet_xtask.fixtures import generate_fixture

ENGINE = Path(__file__).parent / "engines" / "numpy_engine.py"
IS_ROOT = os.geteuid() == 0
NOT_ROOT = "needs root (mknod of a device node, mount of a tmpfs)"


def engine(*extra: str) -> str:
    """The NumPy engine as a cmd: backend."""
    argv = [sys.executable, str(ENGINE), "{model}", "{tokens}", "{logits}", "{continuation}",
            "{n_predict}", *extra]  # fmt: skip
    return "cmd:" + shlex.join(argv)


def script_engine(path: Path, body: str, *args: str) -> str:
    """A cmd: backend running the Python `body` (argv: *args, then model tokens logits
    continuation)."""
    path.write_text(body)
    argv = [sys.executable, str(path), *args, "{model}", "{tokens}", "{logits}", "{continuation}"]
    return "cmd:" + shlex.join(argv)


MARKER_ENGINE = "import sys; open(sys.argv[1], 'w').write('ran')\n"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fx")
    generate_fixture("tiny", "llama", "f32", 3, out)
    return out


@pytest.fixture
def model(fixture_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny llama fixture (with its metadata)."""
    for suffix in (".gguf", ".json"):
        source = fixture_dir / f"llama-tiny-f32-seed3{suffix}"
        (tmp_path / source.name).write_bytes(source.read_bytes())
    return tmp_path / "llama-tiny-f32-seed3.gguf"


@pytest.fixture
def ids(tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("1 5 7 9\n")
    return path


def crossval(xtask: Xtask, model: Path, *args: str, **kwargs: Any) -> Any:
    """`xtask crossval --model MODEL ...` in the private working directory (a default
    receipt lands there, never in the checkout)."""
    kwargs.setdefault("cwd", xtask.workdir)
    return xtask.run("crossval", "--model", str(model), *args, **kwargs)


def no_traceback(stderr: str) -> bool:
    return "Traceback" not in stderr


# --- special files, made for real -------------------------------------------------------


def make_null_device(path: Path) -> None:
    """A character device with /dev/null's numbers, in a temp dir (root only)."""
    if not IS_ROOT:
        pytest.skip(NOT_ROOT)
    os.mknod(path, 0o666 | stat.S_IFCHR, Path("/dev/null").stat().st_rdev)


def make_node(kind: str, path: Path, elsewhere: Path) -> Callable[[], bool]:
    """Make a `kind` node at `path`; returns a check that it is still intact."""
    if kind == "chardev":
        make_null_device(path)
        rdev = path.lstat().st_rdev
        return lambda: stat.S_ISCHR(path.lstat().st_mode) and path.lstat().st_rdev == rdev
    if kind == "fifo":
        os.mkfifo(path)
        return lambda: stat.S_ISFIFO(path.lstat().st_mode)
    if kind == "dir":
        path.mkdir()
        return lambda: path.is_dir() and not list(path.iterdir())
    if kind == "symlink":
        elsewhere.write_text("precious\n")
        path.symlink_to(elsewhere)
        return lambda: path.is_symlink() and elsewhere.read_text() == "precious\n"
    raise AssertionError(kind)


NODE_KINDS = ["chardev", "fifo", "dir", "symlink"]


# --- #2: atomic writes never replace what is not a regular file -------------------------


@pytest.mark.parametrize("kind", NODE_KINDS)
def test_2_receipt_that_is_not_a_regular_file_is_refused_before_any_engine_runs(
    xtask: Xtask, model: Path, ids: Path, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "receipt.json"
    intact = make_node(kind, target, tmp_path / "elsewhere.txt")
    marker = tmp_path / "engine-ran"
    marking = script_engine(tmp_path / "m.py", MARKER_ENGINE, str(marker))
    run = crossval(xtask, model, "--tokens-file", str(ids), "--receipt", str(target),
                   "--backend", "numpy", "--backend", marking)  # fmt: skip
    assert run.code == 2, run.stderr
    assert no_traceback(run.stderr)
    assert not marker.exists(), "the engine ran before the receipt path was checked"
    assert intact(), f"the {kind} at the receipt path was changed"


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest.mark.parametrize("which", [".gguf", ".json"])
def test_2_gen_fixtures_refuses_a_target_that_is_not_a_regular_file_and_writes_nothing(
    xtask: Xtask, tmp_path: Path, kind: str, which: str
) -> None:
    out = tmp_path / "fx"
    out.mkdir()
    target = out / f"llama-tiny-f32-seed0{which}"
    intact = make_node(kind, target, tmp_path / "elsewhere.txt")
    run = xtask.run("gen-fixtures", "--output", str(out))
    assert run.code == 2, run.stderr
    assert "refusing to replace" in run.stderr or "is a directory" in run.stderr, run.stderr
    assert no_traceback(run.stderr)
    assert intact()
    assert sorted(p.name for p in out.iterdir()) == [target.name], "something else was written"


def test_2_a_link_planted_at_the_fixture_temp_name_is_not_written_through(
    tmp_path: Path,
) -> None:
    """gguf-py opens the temporary file with a plain open(): a symlink at its predictable
    name (`.<file>.<pid>.tmp`) would have had its target overwritten with the model."""
    out, victim = tmp_path / "fx", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    (out / f".llama-tiny-f32-seed0.gguf.{os.getpid()}.tmp").symlink_to(victim)
    result = generate_fixture("tiny", "llama", "f32", 0, out)
    assert victim.read_text() == "precious\n"
    assert not result.model.is_symlink() and result.size_bytes == result.model.stat().st_size
    assert sorted(p.name for p in out.iterdir()) == [result.model.name, result.metadata.name]


def test_2_full_crossval_checks_the_receipt_before_generating_anything(
    xtask: Xtask, tmp_path: Path
) -> None:
    os.mkfifo(receipt := tmp_path / "r.json")
    fixtures = tmp_path / "fx"
    run = xtask.run("full-crossval", "--fixtures-dir", str(fixtures), "--receipt", str(receipt),
                    "--backend", "numpy", "--backend", engine(), timeout=60)  # fmt: skip
    assert run.code == 2 and "a FIFO" in run.stderr, run.stderr
    assert not fixtures.exists()


# --- #6: deadlines and the model's context ----------------------------------------------

HANGING_ENGINE = """\
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "1000"])
with open(sys.argv[1] + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(1000)
"""


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting for init (it was killed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()]


def test_6_a_hanging_engine_and_its_children_are_killed_at_the_backend_timeout(
    xtask: Xtask, model: Path, ids: Path, tmp_path: Path
) -> None:
    pidfile, receipt = tmp_path / "pids", tmp_path / "r.json"
    hang = script_engine(tmp_path / "hang.py", HANGING_ENGINE, str(pidfile))
    started = time.monotonic()
    run = crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", hang, "--backend-timeout", "3", "--receipt", str(receipt),
                   timeout=90)  # fmt: skip
    assert time.monotonic() - started < 60
    assert run.code == 1, run.stderr
    assert no_traceback(run.stderr)
    document = json.loads(receipt.read_text())
    (entry,) = document["models"]
    assert "no answer within 3 s" in entry["error"], entry["error"]
    assert [f["metric"] for f in document["verdict"]["failures"]] == ["backend_error"]
    engine_pid, child_pid = pids(pidfile)
    wait_for(lambda: gone(engine_pid) and gone(child_pid), 10, "the engine's group to die")
    assert xtask.run("crossval", "verify-receipt", str(receipt)).code == 1


def test_6_ctrl_c_during_an_engine_kills_its_group_and_leaves_no_receipt_dir(
    xtask: Xtask, model: Path, ids: Path, tmp_path: Path
) -> None:
    """The engine runs in its own session (so the deadline can kill its whole group),
    which also means a terminal's Ctrl-C no longer reaches it: crossval must kill it."""
    pidfile = tmp_path / "pids"
    hang = script_engine(tmp_path / "hang.py", HANGING_ENGINE, str(pidfile))
    argv = xtask.argv(["crossval", "--model", str(model), "--tokens-file", str(ids),
                       "--backend", "numpy", "--backend", hang])  # fmt: skip
    process = subprocess.Popen(argv, env=xtask.env(), cwd=xtask.workdir, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(pidfile.exists, 60, "the engine to start")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.returncode == 130, stderr
    engine_pid, child_pid = pids(pidfile)
    wait_for(lambda: gone(engine_pid) and gone(child_pid), 10, "the engine's group to die")
    assert not (xtask.workdir / "crossval").exists()  # #22 too


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "1e308"])
def test_6_the_backend_timeout_is_a_finite_positive_number(xtask: Xtask, value: str) -> None:
    for command in ("crossval", "full-crossval"):
        run = xtask.run(command, "--backend-timeout", value)
        assert run.code == 2 and "Invalid value for '--backend-timeout'" in run.stderr


def test_6_n_predict_past_the_context_is_refused_before_any_engine_runs(
    xtask: Xtask, model: Path, ids: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "engine-ran"
    run = crossval(xtask, model, "--tokens-file", str(ids), "--n-predict", "253",
                   "--backend", "numpy",
                   "--backend", script_engine(tmp_path / "m.py", MARKER_ENGINE, str(marker)),
                   cwd=xtask.workdir)  # fmt: skip
    assert run.code == 2, run.stderr
    assert "4 tokens + --n-predict 253 = 257 positions, more than the 256-token context" in (
        run.stderr
    )
    assert not marker.exists()
    assert not (xtask.workdir / "crossval").exists()  # #22: nothing left behind
    fits = crossval(xtask, model, "--tokens-file", str(ids), "--n-predict", "2",
                    "--backend", "numpy", "--backend", engine(), cwd=xtask.workdir)  # fmt: skip
    assert fits.code == 0, fits.stderr


def test_6_a_prompt_longer_than_the_context_can_hold_is_refused_before_tokenizing(
    llama_bin: Path, xtask: Xtask, model: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Paris " * 10_000 + "\n")  # 60,000 characters
    started = time.monotonic()
    run = crossval(xtask, model, "--prompts", str(prompts), "--backend", f"cpp:{llama_bin.parent}",
                   "--backend", "numpy", timeout=60)  # fmt: skip
    assert run.code == 2, run.stderr
    assert "prompt 1: a prompt of 60,000 bytes cannot fit the 256-token context" in run.stderr
    assert time.monotonic() - started < 30


def test_6_a_prompt_that_tokenizes_past_the_context_is_refused_before_evaluating(
    llama_bin: Path, xtask: Xtask, model: Path, tmp_path: Path
) -> None:
    """Short enough in bytes to be tokenized, too many tokens once it is."""
    run = crossval(xtask, model, "--prompt", "x" * 300, "--backend", f"cpp:{llama_bin.parent}",
                   "--backend", "numpy", timeout=60)  # fmt: skip
    assert run.code == 2, run.stderr
    assert "more than the 256-token context" in run.stderr
    assert no_traceback(run.stderr)


# --- #7 / #12: every file crossval reads on a user's behalf -----------------------------


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("option", ["--prompts", "--tokens-file", "--tolerance-profile"])
@pytest.mark.parametrize("kind", ["fifo", "chardev", "deep"])
def test_7_inputs_that_are_not_bounded_regular_files_are_refused(
    xtask: Xtask, model: Path, tmp_path: Path, option: str, kind: str
) -> None:
    path = tmp_path / "input"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        make_null_device(path)
    else:
        path.write_text(deep_json())
    run = crossval(xtask, model, option, str(path), "--backend", "numpy", "--backend", "numpy",
                   timeout=30)  # fmt: skip
    assert run.code == 2, run.stderr
    assert no_traceback(run.stderr)
    deep = {"--prompts": "cannot fit the 256-token context",  # the text is the prompt
            "--tokens-file": "expected non-negative integer token ids",
            "--tolerance-profile": "nested too deeply"}  # fmt: skip
    assert (deep[option] if kind == "deep" else "is not a regular file") in run.stderr


@pytest.mark.parametrize("kind", ["fifo", "chardev", "deep", "huge"])
def test_7_verify_receipt_reads_only_a_bounded_regular_file(
    xtask: Xtask, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "receipt.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        make_null_device(path)
    elif kind == "deep":
        path.write_text(deep_json())
    else:
        with path.open("wb") as handle:  # sparse: 300 MiB that take no disk
            handle.truncate(300 << 20)
    run = xtask.run("crossval", "verify-receipt", str(path), timeout=30)
    assert run.code == 2, run.stderr
    assert no_traceback(run.stderr)
    expected = {"fifo": "a FIFO", "chardev": "a character device", "deep": "nested too deeply",
                "huge": "more than the"}[kind]  # fmt: skip
    assert expected in run.stderr, run.stderr


def test_12_deep_values_in_a_receipt_do_not_crash_the_schema_check(
    xtask: Xtask, model: Path, ids: Path, tmp_path: Path
) -> None:
    receipt = tmp_path / "r.json"
    assert crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                    "--backend", engine(), "--receipt", str(receipt)).code == 0  # fmt: skip
    text = receipt.read_text().replace('"tokens": [\n', f'"tokens": [{deep_json(900)},\n', 1)
    receipt.write_text(text)
    run = xtask.run("crossval", "verify-receipt", str(receipt))
    assert run.code == 2 and "is not of type 'integer'" in run.stderr, run.stderr
    assert len(run.stderr) < 2_000  # the 1,800-character value is clipped


ENGINE_OUTPUTS = {
    "logits FIFO": "import os, sys; os.mkfifo(sys.argv[3])\n",
    "deep continuation": (
        "import sys, numpy as np, json\n"
        "ids = json.load(open(sys.argv[2]))['tokens']\n"
        "np.save(sys.argv[3], np.zeros((len(ids), 384), dtype=np.float32))\n"
        f"open(sys.argv[4], 'w').write('{{\"tokens\": {deep_json()}}}')\n"
    ),
}


@pytest.mark.parametrize("output", list(ENGINE_OUTPUTS))
def test_7_an_engine_that_leaves_a_fifo_or_deep_json_fails_alone(
    xtask: Xtask, model: Path, ids: Path, tmp_path: Path, output: str
) -> None:
    receipt = tmp_path / "r.json"
    bad = script_engine(tmp_path / "bad.py", ENGINE_OUTPUTS[output])
    run = crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", bad, "--receipt", str(receipt), timeout=60)  # fmt: skip
    assert run.code == 1, run.stderr
    assert no_traceback(run.stderr)
    (entry,) = json.loads(receipt.read_text())["models"]
    assert "a FIFO" in entry["error"] or "nested too deeply" in entry["error"], entry["error"]


def test_7_a_fifo_where_the_model_metadata_would_be_is_not_read(
    xtask: Xtask, model: Path, ids: Path
) -> None:
    metadata = model.with_suffix(".json")
    metadata.unlink()
    os.mkfifo(metadata)
    run = crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", engine(), timeout=60)  # fmt: skip
    assert run.code == 0, run.stderr


# --- #11: GGUF headers, hostile or cut short ----------------------------------------------


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _key_value_offset(data: bytes, key: str) -> int:
    """Where the value of metadata `key` starts (after its length, name and type)."""
    name = key.encode()
    at = data.index(struct.pack("<Q", len(name)) + name)
    return at + 8 + len(name) + 4


def _first_tensor_info(data: bytes) -> int:
    name = b"token_embd.weight"
    return data.index(struct.pack("<Q", len(name)) + name)


HOSTILE: dict[str, Callable[[bytes], bytes]] = {
    "n_tensors 2^62": lambda d: _patched(d, 8, struct.pack("<Q", 1 << 62)),
    "n_kv 2^62": lambda d: _patched(d, 16, struct.pack("<Q", 1 << 62)),
    "token list 2^60": lambda d: _patched(
        d, _key_value_offset(d, "tokenizer.ggml.tokens") + 4, struct.pack("<Q", 1 << 60)
    ),
    "array of arrays": lambda d: _patched(
        d, _key_value_offset(d, "tokenizer.ggml.tokens"), struct.pack("<I", 9)
    ),
    "key length 2^40": lambda d: _patched(d, 24, struct.pack("<Q", 1 << 40)),
    "n_dims 2^31": lambda d: _patched(
        d, _first_tensor_info(d) + 8 + len(b"token_embd.weight"), struct.pack("<I", 1 << 31)
    ),
    "tensor offset 2^60": lambda d: _patched(
        d, _first_tensor_info(d) + 8 + 17 + 4 + 16 + 4, struct.pack("<Q", 1 << 60)
    ),
}


def _as_q8_0_rows_of_250(data: bytes) -> bytes:
    """token_embd.weight declared q8_0 (type 8, blocks of 32) with rows of 250."""
    dims = _first_tensor_info(data) + 8 + 17 + 4
    data = _patched(data, dims, struct.pack("<Q", 250))
    return _patched(data, dims + 16, struct.pack("<I", 8))


HOSTILE["not a whole block"] = _as_q8_0_rows_of_250

TRUNCATIONS = {"header": 20, "mid-keys": 2000, "mid-tensor-infos": -1, "mid-data": -100}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_11_a_hostile_gguf_header_is_refused_by_name(
    xtask: Xtask, model: Path, ids: Path, name: str
) -> None:
    model.with_suffix(".json").unlink()
    model.write_bytes(HOSTILE[name](model.read_bytes()))
    run = crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", "numpy", timeout=30)  # fmt: skip
    assert run.code == 2, run.stderr
    assert no_traceback(run.stderr), run.stderr
    assert f"cannot read {model} as GGUF" in run.stderr


@pytest.mark.parametrize("where", list(TRUNCATIONS))
@pytest.mark.parametrize("with_metadata", [True, False])
def test_11_a_truncated_gguf_says_where_it_was_cut(
    xtask: Xtask, model: Path, ids: Path, where: str, with_metadata: bool
) -> None:
    data = model.read_bytes()
    cut = TRUNCATIONS[where]
    if where == "mid-tensor-infos":
        cut = _first_tensor_info(data) + 30
    size = cut if cut > 0 else len(data) + cut
    model.write_bytes(data[:size])
    if not with_metadata:  # the sidecar is not a reason to skip the header
        model.with_suffix(".json").unlink()
    run = crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", "numpy", timeout=30)  # fmt: skip
    assert run.code == 2, run.stderr
    assert no_traceback(run.stderr)
    assert f"truncated at byte {size}" in run.stderr, run.stderr


@pytest.mark.parametrize("kind", ["chardev", "fifo", "/dev/zero"])
def test_11_a_model_that_is_not_a_regular_file_is_named_as_such(
    xtask: Xtask, tmp_path: Path, ids: Path, kind: str
) -> None:
    path = Path("/dev/zero") if kind == "/dev/zero" else tmp_path / "m.gguf"
    if kind == "chardev":
        make_null_device(path)
    elif kind == "fifo":
        os.mkfifo(path)
    run = crossval(xtask, path, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", "numpy", timeout=30)  # fmt: skip
    assert run.code == 2, run.stderr
    assert "is not a regular file" in run.stderr and "does not exist" not in run.stderr


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("llama.attention.head_count", 0, "attention.head_count is 0"),
        ("llama.block_count", 1 << 30, "only 21 tensors"),
        ("llama.attention.head_count_kv", 3, "do not share 3 KV heads evenly"),
    ],
)
def test_11_hostile_hyperparameters_are_refused_by_name(
    model: Path, key: str, value: int, complaint: str
) -> None:
    data = model.read_bytes()
    model.write_bytes(_patched(data, _key_value_offset(data, key), struct.pack("<I", value)))
    with pytest.raises(XtaskError, match=complaint):
        load_model(model)


# --- #15: a receipt must hold what its settings call for ---------------------------------


@pytest.fixture
def failing_receipt(xtask: Xtask, model: Path, ids: Path, tmp_path: Path) -> Path:
    """numpy vs a good engine and a wrong one: the second comparison fails."""
    receipt = tmp_path / "failing.json"
    run = crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", engine(), "--backend", engine("--perturb", "1:3:9"),
                   "--receipt", str(receipt))  # fmt: skip
    assert run.code == 1, run.stderr
    return receipt


def _forge_pass(document: dict[str, Any]) -> None:
    document["verdict"] = {"passed": True, "failures": []}


def _drop_runs(document: dict[str, Any]) -> None:
    document["models"][0]["runs"] = []
    _forge_pass(document)


def _drop_failing_comparison(document: dict[str, Any]) -> None:
    run = document["models"][0]["runs"][0]
    run["comparisons"] = [c for c in run["comparisons"] if c["verdict"]["passed"]]
    _forge_pass(document)


def _empty_error(document: dict[str, Any]) -> None:
    document["models"][0]["runs"] = []
    document["models"][0]["error"] = ""
    _forge_pass(document)


def _drop_tokenization_failure(document: dict[str, Any]) -> None:
    """A tokenization mismatch recorded in the parity, its failure deleted."""
    _drop_failing_comparison(document)
    run = document["models"][0]["runs"][0]
    candidate = run["comparisons"][0]["candidate"]
    run["tokenization"] = [{"backend": candidate, "tokens": [1, 5, 8, 9], "match": False,
                            "first_difference": 2}]  # fmt: skip


EDITS = {
    "runs deleted": (_drop_runs, 2, "runs"),
    "failing comparison deleted": (_drop_failing_comparison, 1, "comparisons"),
    "empty error, no runs": (_empty_error, 1, "contradicts the comparisons"),
    "tokenization failure deleted": (_drop_tokenization_failure, 1, "tokenization failure"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_15_deleting_what_failed_does_not_make_a_receipt_verify(
    xtask: Xtask, failing_receipt: Path, edit: str
) -> None:
    change, code, complaint = EDITS[edit]
    document = json.loads(failing_receipt.read_text())
    change(document)
    failing_receipt.write_text(json.dumps(document))
    run = xtask.run("crossval", "verify-receipt", str(failing_receipt))
    assert run.code == code, run.stderr
    assert complaint in run.stderr, run.stderr


# --- #20 and #14: a full disk, a read-only directory (real mounts, root only) --------------


TINY_MODEL_BYTES = 5_520_416  # llama-tiny-f32: 1,348 pages of 4 KiB


@pytest.mark.parametrize(("size", "full_at"), [("1m", ".gguf"), ("5521408", ".json")])
def test_20_gen_fixtures_on_a_full_disk_exits_10_with_the_errno_text(
    xtask: Xtask, tmp_path: Path, mounts: Mounts, size: str, full_at: str
) -> None:
    disk = mounts.tmpfs(tmp_path / "small", size)
    run = xtask.run("gen-fixtures", "--output", str(disk))
    assert run.code == 10, run.stderr
    assert f"seed0{full_at}: No space left on device" in run.stderr, run.stderr
    assert "None" not in run.stderr and no_traceback(run.stderr)
    left = sorted(p.name for p in disk.iterdir())
    assert not [name for name in left if name.endswith(".tmp")], left
    assert left == ([] if full_at == ".gguf" else ["llama-tiny-f32-seed0.gguf"])


def test_20_a_receipt_on_a_full_disk_exits_10_with_a_receipt_hint(
    xtask: Xtask, model: Path, ids: Path, tmp_path: Path, mounts: Mounts
) -> None:
    disk = mounts.tmpfs(tmp_path / "small", "4k")
    run = crossval(xtask, model, "--tokens-file", str(ids), "--backend", "numpy",
                   "--backend", engine(), "--receipt", str(disk / "r.json"))  # fmt: skip
    assert run.code == 10, run.stderr
    assert "disk full while writing the receipt" in run.stderr
    assert "download" not in run.stderr
    assert list(disk.iterdir()) == []


def test_14_full_crossval_with_a_read_only_fixtures_dir(
    llama_bin: Path, xtask: Xtask, tmp_path: Path, mounts: Mounts
) -> None:
    """Nothing to reuse: exit 2, named; the fixture already there: used, nothing written."""
    backends: tuple[str, ...] = ()  # the reference named by the variable, and numpy
    env = xtask.env(XTASK_CPP_PREFIX_LLAMA_CPP=str(llama_bin.parent))  # step 2: no build
    fixtures = mounts.tmpfs(tmp_path / "ro", "16m", read_only=True)
    run = xtask.run("full-crossval", "--fixtures-dir", str(fixtures), *backends,
                    "--receipt", str(tmp_path / "r.json"), env=env, timeout=60)  # fmt: skip
    assert run.code == 2, run.stderr
    assert "step 1/3 (model) failed: cannot write fixtures" in run.stderr
    assert "Read-only file system" in run.stderr and "--fixtures-dir" in run.stderr
    assert no_traceback(run.stderr)
    mounts.remount(fixtures, read_only=False)
    generate_fixture("tiny", "llama", "f32", 0, fixtures)
    mounts.remount(fixtures, read_only=True)
    run = xtask.run("full-crossval", "--fixtures-dir", str(fixtures), *backends,
                    "--receipt", str(tmp_path / "r.json"), env=env, timeout=60)  # fmt: skip
    assert run.code == 0, run.stderr
    assert "is up to date" in run.stderr


# --- #22: nothing left behind by a run that failed before writing --------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--backend", "numpy"),  # one backend
        ("--backend", "numpy", "--backend", "bogus:x"),
        ("--backend", "numpy", "--backend", "numpy", "--tolerance-profile", "missing.json"),
    ],
)
def test_22_a_run_that_fails_before_writing_leaves_no_receipt_directory(
    xtask: Xtask, model: Path, ids: Path, args: tuple[str, ...]
) -> None:
    run = crossval(xtask, model, "--tokens-file", str(ids), *args, cwd=xtask.workdir)
    assert run.code == 2, run.stderr
    assert not (xtask.workdir / "crossval").exists()
