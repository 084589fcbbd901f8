"""`xtask clean-cache`: show what the caches hold, and remove what the user picks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bitnet_xtask.cache import CacheEntry, cache_entries, check_selection, remove_entries
from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import Reporter
from bitnet_xtask.events import types as event_types


def parse_selection(answer: str, count: int) -> list[int]:
    """`1 3`, `1,3`, `all`, or nothing; 1-based numbers from the list."""
    answer = answer.strip().lower()
    if answer in ("", "none", "n", "no"):
        return []
    if answer in ("all", "a", "y", "yes"):
        return list(range(count))
    picks = []
    for token in answer.replace(",", " ").split():
        if not token.isdigit() or not 1 <= int(token) <= count:
            raise UsageError(f"not a number from the list: {token!r}", f"use 1-{count} or 'all'")
        picks.append(int(token) - 1)
    return sorted(set(picks))


def _entry_event(index: int, entry: CacheEntry) -> event_types.CacheEntry:
    return {
        "phase": "entry",
        "index": index,
        "name": entry.name,
        "path": str(entry.path),
        "bytes": entry.size,
        "link": entry.is_link,
        "removable": entry.removable,
        "refused": entry.refused,
    }


def _selection(entries: list[CacheEntry], yes: bool, reporter: Reporter) -> list[CacheEntry]:
    """Everything with --yes; else what a person at a terminal picks; else nothing."""
    if yes:
        return entries
    if sys.stdin.isatty() and sys.stderr.isatty():
        answer = click.prompt(
            "remove which? (numbers like '1 3', 'all', or nothing)",
            default="",
            show_default=False,
            err=True,
        )
        return [entries[i] for i in parse_selection(answer, len(entries))]
    reporter.info("not a terminal: nothing removed (use --yes to remove all)")
    return []


@click.command("clean-cache")
@click.option("--yes", is_flag=True, help="Remove every listed cache without asking.")
@click.option(
    "--dry-run", is_flag=True, help="List the caches and what --yes would do; remove nothing."
)
@options.json_output
@options.models_folder("--models", help="The models folder of download-model.")
@options.fixtures_folder("--fixtures", help="The crossval fixtures folder.")
@click.pass_context
def clean_cache_command(
    ctx: click.Context, yes: bool, dry_run: bool, json_lines: bool, models: Path, fixtures: Path
) -> None:
    """List models, fetch-cpp builds and crossval fixtures with their sizes; remove some."""
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        entries = cache_entries(models, fixtures)
        for number, entry in enumerate(entries, start=1):
            reporter.emit(_entry_event(number, entry))
        removed: list[CacheEntry] = []
        if dry_run:
            # Exactly what --yes would do: the same entries, judged by the same rule.
            check_selection(entries, entries)
        elif entries:
            removed = remove_entries(_selection(entries, yes, reporter), entries)
        reporter.emit(
            {
                "phase": "done",
                "removed": [str(entry.path) for entry in removed],
                "bytes": sum(entry.size for entry in removed),
                "listed": len(entries),
                "listed_bytes": sum(entry.size for entry in entries),
                "dry_run": dry_run,
            }
        )
