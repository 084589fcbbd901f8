"""Issue 12: the CLI speaks one vocabulary (shared options, --json and -v everywhere, no
command importing another's module) and its events are typed, documented and checked
(one TypedDict and one schema definition per event, one renderer table)."""

from __future__ import annotations

import ast
import copy
import io
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, get_args, get_type_hints

import click
import pytest
from conftest import Xtask
from jsonschema import Draft202012Validator

from bitnet_xtask.cache import FIXTURES_DIR, MODELS_DIR
from bitnet_xtask.cli import cli
from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter
from bitnet_xtask.cpp.pins import load_pins
from bitnet_xtask.events import ConsoleReporter, EventSchemaError
from bitnet_xtask.events.render import RENDERERS, renderer
from bitnet_xtask.events.schema import (
    REPORTS,
    VALIDATE_ENV,
    claims,
    definition_for,
    load_schema,
    validator,
)
from bitnet_xtask.events.types import EVENT_TYPES, Comparison
from bitnet_xtask.fixtures import generate_fixture

ROOT = Path(__file__).resolve().parents[1]
COMMANDS_DIR = ROOT / "src" / "bitnet_xtask" / "commands"
ENGINE = Path(__file__).parent / "engines" / "numpy_engine.py"
SHARED_MODULES = {"common", "options", "crossval_shared"}


def _commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    """Every command as the user types it below `xtask` (`crossval verify-receipt`)."""
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        found[prefix + name] = command
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
    return found


def _option(command: click.Command, flag: str) -> click.Option:
    return next(p for p in command.params if isinstance(p, click.Option) and flag in p.opts)


def _described(option: click.Option) -> tuple[Any, ...]:
    """Everything a user sees of an option: names, type, default, help."""
    return (option.opts, option.name, repr(option.type), option.default, option.help,
            option.multiple, option.is_flag)  # fmt: skip


# The CLI speaks one vocabulary


def test_crossval_and_full_crossval_share_one_declaration_of_each_common_option() -> None:
    crossval, full = _commands()["crossval"], _commands()["full-crossval"]
    for flag in ("--prompt", "--prompts", "--n-predict", "--tolerance-profile", "--threads",
                 "--backend-timeout", "--receipt", "--json"):  # fmt: skip
        assert _described(_option(crossval, flag)) == _described(_option(full, flag)), flag
    fetch = _commands()["fetch-cpp"]
    assert _described(_option(full, "--jobs")) == _described(_option(fetch, "--jobs"))
    assert _described(_option(full, "--ref"))[2] == _described(_option(fetch, "--ref"))[2]


def test_folder_defaults_and_reference_names_come_from_one_place() -> None:
    from bitnet_xtask.crossval.backends import DEFAULT_TIMEOUT
    from bitnet_xtask.crossval.pipeline import FullCrossvalRequest
    from bitnet_xtask.crossval.request import CrossvalRequest
    from bitnet_xtask.download import DownloadOptions

    commands = _commands()
    models = [_option(commands["clean-cache"], "--models"),
              _option(commands["full-crossval"], "--out"),
              _option(commands["download-model"], "--out")]  # fmt: skip
    fixtures = [_option(commands["clean-cache"], "--fixtures"),
                _option(commands["full-crossval"], "--fixtures-dir"),
                _option(commands["gen-fixtures"], "--output")]  # fmt: skip
    assert {o.default for o in models} == {MODELS_DIR} == {DownloadOptions().out}
    assert {o.default for o in fixtures} == {FIXTURES_DIR}
    request = FullCrossvalRequest()
    assert (request.models_dir, request.fixtures_dir) == (MODELS_DIR, FIXTURES_DIR)
    # The core's defaults are the CLI's (options.py cannot import the core: NumPy).
    assert options.N_PREDICT == CrossvalRequest(models=()).n_predict == request.n_predict
    assert options.BACKEND_TIMEOUT == DEFAULT_TIMEOUT == request.timeout
    from bitnet_xtask.crossval.hf_backend import DTYPES

    assert options.HF_DTYPES == DTYPES
    assert options.HF_DTYPES[0] == CrossvalRequest(models=()).hf_dtype == request.hf_dtype
    for name in ("fetch-cpp", "full-crossval"):
        choice = _option(commands[name], "--ref").type
        assert isinstance(choice, click.Choice)
        assert tuple(choice.choices) == tuple(load_pins()), name


