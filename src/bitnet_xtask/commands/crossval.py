"""`xtask crossval` and `xtask crossval verify-receipt`: adapters over `crossval.runner`
and `crossval.receipt`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from bitnet_xtask.cache import MODELS_DIR
from bitnet_xtask.commands import options
from bitnet_xtask.commands.common import make_reporter, reporting
from bitnet_xtask.commands.crossval_shared import (
    default_receipt,
    finish,
    read_prompts,
    writable_receipt,
)
from bitnet_xtask.errors import CheckFailedError, UsageError


def read_token_ids(path: Path) -> tuple[int, ...]:
    """--tokens-file: JSON (`[1, 2]` or `{"tokens": [1, 2]}`) or ids separated by spaces or
    commas, for engines or models without a tokenizer."""
    from bitnet_xtask.inputs import parse_json, read_text

    text = read_text(path, what="tokens file")
    words = text.replace(",", " ").split()
    loaded: Any = None
    if words and all(w.isdigit() for w in words):
        loaded = [int(w) for w in words]
    else:
        with contextlib.suppress(UsageError):  # not JSON: said below, with the formats
            loaded = parse_json(text, what=f"tokens file {path}")
    ids = loaded.get("tokens") if isinstance(loaded, dict) else loaded
    valid = isinstance(ids, list) and all(type(i) is int and i >= 0 for i in ids)
    if not valid or not ids:
        raise UsageError(
            f"{path}: expected non-negative integer token ids",
            'a JSON list, {"tokens": [...]}, or ids separated by spaces or commas',
        )
    return tuple(ids)


@click.group("crossval", invoke_without_command=True)
@click.option(
    "--model",
    "models",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    multiple=True,
    help=f"A GGUF model; repeatable. Default: every .gguf under {MODELS_DIR}/.",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="numpy, cpp:<build>, cmd:<template> or hf:<checkpoint dir>; repeatable. The "
    "reference is the first hf: one, else the first. Default: cpp:llama.cpp and numpy.",
)
@click.option(
    "--tokens-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Token ids to evaluate instead of a prompt (no tokenizer needed).",
)
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (models, backends and their builds, thresholds); run nothing.",
)
@click.option(
    "--paths",
    is_flag=True,
    help="Also run each cpp: and cmd: engine over a matrix of execution paths (batch and "
    "micro-batch sizes, threads, GPU offload) and compare each with the engine's own "
    "one-batch run and with the reference (README: crossval --paths).",
)
@options.comparison
@options.json_output
@click.pass_context
def crossval_command(
    ctx: click.Context,
    models: tuple[Path, ...],
    backends: tuple[str, ...],
    tokens_file: Path | None,
    top_k: int,
    dry_run: bool,
    paths: bool,
    prompt: tuple[str, ...],
    prompts_file: Path | None,
    n_predict: int,
    profile: str | None,
    threads: int | None,
    backend_timeout: float,
    hf_dtype: str,
    trace_pattern: str | None,
    trace_max_bytes: int | None,
    receipt: Path | None,
    json_lines: bool,
) -> None:
    """Run the same token ids through two or more implementations; compare the logits."""
    if ctx.invoked_subcommand is not None:
        return
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        if tokens_file and (prompt or prompts_file):
            raise UsageError("give a prompt or --tokens-file, not both")
        from bitnet_xtask.crossval.request import (
            DEFAULT_BACKENDS,
            CrossvalRequest,
            discover_models,
        )
        from bitnet_xtask.crossval.runner import run_crossval

        request = CrossvalRequest(
            models=models or discover_models(MODELS_DIR),
            backends=backends or DEFAULT_BACKENDS,
            prompts=read_prompts(prompt, prompts_file),
            token_ids=read_token_ids(tokens_file) if tokens_file else None,
            n_predict=n_predict,
            profile=profile,
            top_k=top_k,
            threads=threads,
            timeout=backend_timeout,
            hf_dtype=hf_dtype,
            trace=options.trace_request(trace_pattern, trace_max_bytes),
            paths=paths,
        )
        path = writable_receipt(receipt or default_receipt())
        if dry_run:
            from bitnet_xtask.crossval.plan import plan_crossval

            plan = plan_crossval(request)
            reporter.emit({"phase": "plan", "receipt": str(path), "ready": not plan.problems,
                           "problems": plan.problems, "plan": plan.to_json(),
                           "lines": plan.lines()})  # fmt: skip
            if plan.problems:
                raise UsageError(f"crossval would not start: {plan.problems[0]}")
            return
        finish(run_crossval(request, reporter), path, reporter)


@crossval_command.command("verify-receipt")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@options.json_output
@click.pass_context
def verify_receipt_command(ctx: click.Context, path: Path, json_lines: bool) -> None:
    """Check a receipt against its schema, and its verdicts against its own numbers.

    Exit 0: valid and passed; 1: valid but failed, or a verdict its numbers contradict;
    2: not a receipt (unreadable, or the schema is broken)."""
    reporter = make_reporter(ctx, json_lines)
    with reporting(reporter):
        from bitnet_xtask.crossval.receipt import load_receipt, schema_errors, verdict_errors

        document = load_receipt(path)
        if problems := schema_errors(document):
            raise UsageError(
                f"{path} is not a valid crossval receipt:\n  " + "\n  ".join(problems[:20]),
                "receipts are written by `xtask crossval`; see README (receipt schema)",
            )
        if contradictions := verdict_errors(document):
            raise CheckFailedError(
                f"{path}: the recorded verdict does not follow from its metrics:\n  "
                + "\n  ".join(contradictions)
            )
        passed = document["verdict"]["passed"]
        reporter.emit({"phase": "done", "valid": True, "passed": passed, "receipt": str(path)})
        if not passed:
            raise CheckFailedError(f"{path}: the receipt records a parity failure")
