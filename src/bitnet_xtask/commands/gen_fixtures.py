"""`xtask gen-fixtures`: the adapter over `bitnet_xtask.fixtures`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands.common import reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import ConsoleReporter, human_bytes
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
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("crossval/fixtures"),
    show_default=True,
)
@click.option("--json", "json_lines", is_flag=True, help="JSON events on stdout.")
def gen_fixtures_command(
    sizes: tuple[str, ...],
    archs: tuple[str, ...],
    quants: tuple[str, ...],
    seed: int,
    output: Path,
    json_lines: bool,
) -> None:
    """Write small, deterministic, real GGUF models and a metadata JSON beside each."""  # fmt: skip
    reporter = ConsoleReporter(json_lines=json_lines, progress=False)
    with reporting(reporter):
        from bitnet_xtask.download.store import refuse_unless_replaceable
        from bitnet_xtask.fixtures import FixtureSpec, generate_fixture
        from bitnet_xtask.fixtures.generate import fixture_paths

        combinations = [(s, a, q) for s in sizes for a in archs for q in quants]
        try:  # every combination and target checked before any file is written
            for size, arch, quant in combinations:
                for target in fixture_paths(FixtureSpec.parse(size, arch, quant, seed), output):
                    refuse_unless_replaceable(target)
        except ValueError as exc:
            raise UsageError(str(exc), "i2_s goes with --arch bitnet only") from None
        for size, arch, quant in combinations:
            result = generate_fixture(size, arch, quant, seed, output)
            reporter.info(
                f"{result.model} ({human_bytes(result.size_bytes)}, sha256 {result.sha256[:12]}...)"
            )
            if json_lines:
                reporter.emit(
                    {"phase": "fixture", "model": str(result.model),
                     "metadata": str(result.metadata), "sha256": result.sha256,
                     "size_bytes": result.size_bytes, "size": size, "arch": arch,
                     "quant": quant, "seed": seed}
                )  # fmt: skip
