"""`events.schema.json`: the documented shape of every `--json` event, and the check
that an event has it.

The schema's top level is a `oneOf` over every event type, which is what a consumer
validates against; but a `oneOf` failure only says "not valid under any", so the check
here picks the one definition an event claims by its `phase` and `command` and reports
that definition's own errors. With `XTASK_VALIDATE_EVENTS=1` the console reporter runs
this check on every event before writing it (the test suite turns it on for every run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

VALIDATE_ENV = "XTASK_VALIDATE_EVENTS"
#: The one JSON document a report command (preflight, gpu-preflight, models inventory)
#: writes instead of events.
REPORTS = {
    "preflight": "PreflightReport",
    "gpu-preflight": "GpuPreflightReport",
    "models inventory": "ModelsInventoryReport",
    "models list": "ModelsListReport",
    "models verify": "ModelsVerifyReport",
}


class EventSchemaError(RuntimeError):
    """An event (or report) that is not what the schema documents: a bug in xtask, so it
    is not an `XtaskError` and keeps its traceback."""


def validation_requested() -> bool:
    """Whether `XTASK_VALIDATE_EVENTS` asks for every event to be checked."""
    return os.environ.get(VALIDATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@cache
def load_schema() -> dict[str, Any]:
    """The packaged schema document."""
    text = resources.files(__package__).joinpath("events.schema.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def claims(definition: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The (phase, command) pairs an event definition describes (none for a report)."""
    properties = definition.get("properties", {})
    phase = properties.get("phase", {}).get("const")
    command = properties.get("command", {})
    if phase is None:
        return
    for name in command.get("enum", [command.get("const")]):
        yield phase, name


@cache
def _definitions() -> dict[tuple[str, str], str]:
    """(phase, command) -> the name of the definition that documents that event."""
    found: dict[tuple[str, str], str] = {}
    for name, definition in load_schema()["$defs"].items():
        for key in claims(definition):
            if key in found:
                raise EventSchemaError(f"{key} is claimed by both {found[key]} and {name}")
            found[key] = name
    return found


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for one definition, its references resolved in the whole schema
    (jsonschema is imported only when validation is asked for: it costs every CLI start)."""
    from jsonschema import Draft202012Validator

    schema = load_schema()
    return Draft202012Validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{name}"})


def definition_for(event: Mapping[str, Any]) -> str:
    """The name of the definition an event claims by its phase and command."""
    key = (str(event.get("phase")), str(event.get("command")))
    name = _definitions().get(key)
    if name is None:
        raise EventSchemaError(
            f"no event phase={key[0]!r} command={key[1]!r} in events.schema.json: {event}"
        )
    return name


def _check(name: str, document: Mapping[str, Any]) -> None:
    errors = sorted(validator(name).iter_errors(document), key=lambda e: list(e.path))
    if errors:
        where = "; ".join(f"{'/'.join(map(str, e.path)) or '<top>'}: {e.message}" for e in errors)
        raise EventSchemaError(f"{name} does not match events.schema.json ({where}): {document}")


def check_event(event: Mapping[str, Any]) -> None:
    """Raise `EventSchemaError` unless the event is one the schema documents."""
    _check(definition_for(event), event)


def check_report(command: str, document: Mapping[str, Any]) -> None:
    """Raise `EventSchemaError` unless the document is the report `command` documents."""
    if command not in REPORTS:
        raise EventSchemaError(f"{command!r} writes no report document")
    _check(REPORTS[command], document)
