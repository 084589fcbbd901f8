"""`xtask full-crossval`: the adapter over `crossval.pipeline`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands.common import reporting
from bitnet_xtask.commands.crossval import (
    BACKEND_TIMEOUT,
    default_receipt,
    finish,
    read_prompts,
    writable_receipt,
)
from bitnet_xtask.events import ConsoleReporter
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
@click.option("--quant", type=click.Choice(QUANTS), default="f32", show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option(
    "--fixtures-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("crossval/fixtures"),
    show_default=True,
)
@click.option("--id", "repo", help="Download this Hugging Face repo's model instead of a fixture.")
@click.option("--file", help="The file to download with --id.  [default: download-model's]")
@click.option(
    "--out",
    "models_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("models"),
    show_default=True,
    help="Where --id downloads go.",
)
@click.option(
    "--ref",
    type=click.Choice(["llama.cpp", "bitnet.cpp"]),
    help="The C++ reference.  [default: bitnet.cpp for i2_s, else llama.cpp]",
)
@click.option("--jobs", type=click.IntRange(1), help="Parallel compile jobs for fetch-cpp.")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="Override the compared backends (default: the built reference and numpy).",
)
@click.option("--prompt", "prompt", multiple=True, help="Repeatable.")
@click.option(
    "--prompts", "prompts_file", type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
@click.option("--n-predict", type=click.IntRange(0), default=8, show_default=True)
@click.option("--tolerance-profile", "profile", help="strict, quantized or a JSON file.")
@click.option("--threads", type=click.IntRange(1), help="Threads for cpp backends.")
@BACKEND_TIMEOUT
@click.option("--receipt", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "json_lines", is_flag=True, help="JSON events on stdout.")
def full_crossval_command(
    fixture: str,
    arch: str,
    quant: str,
    seed: int,
    fixtures_dir: Path,
    repo: str | None,
    file: str | None,
    models_dir: Path,
    ref: str | None,
    jobs: int | None,
    backends: tuple[str, ...],
    prompt: tuple[str, ...],
    prompts_file: Path | None,
    n_predict: int,
    profile: str | None,
    threads: int | None,
    backend_timeout: float,
    receipt: Path | None,
    json_lines: bool,
) -> None:
    """Model -> fetch-cpp -> crossval in one command; every step is skipped when done."""
    reporter = ConsoleReporter(json_lines=json_lines, progress=False)
    with reporting(reporter):
        from bitnet_xtask.crossval.pipeline import FullCrossvalRequest, run_full_crossval

        request = FullCrossvalRequest(
            fixture=fixture, arch=arch, quant=quant, seed=seed, fixtures_dir=fixtures_dir,
            repo=repo, file=file, models_dir=models_dir, ref=ref, jobs=jobs, backends=backends,
            prompts=read_prompts(prompt, prompts_file), n_predict=n_predict, profile=profile,
            threads=threads, timeout=backend_timeout,
        )  # fmt: skip
        path = writable_receipt(receipt or default_receipt())
        finish(run_full_crossval(request, reporter), path, reporter, json_lines)
