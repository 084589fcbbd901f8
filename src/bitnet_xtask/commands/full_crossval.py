"""`xtask full-crossval`: the adapter over `crossval.pipeline`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.commands.crossval_shared import (
    default_receipt,
    finish,
    read_prompts,
    writable_receipt,
)
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures.names import ARCHS, QUANTS


@click.command("full-crossval")
@click.option(
    "--fixture",
    type=click.Choice(["tiny", "small"]),
    default="tiny",
    show_default=True,
    help="The generated model to use when no --id is given (works offline).",
)
@click.option("--arch", type=click.Choice(ARCHS), default="llama", show_default=True)
@click.option(
    "--quant",
    type=click.Choice(QUANTS),
    default="f32",
    show_default=True,
    help="The fixture's quantization; with --hf (and no --id), the converter's --outtype.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@options.fixtures_folder("--fixtures-dir", file_okay=False)
@click.option("--id", "repo", help="Download this Hugging Face repo's model instead of a fixture.")
@click.option("--file", help="The file to download with --id.  [default: download-model's]")
@click.option(
    "--model",
    "model_name",
    help="A catalog model (xtask models list), fetched as `xtask models fetch` does.",
)
@options.model_catalog
@options.model_lock
@options.models_folder("--out", "models_dir", file_okay=False, help="Where --id downloads go.")
@click.option(
    "--hf",
    "hf_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="A Hugging Face checkpoint directory: the model's definition, the reference. "
    "Without --id its GGUF is converted from it.",
)
@click.option("--hf-id", "hf_repo", help="Fetch this Hugging Face checkpoint, then as --hf.")
@click.option(
    "--hf-rev", "hf_revision", default="main", show_default=True, help="The --hf-id revision."
)
@options.ref(
    default=None, help="The C++ reference.  [default: bitnet.cpp for i2_s, else llama.cpp]"
)
@options.jobs
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="Override the compared backends (default: the built reference and numpy).",
)
@options.comparison
@options.json_output
@click.pass_context
def full_crossval_command(
    ctx: click.Context,
    fixture: str,
    arch: str,
    quant: str,
    seed: int,
    fixtures_dir: Path,
    repo: str | None,
    file: str | None,
    model_name: str | None,
    catalog: Path | None,
    lock_path: Path | None,
    models_dir: Path,
    hf_dir: Path | None,
    hf_repo: str | None,
    hf_revision: str,
    ref: str | None,
    jobs: int | None,
    backends: tuple[str, ...],
    prompt: tuple[str, ...],
    prompts_file: Path | None,
    n_predict: int,
    profile: str | None,
    threads: int | None,
    backend_timeout: float,
    hf_dtype: str,
    trace_pattern: str | None,
    trace_max_bytes: int | None,
    receipt: Path | None,
    json_lines: bool,
) -> None:
    """Model -> fetch-cpp -> crossval in one command; every step is skipped when done."""
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        from bitnet_xtask.crossval.pipeline import FullCrossvalRequest, run_full_crossval

        if hf_dir and hf_repo:
            raise UsageError("give --hf or --hf-id, not both")
        if model_name and (repo or file):
            raise UsageError("give --model (a catalog model) or --id/--file, not both")

        request = FullCrossvalRequest(
            fixture=fixture, arch=arch, quant=quant, seed=seed, fixtures_dir=fixtures_dir,
            repo=repo, file=file, models_dir=models_dir, model_name=model_name,
            catalog=catalog, lock_path=lock_path, ref=ref, jobs=jobs, backends=backends,
            prompts=read_prompts(prompt, prompts_file), n_predict=n_predict, profile=profile,
            threads=threads, timeout=backend_timeout, hf_dir=hf_dir, hf_repo=hf_repo,
            hf_revision=hf_revision, hf_dtype=hf_dtype,
            trace=options.trace_request(trace_pattern, trace_max_bytes),
        )  # fmt: skip
        path = writable_receipt(receipt or default_receipt())
        finish(run_full_crossval(request, reporter), path, reporter)
