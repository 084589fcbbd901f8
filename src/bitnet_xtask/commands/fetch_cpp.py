"""`xtask fetch-cpp`: the adapter over `bitnet_xtask.cpp.build`."""

from __future__ import annotations

from pathlib import Path

import click

from bitnet_xtask.commands.common import reporting
from bitnet_xtask.errors import UsageError
from bitnet_xtask.events import ConsoleReporter


def _cuda_archs_from_preflight() -> tuple[str, ...]:
    from bitnet_xtask.gpu.detect import detect_runtime

    runtime = detect_runtime()
    return tuple(
        sorted(
            {
                d.compute_capability.replace(".", "")
                for d in runtime.cuda.devices
                if d.compute_capability
            }
        )
    )


@click.command("fetch-cpp")
@click.option(
    "--ref",
    type=click.Choice(["llama.cpp", "bitnet.cpp"]),
    default="llama.cpp",
    show_default=True,
)
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Build this source tree instead of the pin (its NAR hash is recorded).",
)
@click.option(
    "--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True
)
@click.option("--cuda-arch", "cuda_archs", multiple=True, help="e.g. 90 or 86; repeatable.")
@click.option("--native", is_flag=True, help="GGML_NATIVE=ON: tune for this CPU (not portable).")
@click.option("--force", is_flag=True, help="Build again even if the receipt matches.")
@click.option("--clean", is_flag=True, help="Remove the build directory first.")
@click.option("--jobs", type=click.IntRange(1), help="Parallel compile jobs (Ninja's default).")
@click.option("--json", "json_lines", is_flag=True, help="JSON events on stdout.")
def fetch_cpp_command(
    ref: str,
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
        from bitnet_xtask.cpp.build import BuildRequest, build_reference

        if backend == "auto":
            detected = _cuda_archs_from_preflight()
            backend = "cuda" if detected else "cpu"
            cuda_archs = cuda_archs or detected
        if cuda_archs and backend != "cuda":
            raise UsageError("--cuda-arch needs --backend cuda (or auto on a CUDA machine)")
        request = BuildRequest(
            ref=ref,
            backend=backend,
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
