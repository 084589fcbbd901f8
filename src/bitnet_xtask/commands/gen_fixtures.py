"""`xtask gen-fixtures`: the adapter over `bitnet_xtask.fixtures`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events.reporter import ConsoleReporter
from bitnet_xtask.fixtures.names import ARCH_CHOICES, B158, QUANTS, SIZE_2B4T, SIZE_CHOICES

_TWIN_FORMS = "llama: f32 f16; bitnet: f32 f16 tq2_0; bitnet-b1.58: f32 f16 i2_s"
"""Each twin family's GGUF forms (`twin_spec.TWIN_QUANTS`, which needs numpy to import)."""


@click.command("gen-fixtures")
@click.option(
    "--size",
    "sizes",
    type=click.Choice(SIZE_CHOICES),
    multiple=True,
    default=("tiny",),
    show_default=True,
    help=f"Repeatable. {SIZE_2B4T}: the real 2B-4T's shapes, for --arch {B158} only.",
)
@click.option(
    "--arch",
    "archs",
    type=click.Choice(ARCH_CHOICES),
    multiple=True,
    default=("llama",),
    show_default=True,
    help=f"Repeatable. {B158} (microsoft/bitnet-b1.58-2B-4T's layout) is a twin family: "
    "it implies --twin.",
)
@click.option(
    "--quant",
    "quants",
    type=click.Choice(QUANTS),
    multiple=True,
    help=f"Repeatable. Default: f32; with --twin, every form of the family ({_TWIN_FORMS}).",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@options.fixtures_folder("--output", file_okay=False, help="Where the models go.")
@click.option(
    "--twin",
    is_flag=True,
    help="Write twins instead: a Hugging Face checkpoint and its GGUFs made by the pinned "
    f"llama.cpp's converter ({B158}: written as microsoft/BitNet's converter would), in "
    "OUTPUT/twins/ARCH-SIZE-seedSEED/.",
)
@click.option(
    "--llama-source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="With --twin: the llama.cpp tree whose convert_hf_to_gguf.py to run (or the "
    "llama-cpp-python sdist that vendors it). Default: the verified source fetch-cpp cached.",
)
@options.json_output
@click.pass_context
def gen_fixtures_command(
    ctx: click.Context,
    sizes: tuple[str, ...],
    archs: tuple[str, ...],
    quants: tuple[str, ...],
    seed: int,
    output: Path,
    twin: bool,
    llama_source: Path | None,
    json_lines: bool,
) -> None:
    """Write small, deterministic, real GGUF models and a metadata JSON beside each."""  # fmt: skip
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        if twin or _twin_family_only(archs):
            _twins(reporter, sizes, archs, quants, seed, output, llama_source)
            return
        if llama_source is not None:
            raise UsageError("--llama-source goes with --twin only")
        if SIZE_2B4T in sizes:
            raise UsageError(
                f"size {SIZE_2B4T} (the real 2B-4T's shapes) is for --arch {B158} only",
                "choose tiny, small or medium",
            )
        quants = quants or ("f32",)
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


def _twin_family_only(archs: tuple[str, ...]) -> bool:
    """Whether every arch is the twin-only family (so --twin is implied); UsageError when
    it comes with plain fixture archs and no --twin."""
    if B158 not in archs:
        return False
    if set(archs) != {B158}:
        raise UsageError(
            f"{B158} comes as a twin only (a checkpoint with its GGUFs), so it cannot go "
            "with plain fixtures",
            f"add --twin to make twins of every arch, or give --arch {B158} on its own",
        )
    return True


def _twins(
    reporter: ConsoleReporter,
    sizes: tuple[str, ...],
    families: tuple[str, ...],
    quants: tuple[str, ...],
    seed: int,
    output: Path,
    llama_source: Path | None,
) -> None:
    """Every (family, size) twin, all of them checked before the first is written."""
    from bitnet_xtask.fixtures.twin import prepare_twin, write_twin

    try:
        plans = [
            prepare_twin(family, size, quants, seed, output, llama_source)
            for family in dict.fromkeys(families)
            for size in dict.fromkeys(sizes)
        ]
    except ValueError as exc:
        hint = f"twin forms: {_TWIN_FORMS}; size {SIZE_2B4T} is for {B158} only"
        raise UsageError(str(exc), hint) from None
    for plan in plans:
        result = write_twin(plan)
        reporter.info(f"{result.checkpoint} (Hugging Face checkpoint, {result.manifest.name})")
        for quant, path in result.ggufs.items():
            facts = result.files[path.name]
            reporter.emit(
                {"phase": "fixture", "model": str(path),
                 "metadata": str(result.manifest), "sha256": facts.sha256,
                 "size_bytes": facts.size_bytes, "size": plan.spec.size,
                 "arch": plan.spec.family, "quant": quant, "seed": plan.spec.seed}
            )  # fmt: skip
