"""`xtask fetch-cpp`: the adapter over `bitnet_xtask.cpp.build`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands.common import reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import ConsoleReporter


def _cuda_from_preflight() -> tuple[bool, tuple[str, ...]]:
    """Whether preflight sees a CUDA GPU, and the SM architectures of those it sees
    (empty when it cannot tell: then llama.cpp's default architecture list applies)."""
    from bitnet_xtask.gpu.detect import detect_runtime

    cuda = detect_runtime().cuda
    archs = {d.compute_capability.replace(".", "") for d in cuda.devices if d.compute_capability}
    return cuda.available, tuple(sorted(archs))


@click.command("fetch-cpp")
@click.option(
    "--ref",
    type=click.Choice(["llama.cpp", "bitnet.cpp"]),
    default="llama.cpp",
    show_default=True,
)
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
@click.option(
    "--jobs", type=click.IntRange(1, 4096), help="Parallel compile jobs (Ninja's default)."
)
@click.option("--json", "json_lines", is_flag=True, help="JSON events on stdout.")
def fetch_cpp_command(
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
    reporter = ConsoleReporter(json_lines=json_lines, progress=False)
    with reporting(reporter):
        from bitnet_xtask.cpp.build import (
            BuildRequest,
            build_reference,
            check_cuda_archs,
            requested_revision,
        )

        revision = requested_revision(rev, tag)
        if revision is not None and source:
            raise UsageError("--source builds a local tree: it takes no --rev/--tag")
        check_cuda_archs(cuda_archs)  # before asking the GPUs: the user's typo first
        if backend == "auto":
            has_cuda, detected = _cuda_from_preflight()
            backend = "cuda" if has_cuda else "cpu"
            cuda_archs = cuda_archs or detected
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
        if not json_lines:
            return  # the reporter's lines already said what happened
        reporter.emit(
            {
                "phase": "done",
                "path": str(result.bin_dir),
                "built": result.built,
                "cached": not result.built,
                "receipt": str(result.directory / "receipt.json"),
            }
        )
