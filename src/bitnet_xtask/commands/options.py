"""Options that more than one command takes, declared once (as pip's `cmdoptions` does),
so their names, types, defaults and help cannot drift apart between commands.

Each is a decorator; `click.option` makes a fresh `Option` every time one is applied.
The defaults that the core's request dataclasses also carry (`--n-predict`,
`--backend-timeout`, the folders) are held equal to them by a test, since importing
the core here would load NumPy for `xtask --help`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bitnet_xtask.cache import FIXTURES_DIR, MODELS_DIR
from bitnet_xtask.commands.common import Seconds

if TYPE_CHECKING:
    from bitnet_xtask.crossval.traces import TraceRequest

F = TypeVar("F", bound=Callable[..., Any])

#: Where crossval and full-crossval write receipts unless --receipt says otherwise.
RECEIPTS_DIR = Path("crossval") / "receipts"
N_PREDICT = 8  # crossval.request.CrossvalRequest.n_predict (a test holds them equal)
BACKEND_TIMEOUT = 600.0  # crossval.backends.DEFAULT_TIMEOUT
HF_DTYPES = ("float32", "checkpoint")  # crossval.hf_backend.DTYPES, the first the default


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several options as one decorator, listed in `--help` in the order given."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def reference_names() -> tuple[str, ...]:
    """The C++ references `--ref` can name: the pins in `cpp/pins.json`, nothing else."""
    from bitnet_xtask.cpp.pins import load_pins

    return tuple(load_pins())


json_output = click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="JSON events on stdout, one per line (README: JSON events).",
)
threads = click.option(
    "--threads",
    type=click.IntRange(1),
    help="Threads for cpp: backends (and a cmd: engine's {threads}). Default: every core.",
)
jobs = click.option(
    "--jobs", type=click.IntRange(1, 4096), help="Parallel compile jobs (Ninja's default)."
)
n_predict = click.option(
    "--n-predict",
    type=click.IntRange(0),
    default=N_PREDICT,
    show_default=True,
    help="Greedy continuation length compared between backends.",
)
tolerance_profile = click.option(
    "--tolerance-profile",
    "profile",
    help="strict, quantized or a JSON file. Default: strict for f32/f16/bf16, else quantized.",
)
backend_timeout = click.option(
    "--backend-timeout",
    type=Seconds(allow_zero=False),
    default=BACKEND_TIMEOUT,
    show_default=True,
    help="Seconds one engine call (cpp: or cmd:) may take; then it and its children are "
    "killed and the model records the error (hf: and numpy run in-process: no deadline).",
)
prompts = stack(
    click.option("--prompt", "prompt", multiple=True, help="A prompt; repeatable."),
    click.option(
        "--prompts",
        "prompts_file",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="A file with one prompt per line.",
    ),
)
receipt = click.option(
    "--receipt",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Where to write the receipt. Default: {RECEIPTS_DIR}/crossval-<time>.json",
)
hf_dtype = click.option(
    "--hf-dtype",
    type=click.Choice(HF_DTYPES),
    default=HF_DTYPES[0],
    show_default=True,
    help="What an hf: backend computes in: float32, or the dtype its checkpoint declares.",
)
TRACE_MAX_BYTES = 4 << 30  # crossval.traces.DEFAULT_MAX_BYTES
trace = stack(
    click.option(
        "--trace",
        "trace_pattern",
        is_flag=False,
        flag_value="",
        default=None,
        metavar="[REGEX]",
        help="Compare every backend's intermediate tensors (all, or the names REGEX "
        "matches) and name the first divergent step.",
    ),
    click.option(
        "--trace-max-bytes",
        type=click.IntRange(0),
        default=None,
        help=f"Most float32 bytes one backend's trace may hold (default {TRACE_MAX_BYTES}); "
        "tensors past it are listed, not written.",
    ),
)
#: What crossval and full-crossval both ask: the inputs, the thresholds, the receipt.
comparison = stack(
    prompts, n_predict, tolerance_profile, threads, backend_timeout, hf_dtype, trace, receipt
)


def trace_request(pattern: str | None, max_bytes: int | None) -> TraceRequest | None:
    """--trace [REGEX] and --trace-max-bytes as a `traces.TraceRequest` (None: no
    tracing); --trace-max-bytes alone is refused."""
    if pattern is None:
        if max_bytes is not None:
            from bitnet_xtask.errors import UsageError

            raise UsageError("--trace-max-bytes needs --trace")
        return None
    from bitnet_xtask.crossval.traces import TraceRequest

    return TraceRequest(pattern or None, TRACE_MAX_BYTES if max_bytes is None else max_bytes)


def ref(*, default: str | None, help: str | None = None) -> Callable[[F], F]:
    """`--ref`: one of the pinned C++ references."""
    return click.option(
        "--ref",
        type=click.Choice(reference_names()),
        default=default,
        show_default=default is not None,
        help=help,
    )


def _folder(
    default: Path, decls: tuple[str, ...], help: str | None, file_okay: bool
) -> Callable[[F], F]:
    return click.option(
        *decls,
        type=click.Path(path_type=Path, file_okay=file_okay),
        default=default,
        show_default=True,
        help=help,
    )


def models_folder(*decls: str, help: str | None = None, file_okay: bool = True) -> Callable[[F], F]:
    """The models folder (download-model --out, clean-cache --models, ...)."""
    return _folder(MODELS_DIR, decls, help, file_okay)


def fixtures_folder(
    *decls: str, help: str | None = None, file_okay: bool = True
) -> Callable[[F], F]:
    """The fixtures folder (gen-fixtures --output, full-crossval --fixtures-dir, ...)."""
    return _folder(FIXTURES_DIR, decls, help, file_okay)


#: How download-model and models fetch talk to the hub; each option's destination is the
#: `download.DownloadOptions` field it sets, so `DownloadOptions(**transfer)` takes them.
hub_transfer = stack(
    click.option(
        "--base-url",
        help="Hub or mirror URL.  [default: $HF_ENDPOINT or https://huggingface.co]",
    ),
    click.option("--retries", type=click.IntRange(0), default=3, show_default=True),
    click.option(
        "--timeout",
        type=Seconds(allow_zero=False),
        default=1800.0,
        show_default=True,
        help="Seconds to wait for a connection.",
    ),
    click.option(
        "--stall-timeout",
        type=Seconds(allow_zero=False),
        default=60.0,
        show_default=True,
        help="Seconds without a byte before a stream is retried from its offset.",
    ),
    click.option(
        "--lock-timeout",
        type=Seconds(),
        default=1800.0,
        show_default=True,
        help="Seconds to wait for another process downloading the same file.",
    ),
    click.option(
        "--no-hf-cache",
        "use_hf_cache",
        is_flag=True,
        flag_value=False,
        default=True,
        help="Don't reuse blobs from the HF cache.",
    ),
)
no_progress = click.option(
    "--no-progress", is_flag=True, help="No progress bar (auto-off without a TTY)."
)
model_catalog = click.option(
    "--catalog",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The project's model catalog.  [default: ./models.toml when there is one]",
)
model_lock = click.option(
    "--lock",
    "lock_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The lockfile models fetch writes (and reads with --locked).  "
    "[default: models.lock.json beside the project catalog]",
)