def test_every_command_takes_json_and_preflight_keeps_format() -> None:
    for name, command in _commands().items():
        if not (isinstance(command, click.Group) and not command.invoke_without_command):
            assert _option(command, "--json").name == "json_lines", name
    for name in ("preflight", "gpu-preflight"):
        assert _option(_commands()[name], "--format").default == "text"


def test_preflight_json_is_format_json(xtask: Xtask) -> None:
    env = xtask.env(BITNET_GPU_FAKE="cuda")
    by_format = xtask.run("gpu-preflight", "--format", "json", env=env)
    by_json = xtask.run("gpu-preflight", "--json", env=env)
    assert by_format.code == by_json.code == 0, by_json.stderr
    assert json.loads(by_json.stdout) == json.loads(by_format.stdout)
    assert json.loads(by_json.stdout)["cuda"] is True
    report = xtask.run("preflight", "--json", "--binary", sys.executable, env=env)
    assert report.code in (0, 1) and "compiled" in json.loads(report.stdout), report.stderr
    both = xtask.run("gpu-preflight", "--format", "text", "--json", env=env)
    assert both.code == 2 and "not both" in both.stderr
    fifo = xtask.home / "fifo"
    os.mkfifo(fifo)
    refused = xtask.run("preflight", "--json", "--binary", str(fifo), env=env)
    (error,) = refused.events()
    assert refused.code == 2 and error["phase"] == "error" and error["command"] == "preflight"


def test_json_errors_name_their_command(xtask: Xtask, tmp_path: Path) -> None:
    run = xtask.run("crossval", "verify-receipt", str(tmp_path / "none.json"), "--json")
    (error,) = run.events()
    assert run.code == 2 and error["command"] == "crossval verify-receipt", run.stdout


def test_global_verbose_reaches_every_command(xtask: Xtask, tmp_path: Path) -> None:
    run = xtask.run("-v", "gen-fixtures", "--output", str(tmp_path / "fx"))
    assert run.code == 0 and 'debug: event {"phase":"fixture"' in run.stderr, run.stderr
    quiet = xtask.run("gen-fixtures", "--output", str(tmp_path / "fx"))
    assert quiet.code == 0 and "debug:" not in quiet.stderr
    listed = xtask.run("-v", "clean-cache", "--dry-run", "--fixtures", str(tmp_path / "fx"))
    assert listed.code == 0 and '"command":"clean-cache"' in listed.stderr, listed.stderr


def test_the_reporter_comes_from_the_click_context(capsys: pytest.CaptureFixture[str]) -> None:
    crossval = _commands()["crossval"]
    assert isinstance(crossval, click.Group)
    root = click.Context(cli, info_name="xtask", obj={"verbose": True})
    group = click.Context(crossval, parent=root, info_name="crossval")
    leaf = click.Context(crossval.commands["verify-receipt"], parent=group, info_name="verify")
    reporter = make_reporter(leaf, json_lines=True)
    reporter.debug("loud")
    reporter.emit({"phase": "error", "code": 2, "msg": "m", "hint": None})
    out, err = capsys.readouterr()
    assert json.loads(out)["command"] == "crossval verify-receipt"
    assert err == "debug: loud\n"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "bitnet_xtask.commands":
            found |= {f"bitnet_xtask.commands.{alias.name}" for alias in node.names}
    return found


