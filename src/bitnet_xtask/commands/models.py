"""`xtask models`: the adapters over `bitnet_xtask.models` (list, fetch, verify, inventory)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import Reporter
from bitnet_xtask.events.render import human_bytes

if TYPE_CHECKING:
    from bitnet_xtask.models.catalog import Catalog
    from bitnet_xtask.models.fetch import FetchResult
    from bitnet_xtask.models.inventory import Inventory, InventoryRow
    from bitnet_xtask.models.listing import ListedModel
    from bitnet_xtask.models.verify import Verification


@click.group("models")
def models_group() -> None:
    """Named, pinned models: list the catalog, fetch, verify, and inventory what is here."""


def _catalog(path: Path | None) -> Catalog:
    from bitnet_xtask.models.catalog import load_catalog

    return load_catalog(path)


@models_group.command("list")
@options.model_catalog
@options.models_folder("--models")
@options.json_output
@click.pass_context
def list_command(ctx: click.Context, catalog: Path | None, models: Path, json_lines: bool) -> None:
    """The catalog's models, and which are on disk."""
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        from bitnet_xtask.models.listing import list_models

        listed = list_models(_catalog(catalog), models)
    reporter.report(
        {"models_dir": str(models), "models": [_listed_json(m, models) for m in listed]},
        _list_text(listed),
    )


def _listed_json(listed: ListedModel, models_dir: Path) -> dict[str, Any]:
    entry = listed.entry
    return {
        "name": entry.name,
        "repo": entry.repo,
        "revision": entry.revision,
        "pinned": entry.pinned,
        "license": entry.license,
        "description": entry.description,
        "backends": list(entry.backends),
        "source": entry.source,
        "size": listed.size,
        "presence": listed.presence,
        "files": [
            {
                "path": f.path,
                "local_path": str(entry.local_path(models_dir, f)),
                "size": f.size,
                "sha256": f.sha256,
                "archive": f.archive,
            }
            for f in entry.files
        ],
    }


def _list_text(listed: list[ListedModel]) -> str:
    rows = [("NAME", "REPO@REVISION", "SIZE", "ON DISK", "LICENSE", "BACKENDS")]
    for item in listed:
        entry = item.entry
        revision = entry.revision[:12] if len(entry.revision) == 40 else entry.revision
        on_disk = f"{item.presence} ({item.files_present}/{len(entry.files)})"
        size = "?" if item.size is None else human_bytes(item.size)
        backends = ", ".join(entry.backends) or "-"
        rows.append((entry.name, f"{entry.repo}@{revision}", size, on_disk,
                     entry.license or "-", backends))  # fmt: skip
    return _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@models_group.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--all", "fetch_all", is_flag=True, help="Every model in the catalog.")
@click.option(
    "--locked",
    is_flag=True,
    help="Fetch exactly what the lockfile records; refuse anything that would differ.",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Connections in all, shared by the files fetched at once.",
)
@options.model_catalog
@options.model_lock
@options.models_folder("--models")
@options.no_progress
@options.json_output
@options.hub_transfer
@click.pass_context
def fetch_command(
    ctx: click.Context,
    /,
    names: tuple[str, ...],
    fetch_all: bool,
    locked: bool,
    connections: int,
    catalog: Path | None,
    lock_path: Path | None,
    models: Path,
    no_progress: bool,
    json_lines: bool,
    **transfer: Any,
) -> None:
    """Every file of the named models: concurrent, resumable, verified, locked."""
    reporter = make_reporter(ctx, json_lines, progress=False if no_progress else None)
    with reporting(reporter):
        from bitnet_xtask.download import DownloadOptions
        from bitnet_xtask.models.fetch import FetchRequest, fetch_models
        from bitnet_xtask.models.hash_cache import HashCache
        from bitnet_xtask.models.lock import lock_path as default_lock

        if fetch_all == bool(names):
            raise UsageError("name the models to fetch, or give --all (not both)")
        known = _catalog(catalog)
        request = FetchRequest(
            names=tuple(known.entries) if fetch_all else names,
            models_dir=models,
            lock_path=default_lock(lock_path, catalog),
            locked=locked,
            connections=connections,
            download=DownloadOptions(**transfer),
        )
        cache = HashCache.load(note=reporter.debug)
        try:
            result = fetch_models(request, known, cache, reporter)
        finally:
            cache.save()
        _report_fetch(reporter, result)


def _report_fetch(reporter: Reporter, result: FetchResult) -> None:
    files = [file for model in result.models for file in model.files]
    reporter.emit(
        {
            "phase": "done",
            "models": [
                {
                    "name": model.name,
                    "commit": model.commit,
                    "files": [
                        {
                            "path": str(f.path),
                            "size": f.size,
                            "sha256": f.sha256,
                            "source": f.source,
                            "unpacked": None if f.unpacked is None else str(f.unpacked),
                        }
                        for f in model.files
                    ],
                }
                for model in result.models
            ],
            "bytes": sum(f.size for f in files),
            "downloaded": sum(1 for f in files if f.source == "network"),
            "lock": None if result.lock is None else str(result.lock),
        }
    )


