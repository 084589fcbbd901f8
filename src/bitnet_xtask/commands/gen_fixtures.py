"""`xtask gen-fixtures`: the adapter over `bitnet_xtask.fixtures`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.fixtures.names import ARCHS, QUANTS, SIZE_NAMES


@click.command("gen-fixtures")
@click.option(
    "--size",
    "sizes",
    type=click.Choice(SIZE_NAMES),
    multiple=True,
    default=("tiny",),
    show_default=True,
    help="Repeatable.",
)
@click.option(
    "--arch",
    "archs",
    type=click.Choice(ARCHS),
    multiple=True,
    default=("llama",),
    show_default=True,
    help="Repeatable.",
)
@click.option(
    "--quant",
    "quants",
    type=click.Choice(QUANTS),
    multiple=True,
    default=("f32",),
    show_default=True,
    help="Repeatable.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@options.fixtures_folder("--output", file_okay=False, help="Where the models go.")
@options.json_output
@click.pass_context
def gen_fixtures_command(
    ctx: click.Context,
    sizes: tuple[str, ...],
    archs: tuple[str, ...],
    quants: tuple[str, ...],
    seed: int,
    output: Path,
    json_lines: bool,
) -> None:
    """Write small, deterministic, real GGUF models and a metadata JSON beside each."""  # fmt: skip
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        from bitnet_xtask.fixtures import FixtureSpec
        from bitnet_xtask.fixtures.generate import generate_fixtures

        try:  # every combination and target checked before any file is written
            specs = [
                FixtureSpec.parse(size, arch, quant, seed)
                for size in sizes
                for arch in archs
                for quant in quants
            ]
        except ValueError as exc:
            raise UsageError(str(exc), "i2_s goes with --arch bitnet only") from None
        for result in generate_fixtures(specs, output):
            size, arch, quant = result.spec.size, result.spec.arch, result.spec.quant
            reporter.emit(
                {"phase": "fixture", "model": str(result.model),
                 "metadata": str(result.metadata), "sha256": result.sha256,
                 "size_bytes": result.size_bytes, "size": size, "arch": arch,
                 "quant": quant, "seed": seed}
            )  # fmt: skip
