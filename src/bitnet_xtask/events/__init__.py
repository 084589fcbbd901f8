"""Events: what commands and core modules report, typed, documented and rendered in one
place each (`types`, `events.schema.json`, `render`), and the reporters that write them
(`reporter`). Core code imports `Reporter` and `NullReporter` from here."""

from bitnet_xtask.events.render import human_bytes
from bitnet_xtask.events.reporter import ConsoleReporter, NullReporter, Reporter
from bitnet_xtask.events.schema import EventSchemaError
from bitnet_xtask.events.types import Event

__all__ = [
    "ConsoleReporter",
    "Event",
    "EventSchemaError",
    "NullReporter",
    "Reporter",
    "human_bytes",
]
