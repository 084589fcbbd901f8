"""`xtask download-model`: the adapter between click and `bitnet_xtask.download`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.commands.options import hub_transfer, json_output, models_folder, no_progress
from bitnet_xtask.download.defaults import DEFAULT_FILE, DEFAULT_REPO
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import Reporter

if TYPE_CHECKING:
    from bitnet_xtask.download import DownloadPlan, FileSpec


@click.command("download-model")
@click.option("--id", "repo_id", default=DEFAULT_REPO, show_default=True, help="Repository.")
@click.option(
    "--file",
    "files",
    multiple=True,
    help=f"Path inside the repository; repeatable.  [default: {DEFAULT_FILE}]",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File listing many files (`path [sha256]` lines, or JSON).",
)
@models_folder("--out")
@click.option("--rev", default="main", show_default=True, help="Branch, tag or commit.")
@click.option("--sha256", help="Expected SHA-256 (hex) of the file.")
@click.option("--force", is_flag=True, help="Download again even if the file is current.")
@no_progress
@click.option("--verbose", is_flag=True, help="Debug output on stderr.")
@json_output
@click.option(
    "--connections",
    type=click.IntRange(1, 64),
    help="Parallel ranged streams.  [default: 4 for files >= 64 MiB, else 1]",
)
@hub_transfer
@click.option("--dry-run", is_flag=True, help="Print the plan; download nothing.")
@click.pass_context
def download_model_command(
    ctx: click.Context,
    /,
    repo_id: str,
    files: Sequence[str],
    manifest: Path | None,
    out: Path,
    rev: str,
    sha256: str | None,
    force: bool,
    no_progress: bool,
    verbose: bool,
    json_lines: bool,
    connections: int | None,
    dry_run: bool,
    **transfer: Any,
) -> None:
    """Fetch a GGUF (or any file) from Hugging Face or a mirror: resumable, verified."""
    reporter = make_reporter(
        ctx, json_lines, progress=False if no_progress else None, verbose=verbose
    )
    with reporting(reporter):
        from bitnet_xtask.download import DownloadOptions, download_files, plan_download

        specs = _file_specs(files, manifest, sha256)
        options = DownloadOptions(
            repo_id=repo_id,
            revision=rev,
            out=out,
            force=force,
            connections=connections,
            **transfer,
        )
        if dry_run:
            _emit_plans(reporter, plan_download(specs, options, reporter))
            return
        download_files(specs, options, reporter)


def _emit_plans(reporter: Reporter, plans: Sequence[DownloadPlan]) -> None:
    for plan in plans:
        reporter.emit(
            {
                "phase": "plan",
                "url": plan.url,
                "path": str(plan.path),
                "total": plan.size,
                "start": plan.resume_from,
                "free_bytes": plan.free_bytes,
                "connections": plan.connections,
                "commit": plan.commit,
                "up_to_date": plan.up_to_date,
            }
        )


def _file_specs(files: Sequence[str], manifest: Path | None, sha256: str | None) -> list[FileSpec]:
    from bitnet_xtask.download import FileSpec, read_manifest

    if manifest is not None:
        if files or sha256:
            raise UsageError("--manifest can't be combined with --file or --sha256")
        return read_manifest(manifest)
    if sha256 and len(files) > 1:
        raise UsageError("--sha256 applies to one file", "use --manifest to give a hash per file")
    return [FileSpec(path, sha256) for path in (files or [DEFAULT_FILE])]
