"""`xtask crossval` and `xtask crossval verify-receipt`: adapters over `crossval.runner`
and `crossval.receipt`."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from bitnet_xtask.commands.common import Seconds, reporting
from bitnet_xtask.errors import CheckFailedError, UsageError
from bitnet_xtask.events import ConsoleReporter, Reporter

DEFAULT_RECEIPTS = Path("crossval/receipts")


def read_prompts(prompt: tuple[str, ...], prompts_file: Path | None) -> tuple[str, ...]:
    """--prompt (repeatable) or --prompts FILE (one per line; blank lines skipped)."""
    if prompt and prompts_file:
        raise UsageError("give --prompt or --prompts, not both")
    if prompts_file:
        from bitnet_xtask.inputs import read_text

        lines = read_text(prompts_file, what="prompts file").splitlines()
        chosen = tuple(line for line in lines if line.strip())
        if not chosen:
            raise UsageError(f"{prompts_file} holds no prompts")
        return chosen
    from bitnet_xtask.crossval.runner import DEFAULT_PROMPT

    return prompt or (DEFAULT_PROMPT,)


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


def summary_table(receipt: dict[str, Any]) -> str:
    """The human summary: one row per model, prompt and candidate."""
    header = (
        f"{'model':34} {'candidate':18} {'pos':>4} {'max|d|':>9} {'rms':>9} {'min cos':>9} "
        f"{'max KL':>9} {'top1':>5} {'greedy':>6}  verdict"
    )
    rows = [header, "-" * len(header)]
    for model in receipt["models"]:
        if model["error"] is not None:
            rows.append(f"{Path(model['path']).name[:34]:34} ERROR: {model['error']}")
        for run in model["runs"]:
            for c in run["comparisons"]:
                s, greedy = c["metrics"]["summary"], c["greedy"]
                where = None if greedy is None else greedy["first_divergence"]
                diverged = "-" if greedy is None else ("same" if where is None else f"@{where}")
                verdict = "pass" if c["verdict"]["passed"] else "FAIL"
                verdict += f" ({c['verdict']['profile']})"
                name, n = Path(model["path"]).name[:34], c["metrics"]["n_positions"]
                rows.append(
                    f"{name:34} {c['candidate'][:18]:18} {n:>4} {s['max_abs_diff']:9.3g} "
                    f"{s['rms_diff']:9.3g} {s['min_cosine']:9.6f} {s['max_kl']:9.3g} "
                    f"{s['top1_agreement']:5.2f} {diverged:>6}  {verdict}"
                )
                rows += [f"    {f['message']}" for f in c["verdict"]["failures"]]
    return "\n".join(rows)


def finish(receipt: dict[str, Any], path: Path, reporter: Reporter, json_lines: bool) -> None:
    """Write the receipt, show the table, emit `done`; a failed verdict exits 1."""
    from bitnet_xtask.crossval.receipt import write_receipt

    write_receipt(path, receipt)
    if not json_lines:
        click.echo(summary_table(receipt), err=True)
    passed = receipt["verdict"]["passed"]
    reporter.info(f"receipt: {path}")
    if json_lines:
        reporter.emit({"phase": "done", "passed": passed, "receipt": str(path),
                       "failures": len(receipt["verdict"]["failures"])})  # fmt: skip
    if not passed:
        first = receipt["verdict"]["failures"][0]["message"]
        count = len(receipt["verdict"]["failures"])
        raise CheckFailedError(
            f"parity check failed ({count} failure{'s' * (count > 1)}); first: {first}",
            f"the receipt has every metric per position: {path}",
        )


def default_receipt() -> Path:
    """Named by the UTC time to the millisecond, so runs do not overwrite each other."""
    now = datetime.now(timezone.utc)
    return DEFAULT_RECEIPTS / f"crossval-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z.json"


def writable_receipt(path: Path) -> Path:
    """Fail before a long run, not after it, when the receipt cannot be written: the path
    must be absent or a regular file (a device, FIFO, symlink or directory is refused),
    and its nearest existing ancestor a directory we may write in. Nothing is created
    here: `write_receipt` makes the directories, so a run that fails leaves none."""
    from bitnet_xtask.download.store import refuse_unless_replaceable

    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():  # a dangling link: mkdir would fail on it later
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(
            f"cannot create {path.parent} for the receipt: {ancestor} is not a directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(
            f"cannot write the receipt {path}: {ancestor} is not writable",
            "give --receipt a path in a writable directory",
        )
    refuse_unless_replaceable(path)
    return path


BACKEND_TIMEOUT = click.option(
    "--backend-timeout",
    type=Seconds(allow_zero=False),
    default=600.0,
    show_default=True,
    help="Seconds one engine call (cpp: or cmd:) may take; then it and its children are "
    "killed and the model records the error.",
)


@click.group("crossval", invoke_without_command=True)
@click.option(
    "--model",
    "models",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    multiple=True,
    help="A GGUF model; repeatable. Default: every .gguf under models/.",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="numpy, cpp:<build> or cmd:<template>; repeatable, the first is the "
    "reference. Default: cpp:llama.cpp and numpy.",
)
@click.option("--prompt", "prompt", multiple=True, help="Repeatable.")
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A file with one prompt per line.",
)
@click.option(
    "--tokens-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Token ids to evaluate instead of a prompt (no tokenizer needed).",
)
@click.option(
    "--n-predict",
    type=click.IntRange(0),
    default=8,
    show_default=True,
    help="Greedy continuation length compared between backends.",
)
@click.option(
    "--tolerance-profile",
    "profile",
    help="strict, quantized or a JSON file. Default: strict for f32/f16, else quantized.",
)
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(1), help="Threads for cpp backends.")
@BACKEND_TIMEOUT
@click.option(
    "--receipt",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Where to write the receipt. Default: {DEFAULT_RECEIPTS}/crossval-<time>.json",
)
@click.option("--json", "json_lines", is_flag=True, help="JSON events on stdout.")
@click.pass_context
def crossval_command(
    ctx: click.Context,
    models: tuple[Path, ...],
    backends: tuple[str, ...],
    prompt: tuple[str, ...],
    prompts_file: Path | None,
    tokens_file: Path | None,
    n_predict: int,
    profile: str | None,
    top_k: int,
    threads: int | None,
    backend_timeout: float,
    receipt: Path | None,
    json_lines: bool,
) -> None:
    """Run the same token ids through two or more implementations; compare the logits."""
    if ctx.invoked_subcommand is not None:
        return
    reporter = ConsoleReporter(json_lines=json_lines, progress=False)
    with reporting(reporter):
        if tokens_file and (prompt or prompts_file):
            raise UsageError("give a prompt or --tokens-file, not both")
        from bitnet_xtask.crossval.runner import (
            DEFAULT_BACKENDS,
            CrossvalRequest,
            discover_models,
            run_crossval,
        )

        request = CrossvalRequest(
            models=models or discover_models(Path("models")),
            backends=backends or DEFAULT_BACKENDS,
            prompts=read_prompts(prompt, prompts_file),
            token_ids=read_token_ids(tokens_file) if tokens_file else None,
            n_predict=n_predict,
            profile=profile,
            top_k=top_k,
            threads=threads,
            timeout=backend_timeout,
        )
        path = writable_receipt(receipt or default_receipt())
        finish(run_crossval(request, reporter), path, reporter, json_lines)


@crossval_command.command("verify-receipt")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "json_lines", is_flag=True, help="JSON events on stdout.")
def verify_receipt_command(path: Path, json_lines: bool) -> None:
    """Check a receipt against its schema, and its verdicts against its own numbers.

    Exit 0: valid and passed; 1: valid but failed, or a verdict its numbers contradict;
    2: not a receipt (unreadable, or the schema is broken)."""
    reporter = ConsoleReporter(json_lines=json_lines, progress=False)
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
        if json_lines:
            reporter.emit({"phase": "done", "valid": True, "passed": passed, "receipt": str(path)})
        reporter.info(f"{path}: valid receipt, verdict {'passed' if passed else 'FAILED'}")
        if not passed:
            raise CheckFailedError(f"{path}: the receipt records a parity failure")
