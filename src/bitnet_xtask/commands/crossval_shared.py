"""What `xtask crossval` and `xtask full-crossval` both do around the run: read the
prompts, place the receipt, and finish (write it, emit `done` with the summary table,
turn a failed verdict into exit 1). Neither command imports the other's module."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitnet_xtask.commands.options import RECEIPTS_DIR
from bitnet_xtask.errors import CheckFailedError, UsageError
from bitnet_xtask.events import Reporter
from bitnet_xtask.events.types import ComparisonRow, ModelRow

if TYPE_CHECKING:
    from bitnet_xtask.crossval.results import CrossvalResult


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
    from bitnet_xtask.crossval.request import DEFAULT_PROMPT

    return prompt or (DEFAULT_PROMPT,)


def default_receipt() -> Path:
    """Named by the UTC time to the millisecond, so runs do not overwrite each other."""
    now = datetime.now(timezone.utc)
    return RECEIPTS_DIR / f"crossval-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z.json"


def writable_receipt(path: Path) -> Path:
    """Fail before a long run, not after it, when the receipt cannot be written: the path
    must be absent or a regular file (a device, FIFO, symlink or directory is refused),
    and its folder one that exists or can be created in a writable place. Nothing is
    created here: `write_receipt` makes the directories, so a run that fails leaves none."""
    from bitnet_xtask.fs import check_can_create, refuse_unless_replaceable

    check_can_create(
        path.parent,
        what="the folder for the receipt",
        hint="give --receipt a path in a writable directory",
    )
    refuse_unless_replaceable(path)
    return path


def _comparison_row(comparison: dict[str, Any], run: dict[str, Any]) -> ComparisonRow:
    greedy, verdict = comparison["greedy"], comparison["verdict"]
    traced = [
        t["message"] for t in run.get("traces", []) if t["candidate"] == comparison["candidate"]
    ]
    return {
        "trace": traced[0] if traced else None,
        "candidate": comparison["candidate"],
        "positions": comparison["metrics"]["n_positions"],
        "summary": comparison["metrics"]["summary"],
        "greedy": None if greedy is None else {"first_divergence": greedy["first_divergence"]},
        "passed": verdict["passed"],
        "profile": verdict["profile"],
        "failures": [failure["message"] for failure in verdict["failures"]],
    }


def summary_rows(receipt: dict[str, Any]) -> list[ModelRow]:
    """The summary table as data: per model its error, and a row per prompt and candidate."""
    return [
        {
            "path": model["path"],
            "error": model["error"],
            "comparisons": [
                _comparison_row(comparison, run)
                for run in model["runs"]
                for comparison in run["comparisons"]
            ],
            "paths": [
                engine["summary"]
                for run in model["runs"]
                for engine in run.get("paths", [])
                if not engine["passed"]
            ],
        }
        for model in receipt["models"]
    ]


def finish(result: CrossvalResult, path: Path, reporter: Reporter) -> None:
    """Write the receipt, emit `done` (a person sees the summary table), say where the
    receipt is; a failed verdict exits 1. The table is read from the receipt document,
    so it shows exactly what was written."""
    from bitnet_xtask.crossval.receipt import write_receipt

    receipt = result.to_receipt()
    write_receipt(path, receipt)
    failures = receipt["verdict"]["failures"]
    reporter.emit(
        {
            "phase": "done",
            "passed": receipt["verdict"]["passed"],
            "receipt": str(path),
            "failures": len(failures),
            "models": summary_rows(receipt),
            "findings": [finding["message"] for finding in receipt["verdict"]["findings"]],
        }
    )
    reporter.info(f"receipt: {path}")
    if not receipt["verdict"]["passed"]:
        count, findings = len(failures), receipt["verdict"]["findings"]
        first = findings[0]["message"] if findings else failures[0]["message"]
        raise CheckFailedError(
            f"parity check failed ({count} failure{'s' * (count > 1)}); "
            f"{'finding' if findings else 'first'}: {first}",
            f"the receipt has every metric per position: {path}",
        )