@models_group.command("verify")
@click.argument("names", nargs=-1)
@options.model_catalog
@options.model_lock
@options.models_folder("--models")
@options.json_output
@click.pass_context
def verify_command(
    ctx: click.Context,
    names: tuple[str, ...],
    catalog: Path | None,
    lock_path: Path | None,
    models: Path,
    json_lines: bool,
) -> None:
    """Size and sha256 of every file on disk against the catalog (exit 13 on a mismatch)."""
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        from bitnet_xtask.models.lock import lock_path as default_lock
        from bitnet_xtask.models.lock import read_lock
        from bitnet_xtask.models.verify import verify_models

        lock = read_lock(default_lock(lock_path, catalog))
        verification = verify_models(_catalog(catalog), lock, models, names)
    # The report is the one document on stdout: a failure after it is said on stderr only.
    reporter.report(_verify_json(verification), _verify_text(verification))
    verification.raise_for_problems()


def _verify_json(verification: Verification) -> dict[str, Any]:
    return {
        "files": [
            {
                "model": c.model,
                "path": str(c.path),
                "status": c.status,
                "size": c.size,
                "sha256": c.sha256,
                "expected_size": c.expected_size,
                "expected_sha256": c.expected_sha256,
            }
            for c in verification.checks
        ],
        "ok": verification.ok,
    }


def _verify_text(verification: Verification) -> str:
    if not verification.checks:
        return "no catalog model has a file here (xtask models list)"
    marks = {"ok": "✓", "mismatch": "✗", "missing": "✗", "unpinned": "?"}
    lines = [
        f"{marks[c.status]} {c.model}: {c.path}  {c.problem or c.status}"
        for c in verification.checks
    ]
    counts = {s: sum(1 for c in verification.checks if c.status == s) for s in marks}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


_HEADER = ("PATH", "SIZE", "SHA256", "ARCH", "QUANT", "TOKENIZER", "MATCH")
_SHA_SHOWN = 12


@models_group.command("inventory")
@options.model_catalog
@options.models_folder("--models", help="The models folder to list.", file_okay=False)
@click.option(
    "--no-hf-cache",
    "hf_cache",
    is_flag=True,
    flag_value=False,
    default=True,
    help="Leave the Hugging Face cache out.",
)
@options.json_output
@click.pass_context
def inventory_command(
    ctx: click.Context, catalog: Path | None, models: Path, hf_cache: bool, json_lines: bool
) -> None:
    """Every GGUF in the models folder and the HF cache: size, sha256, architecture,
    quantization, tokenizer, and the catalog model it is (sha256s cached between runs)."""
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        from bitnet_xtask.download.hf_cache import hub_cache_dir
        from bitnet_xtask.models.catalog import load_catalog
        from bitnet_xtask.models.hash_cache import HashCache
        from bitnet_xtask.models.inventory import build_inventory

        given = ctx.get_parameter_source("models") == ParameterSource.COMMANDLINE
        if given and not models.is_dir():
            raise UsageError(f"--models {models} does not exist", "give an existing folder")
        known = load_catalog(catalog)
        cache = HashCache.load(note=reporter.debug)
        hub = hub_cache_dir() if hf_cache else None
        try:
            inventory = build_inventory(models, known, cache, hf_cache=hub)
        finally:
            cache.save()  # what was hashed before a Ctrl-C is not hashed again
    reporter.report(inventory.to_dict(), _inventory_text(inventory))


def _inventory_text(inventory: Inventory) -> str:
    """The table, the unreadable files' reasons, and a summary line."""
    lines = []
    if inventory.rows:
        inside = str(inventory.models_dir / "_")[:-1]  # the folder and a separator
        lines = [_table([_HEADER, *(_cells(inside, row) for row in inventory.rows)])]
    lines += [f"✗ {row.error}" for row in inventory.rows if row.error is not None]
    return "\n".join([*lines, _summary(inventory)])


def _cells(inside: str, row: InventoryRow) -> tuple[str, ...]:
    """A row's cells; a path in the models folder relative to it (`inside` ends with the
    separator: a string prefix, as pathlib's relative_to costs ~50 us a row)."""
    if row.hf is not None:
        place = f"hf:{row.hf.repo}/{row.hf.path}@{row.hf.commit[:7]}"
    else:
        place = str(row.path).removeprefix(inside)
    facts = row.facts
    if row.match is not None:
        match = f"{row.match.model} ({row.match.member or row.match.file})"
    else:
        match = "unreadable" if row.error is not None else "-"
    return (
        place,
        "-" if row.size is None else human_bytes(row.size),
        "-" if row.sha256 is None else row.sha256[:_SHA_SHOWN],
        (facts.architecture if facts else None) or "-",
        (facts.quantization if facts else None) or "-",
        (facts.tokenizer if facts else None) or "-",
        match,
    )


def _summary(inventory: Inventory) -> str:
    where = str(inventory.models_dir)
    if inventory.hf_cache is not None:
        where += f" and the HF cache ({inventory.hf_cache})"
    if not inventory.rows:
        return f"no GGUF files in {where}"
    counts = inventory.summary()
    files = f"{counts['files']} GGUF file{'s' if counts['files'] != 1 else ''}"
    parts = [
        f"{files}, {human_bytes(counts['bytes'])} ({counts['models']} in the models folder, "
        f"{counts['hf_cache']} in the HF cache)",
        f"{counts['matched']} matching the catalog",
        *([f"{counts['errors']} unreadable"] if counts["errors"] else []),
        f"{counts['hashed']} hashed and {counts['parsed']} headers read (the rest from the cache)",
    ]
    return "; ".join(parts)
