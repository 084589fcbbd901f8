"""`xtask clean-cache`: show what the caches hold, and remove what the user picks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bitnet_xtask.cache import CacheEntry, cache_entries, check_selection, remove_entries
from bitnet_xtask.commands.common import reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import ConsoleReporter, human_bytes


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


@click.command("clean-cache")
@click.option("--yes", is_flag=True, help="Remove every listed cache without asking.")
@click.option(
    "--dry-run", is_flag=True, help="List the caches and what --yes would do; remove nothing."
)
@click.option("--json", "json_lines", is_flag=True, help="JSON events on stdout.")
@click.option(
    "--models", type=click.Path(path_type=Path), default=Path("models"), show_default=True
)
@click.option(
    "--fixtures",
    type=click.Path(path_type=Path),
    default=Path("crossval/fixtures"),
    show_default=True,
)
def clean_cache_command(
    yes: bool, dry_run: bool, json_lines: bool, models: Path, fixtures: Path
) -> None:
    """List models, fetch-cpp builds and crossval fixtures with their sizes; remove some."""
    reporter = ConsoleReporter(json_lines=json_lines, progress=False)

    def say(event: dict[str, object], text: str) -> None:
        if json_lines:
            reporter.emit(event)
        else:
            click.echo(text)

    with reporting(reporter):
        entries = cache_entries(models, fixtures)
        for number, entry in enumerate(entries, start=1):
            link = " (symlink: only the link is removed)" if entry.is_link else ""
            refused = f"  [refused: {entry.refused}]" if entry.refused else ""
            say(
                {"phase": "entry", "index": number, **entry.to_dict()},
                f"{number:>3}  {human_bytes(entry.size):>10}  {entry.name}: {entry.path}"
                f"{link}{refused}",
            )
        if not entries:
            say({"phase": "done", "removed": [], "bytes": 0}, "nothing to clean")
            return
        if dry_run:
            # Exactly what --yes would do: the same entries, judged by the same rule.
            check_selection(entries, entries)
            total = sum(entry.size for entry in entries)
            say(
                {"phase": "done", "removed": [], "bytes": 0},
                f"dry run: --yes would remove {len(entries)} of {len(entries)} "
                f"({human_bytes(total)}); removed nothing",
            )
            return
        selected: list[CacheEntry] = []
        if yes:
            selected = entries
        elif sys.stdin.isatty() and sys.stderr.isatty():
            answer = click.prompt(
                "remove which? (numbers like '1 3', 'all', or nothing)",
                default="",
                show_default=False,
                err=True,
            )
            selected = [entries[i] for i in parse_selection(answer, len(entries))]
        else:
            click.echo("not a terminal: nothing removed (use --yes to remove all)", err=True)
        removed = remove_entries(selected, entries)
        total = sum(entry.size for entry in removed)
        say(
            {"phase": "done", "removed": [str(e.path) for e in removed], "bytes": total},
            f"removed {len(removed)} of {len(entries)} ({human_bytes(total)})",
        )
