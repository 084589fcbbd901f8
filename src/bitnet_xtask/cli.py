"""The `xtask` command line: thin adapters that parse, call the core, and map errors.

`main()` is the one place that turns exceptions into exit codes: an `XtaskError`
becomes its documented code and a message (and an `error` event with --json), Ctrl-C
and SIGTERM become 130, and anything else is a bug that keeps its traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from types import FrameType

import click

from . import __version__
from .commands.clean import clean_cache_command
from .commands.crossval import crossval_command
from .commands.download import download_model_command
from .commands.fetch_cpp import fetch_cpp_command
from .commands.full_crossval import full_crossval_command
from .commands.gen_fixtures import gen_fixtures_command
from .commands.models import models_group
from .commands.preflight import gpu_preflight_command, preflight_command
from .errors import ExitCode, XtaskError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="xtask")
@click.option("-v", "--verbose", is_flag=True, help="Debug output on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Reliable workflows for BitNet / llama.cpp inference engines."""
    ctx.obj = {"verbose": verbose}


for _command in (
    download_model_command,
    preflight_command,
    gpu_preflight_command,
    clean_cache_command,
    fetch_cpp_command,
    gen_fixtures_command,
    crossval_command,
    full_crossval_command,
    models_group,
):
    cli.add_command(_command)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the documented exit code."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # Without standalone mode, click returns a command's `Exit` code instead of exiting.
        code = cli.main(
            args=list(argv) if argv is not None else None, prog_name="xtask", standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return ExitCode.INTERRUPTED
    except XtaskError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    return code if isinstance(code, int) else ExitCode.OK
