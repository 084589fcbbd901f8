"""`xtask fetch-cpp`: the adapter over `bitnet_xtask.cpp.build`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.errors import UsageError


@click.command("fetch-cpp")
@options.ref(default="llama.cpp")
@click.option(
    "--rev", help="Build this commit (7-40 hex digits) of the reference's GitHub repository."
)
@click.option("--tag", help="Build this tag of the reference's GitHub repository.")
@click.option("--hash", "tree_hash", help="The NAR hash (sha256-...=) that --rev/--tag must have.")
@click.option(
    "--kernel",
    type=click.Choice(["i2_s"]),
    default="i2_s",
    show_default=True,
    help="bitnet.cpp's kernel, whose code is generated before CMake.",
)
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Build this source tree instead of the pin (its NAR hash is recorded).",
)
@click.option(
    "--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True
)
@click.option(
    "--cuda-arch",
    "cuda_archs",
    multiple=True,
    help="e.g. 90, 86, 120a or 90-real (CMake's CUDA_ARCHITECTURES); repeatable.",
)
@click.option("--native", is_flag=True, help="GGML_NATIVE=ON: tune for this CPU (not portable).")
@click.option("--force", is_flag=True, help="Build again even if the receipt matches.")
@click.option("--clean", is_flag=True, help="Remove the build directory first.")
@options.jobs
@options.json_output
@click.pass_context
def fetch_cpp_command(
    ctx: click.Context,
    ref: str,
    rev: str | None,
    tag: str | None,
    tree_hash: str | None,
    kernel: str,
    source: Path | None,
    backend: str,
    cuda_archs: tuple[str, ...],
    native: bool,
    force: bool,
    clean: bool,
    jobs: int | None,
    json_lines: bool,
) -> None:
    """Fetch a pinned C++ reference, verify it, and build it with CMake + Ninja."""
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        from bitnet_xtask.cpp.build import BuildRequest, build_reference, requested_revision

        revision = requested_revision(rev, tag)
        if revision is not None and source:
            raise UsageError("--source builds a local tree: it takes no --rev/--tag")
        # --backend auto is resolved by build_reference, after it checks --cuda-arch.
        request = BuildRequest(
            ref=ref,
            backend=backend,
            rev=revision,
            hash=tree_hash,
            kernel=kernel,
            cuda_archs=tuple(cuda_archs),
            native=native,
            jobs=jobs,
            force=force,
            clean=clean,
            source=source,
        )
        result = build_reference(request, reporter=reporter)
        reporter.emit(
            {
                "phase": "done",
                "path": str(result.bin_dir),
                "built": result.built,
                "cached": not result.built,
                "receipt": str(result.directory / "receipt.json"),
            }
        )
