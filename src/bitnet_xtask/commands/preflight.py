"""`xtask preflight` and `xtask gpu-preflight`: adapters over `bitnet_xtask.gpu`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import Seconds, make_reporter, reporting
from bitnet_xtask.errors import CheckFailedError, ExitCode
from bitnet_xtask.events import ConsoleReporter

if TYPE_CHECKING:
    from bitnet_xtask.gpu.detect import RuntimeReport
    from bitnet_xtask.gpu.elf import BinaryFacts
    from bitnet_xtask.gpu.preflight import PreflightReport

_FORMAT = click.Choice(["text", "json"])
_NAMES = {"cuda": "CUDA", "rocm": "ROCm", "metal": "Metal", "wgpu": "WebGPU"}


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _runtime_line(report: RuntimeReport) -> str:
    parts = []
    for name, label in _NAMES.items():
        status = report.backend(name)
        version = f" {status.version}" if status.available and status.version else ""
        parts.append(f"{label}{version} {_mark(status.available)}")
    features = ", ".join(report.cpu.features)
    parts.append(f"CPU ✓ ({features})" if features else "CPU ✓")
    return ", ".join(parts)


def _device_lines(report: RuntimeReport) -> list[str]:
    lines = []
    for name, label in _NAMES.items():
        status = report.backend(name)
        if not status.available:
            lines.append(f"  {label}: ✗ {status.detail or 'not available'}")
            continue
        driver = f" (driver {status.driver_version})" if status.driver_version else ""
        lines.append(f"  {label}: ✓ {status.version or ''}{driver} via {status.source}".rstrip())
        for device in status.devices:
            memory = f", {device.memory_mib} MiB" if device.memory_mib else ""
            capability = f", {device.compute_capability}" if device.compute_capability else ""
            mig = ", MIG" if device.mig else ""
            lines.append(f"    GPU {device.index}: {device.name}{memory}{capability}{mig}")
    cpu = report.cpu
    lines.append(f"  CPU: {cpu.model or 'unknown'} ({cpu.arch}, {cpu.cores} cores)")
    if cpu.features:
        lines.append(f"    features: {', '.join(cpu.features)}")
    if report.fake:
        lines.append("  (GPU probes replaced by BITNET_GPU_FAKE: this report is fake)")
    return lines


def _compiled_line(report: PreflightReport) -> str:
    if not report.binaries:
        return "unknown (no binary given: pass --binary, or build one with fetch-cpp)"
    backends = [b for b in report.compiled_backends if b not in ("cpu", "blas")]
    gpu = f"GPU ✓ ({', '.join(backends)})" if backends else "GPU ✗"
    return f"{gpu}, CPU ✓"


def _binary_line(binary: BinaryFacts) -> str:
    code = ""
    if binary.cuda is not None:
        cubins = ", ".join(f"sm_{sm}" for sm in binary.cuda.cubin_sms) or "no cubins"
        ptx = ", ".join(f"compute_{sm}" for sm in binary.cuda.ptx_sms)
        code = f" [{cubins}{'; PTX ' + ptx if ptx else ''}]"
    return f"    {binary.path}: {', '.join(binary.backends) or 'cpu only'}{code}"


def _report_reporter(ctx: click.Context, fmt: str, json_lines: bool) -> ConsoleReporter:
    """`--json` is `--format json` (the guide documents --format; every command takes
    --json); `--format text --json` asks for both, which is a usage error."""
    if (
        json_lines
        and fmt == "text"
        and ctx.get_parameter_source("fmt") == ParameterSource.COMMANDLINE
    ):
        raise click.UsageError("give --json or --format text, not both", ctx)
    return make_reporter(ctx, json_lines or fmt == "json")


def _preflight_text(report: PreflightReport) -> list[str]:
    runtime, facts = report.runtime, list(report.binaries)
    return [
        "Device Capabilities:",
        f"  Compiled: {_compiled_line(report)}",
        f"  Runtime: {_runtime_line(runtime)}",
        "",
        *(["Binaries:", *(_binary_line(b) for b in facts)] if facts else []),
        *(["Fit:", *(f"  {_mark(f.ok)} {f.message}" for f in report.findings)]
          if report.findings else []),
        "✓ GPU: Available" if runtime.any_available else "✗ GPU: Not available (CPU only)",
    ]  # fmt: skip


@click.command("preflight")
@click.option(
    "--binary",
    "binaries",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A built binary, library or build directory; repeatable.  "
    "[default: the fetch-cpp builds' bin/]",
)
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True)
@options.json_output
@click.option("--probe-timeout", type=Seconds(0.1, maximum=3600), default=5.0, show_default=True)
@click.pass_context
def preflight_command(
    ctx: click.Context, binaries: tuple[Path, ...], fmt: str, json_lines: bool, probe_timeout: float
) -> None:
    """What this machine can run, what the binaries were built for, and the fit."""
    reporter = _report_reporter(ctx, fmt, json_lines)
    with reporting(reporter):
        from bitnet_xtask.gpu.preflight import run_preflight

        report = run_preflight(binaries, probe_timeout)
    reporter.report(report.to_dict(), "\n".join(_preflight_text(report)))
    if not report.fits:
        raise click.exceptions.Exit(ExitCode.FAILURE)


@click.command("gpu-preflight")
@click.option("--require", is_flag=True, help="Exit 1 when no GPU backend is available.")
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True)
@options.json_output
@click.option("--probe-timeout", type=Seconds(0.1, maximum=3600), default=5.0, show_default=True)
@click.pass_context
def gpu_preflight_command(
    ctx: click.Context, require: bool, fmt: str, json_lines: bool, probe_timeout: float
) -> None:
    """Which GPU backends can run here (CUDA, ROCm, Metal, WebGPU)."""
    reporter = _report_reporter(ctx, fmt, json_lines)
    with reporting(reporter):
        from bitnet_xtask.gpu.detect import detect_runtime

        report = detect_runtime(probe_timeout)
    text = ["GPU preflight:", *_device_lines(report)]
    text.append("✓ GPU: Available" if report.any_available else "✗ GPU: Not available")
    # The report is the one document on stdout: a failure after it is said on stderr only.
    reporter.report(report.to_dict(), "\n".join(text))
    if not report.any_available and require:
        raise CheckFailedError("no GPU backend available (--require)")
    if not report.any_available:
        reporter.info("warning: no GPU backend available; continuing on the CPU")