def test_no_command_imports_another_commands_module() -> None:
    for path in COMMANDS_DIR.glob("*.py"):
        siblings = {m.rsplit(".", 1)[1] for m in _imports(path)
                    if m.startswith("bitnet_xtask.commands.")}  # fmt: skip
        assert siblings <= SHARED_MODULES, (path.name, siblings - SHARED_MODULES)


def test_no_command_prints_around_its_reporter() -> None:
    for path in COMMANDS_DIR.glob("*.py"):
        source = path.read_text()
        assert "click.echo(" not in source and "print(" not in source, path.name
        assert "json.dumps" not in source, path.name
        assert not re.search(r"\bif (not )?json_lines\s*:", source), path.name


# Events and results are typed


def _event_definitions() -> dict[str, dict[str, Any]]:
    return {n: d for n, d in load_schema()["$defs"].items() if any(True for _ in claims(d))}


def test_the_schema_is_valid_and_every_definition_has_a_valid_example() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    top = Draft202012Validator(schema)
    for name in [*_event_definitions(), *REPORTS.values()]:
        examples = schema["$defs"][name].get("examples", [])
        assert examples, f"{name} has no example"
        for example in examples:
            assert list(validator(name).iter_errors(example)) == [], (name, example)
            if name in _event_definitions():
                assert definition_for(example) == name
                assert top.is_valid(example), name  # exactly one of the top oneOf


def test_each_typed_dict_is_its_schema_definition() -> None:
    definitions = _event_definitions()
    assert {t.__name__ for t in EVENT_TYPES} == set(definitions)
    for kind in EVENT_TYPES:
        definition = definitions[kind.__name__]
        keys = kind.__required_keys__ | kind.__optional_keys__  # type: ignore[attr-defined]
        assert set(definition["properties"]) == keys, kind.__name__
        # `command` is stamped by the command's reporter where the emitter leaves it out.
        required = kind.__required_keys__ | {"command"}  # type: ignore[attr-defined]
        assert set(definition["required"]) == required, kind.__name__
        hints = get_type_hints(kind)
        assert get_args(hints["phase"]) == (definition["properties"]["phase"]["const"],)
        if "command" in kind.__required_keys__:  # type: ignore[attr-defined]
            assert get_args(hints["command"]) == (definition["properties"]["command"]["const"],)


def test_done_is_told_apart_by_command_and_commands_are_the_clis() -> None:
    claimed = [key for d in _event_definitions().values() for key in claims(d)]
    assert len(claimed) == len(set(claimed))  # one definition per (phase, command)
    done = {command for phase, command in claimed if phase == "done"}
    assert done == {"download-model", "clean-cache", "fetch-cpp", "crossval",
                    "full-crossval", "crossval verify-receipt", "models fetch"}  # fmt: skip
    errors = {command for phase, command in claimed if phase == "error"}
    commands = {name for name, c in _commands().items()
                if not (isinstance(c, click.Group) and not c.invoke_without_command)}  # fmt: skip
    assert errors == commands


def test_every_documented_event_has_a_renderer() -> None:
    for definition in _event_definitions().values():
        for phase, command in claims(definition):
            assert (phase, command) in RENDERERS or (phase, None) in RENDERERS, (phase, command)


def test_the_readme_lists_every_event_of_every_command() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("### JSON events (every command)", 1)[1].split("\n#", 1)[0]
    every = sorted(command for _, command in claims(load_schema()["$defs"]["Failure"]))
    listed = set()
    for phase, commands in re.findall(r"^\| `([a-z]+)` \| ([^|]+) \|", section, re.MULTILINE):
        names = every if commands.strip() == "every command" else commands.split(",")
        listed |= {(phase, name.strip()) for name in names}
    claimed = {key for d in _event_definitions().values() for key in claims(d)}
    assert listed == claimed


