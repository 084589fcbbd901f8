"""`xtask download-model`: the adapter between click and `bitnet_xtask.download`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bitnet_xtask.commands.common import Seconds, make_reporter, reporting
from bitnet_xtask.commands.options import json_output, models_folder
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
@click.option("--no-progress", is_flag=True, help="No progress bar (auto-off without a TTY).")
@click.option("--verbose", is_flag=True, help="Debug output on stderr.")
@click.option(
    "--base-url",
    help="Hub or mirror URL.  [default: $HF_ENDPOINT or https://huggingface.co]",
)
@json_output
@click.option("--retries", type=click.IntRange(0), default=3, show_default=True)
@click.option(
    "--timeout",
    type=Seconds(allow_zero=False),
    default=1800.0,
    show_default=True,
    help="Seconds to wait for a connection.",
)
@click.option(
    "--stall-timeout",
    type=Seconds(allow_zero=False),
    default=60.0,
    show_default=True,
    help="Seconds without a byte before a stream is retried from its offset.",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 64),
    help="Parallel ranged streams.  [default: 4 for files >= 64 MiB, else 1]",
)
@click.option(
    "--lock-timeout",
    type=Seconds(),
    default=1800.0,
    show_default=True,
    help="Seconds to wait for another process downloading the same file.",
)
@click.option("--no-hf-cache", is_flag=True, help="Don't reuse blobs from the HF cache.")
@click.option("--dry-run", is_flag=True, help="Print the plan; download nothing.")
@click.pass_context
def download_model_command(
    ctx: click.Context,
    repo_id: str,
    files: Sequence[str],
    manifest: Path | None,
    out: Path,
    rev: str,
    sha256: str | None,
    force: bool,
    no_progress: bool,
    verbose: bool,
    base_url: str | None,
    json_lines: bool,
    retries: int,
    timeout: float,
    stall_timeout: float,
    connections: int | None,
    lock_timeout: float,
    no_hf_cache: bool,
    dry_run: bool,
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
            base_url=base_url,
            force=force,
            retries=retries,
            timeout=timeout,
            stall_timeout=stall_timeout,
            connections=connections,
            lock_timeout=lock_timeout,
            use_hf_cache=not no_hf_cache,
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
