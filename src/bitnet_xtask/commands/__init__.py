"""Each CLI command in its own module: parse, call the core, hand events to a reporter.

Core modules are imported inside the command functions, so `xtask <command>` loads only
what that command needs.
"""