def test_validation_fails_loudly_and_the_suite_turns_it_on() -> None:
    assert os.environ[VALIDATE_ENV] == "1"  # conftest: every CLI run of the suite checks
    out = io.StringIO()
    reporter = ConsoleReporter(json_lines=True, command="fetch-cpp", stdout=out)
    assert reporter._validate  # the switch, read from the environment
    with pytest.raises(EventSchemaError, match="receipt"):
        reporter.emit({"phase": "done", "path": "bin", "built": True, "cached": False})  # type: ignore[arg-type]
    with pytest.raises(EventSchemaError, match="no event"):
        ConsoleReporter(json_lines=True, stdout=out).emit(
            {"phase": "step", "step": "model", "index": 1, "of": 3}
        )
    assert out.getvalue() == ""  # nothing invalid was written
    reporter.emit({"phase": "done", "path": "bin", "built": True, "cached": False,
                   "receipt": "r.json"})  # fmt: skip
    assert json.loads(out.getvalue())["command"] == "fetch-cpp"


def test_nan_is_written_as_null_and_read_as_nan() -> None:
    event: Comparison = {"phase": "comparison", "model": "m.gguf", "candidate": "numpy",
                         "passed": False, "summary": {"max_abs_diff": math.nan,
                         "rms_diff": math.inf, "min_cosine": 1.0, "max_kl": 0.0,
                         "top1_agreement": 1.0}}  # fmt: skip
    out = io.StringIO()
    ConsoleReporter(json_lines=True, command="crossval", stdout=out).emit(event)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    written = json.loads(out.getvalue(), parse_constant=refuse)
    assert written["summary"]["max_abs_diff"] is None and written["summary"]["rms_diff"] is None
    example = copy.deepcopy(load_schema()["$defs"]["CrossvalDone"]["examples"][0])
    example["models"][0]["comparisons"][0]["summary"]["max_abs_diff"] = None
    table = renderer(example).text(example)
    assert (
        table is not None
        and "nan" in table
        and "pass (strict)" in table
        and table.startswith("model")
    )


def _engine() -> str:
    argv = [sys.executable, str(ENGINE), "{model}", "{tokens}", "{logits}", "{continuation}",
            "{n_predict}"]  # fmt: skip
    return "cmd:" + shlex.join(argv)


def test_crossval_done_carries_the_summary_table_a_person_sees(
    xtask: Xtask, tmp_path: Path
) -> None:
    model = generate_fixture("tiny", "llama", "f32", 4, tmp_path).model
    ids = tmp_path / "ids.txt"
    ids.write_text("1 20 30 40")
    args = ["crossval", "--model", str(model), "--backend", "numpy", "--backend", _engine(),
            "--tokens-file", str(ids), "--n-predict", "2"]  # fmt: skip
    machine = xtask.run(*args, "--receipt", str(tmp_path / "a.json"), "--json", timeout=300)
    assert machine.code == 0, machine.stderr
    done = machine.events()[-1]
    assert (done["phase"], done["command"], done["passed"]) == ("done", "crossval", True)
    (row,) = done["models"]
    (comparison,) = row["comparisons"]
    receipt = json.loads((tmp_path / "a.json").read_text())
    recorded = receipt["models"][0]["runs"][0]["comparisons"][0]
    assert comparison["summary"] == recorded["metrics"]["summary"]
    assert comparison["positions"] == recorded["metrics"]["n_positions"] == 4
    assert comparison["greedy"] == {"first_divergence": None}
    assert "model " not in machine.stderr  # the table is the human form of `done`
    person = xtask.run(*args, "--receipt", str(tmp_path / "b.json"), timeout=300)
    assert person.code == 0 and person.stdout == "", person.stderr
    assert "pass (strict)" in person.stderr and f"receipt: {tmp_path / 'b.json'}" in person.stderr
    verified = xtask.run("crossval", "verify-receipt", str(tmp_path / "a.json"), "--json")
    (checked,) = verified.events()
    assert checked["command"] == "crossval verify-receipt" and checked["passed"] is True
