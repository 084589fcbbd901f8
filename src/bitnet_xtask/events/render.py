"""The one table that turns events into human text.

Commands never branch on `--json`: they emit the same events either way, and without
`--json` the reporter looks each event up here by (phase, command) and prints what the
entry makes of it. An entry whose text is None prints nothing: the progress bar draws
`progress`, `main` prints an `error`'s message, and the core modules that emit `step`,
`restart` and fetch-cpp's `done` say the same to a person with `info()` as they go. A
test holds the table to the schema: every documented event has an entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from bitnet_xtask.events.types import (
    CacheEntry,
    CleanDone,
    ComparisonRow,
    CrossvalDone,
    CrossvalPlanned,
    DownloadDone,
    DownloadPlan,
    DownloadRetry,
    DownloadStart,
    Fixture,
    ModelsFetchDone,
    ReceiptChecked,
)


def human_bytes(n: float) -> str:
    """`1536` -> `1.5 KiB`: sizes as people read them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Render(NamedTuple):
    """How one kind of event reads: `text` (None: silent), on stdout when it is the
    command's product (clean-cache's listing), else on stderr with the other lines."""

    text: Callable[[Any], str | None]
    stdout: bool = False


def _silent(event: Mapping[str, Any]) -> None:
    return None


def _start(event: DownloadStart) -> str:
    where = f" (resuming at {human_bytes(event['start'])})" if event["resume"] else ""
    return f"downloading {event['file']} from {event['url']}{where}"


def _retry(event: DownloadRetry) -> str:
    return f"retrying {event['file']} in {event['wait_secs']:.1f}s: {event['msg']}"


def _downloaded(event: DownloadDone) -> str:
    how = "up to date" if event["cached"] else "saved"
    digest = f", sha256 {event['sha256']}" if event["sha256"] else ""
    return f"{how}: {event['path']} ({human_bytes(event['bytes'])}{digest})"


def _plan(event: DownloadPlan) -> str:
    total = event["total"]
    return (
        f"plan for {event['path']}:\n"
        f"  url:         {event['url']}\n"
        f"  size:        {'unknown' if total is None else human_bytes(total)}\n"
        f"  resume at:   {human_bytes(event['start'])}\n"
        f"  free space:  {human_bytes(event['free_bytes'])}\n"
        f"  connections: {event['connections']}\n"
        f"  commit:      {event['commit'] or 'unknown'}\n"
        f"  up to date:  {'yes' if event['up_to_date'] else 'no'}"
    )


def _entry(event: CacheEntry) -> str:
    link = " (symlink: only the link is removed)" if event["link"] else ""
    refused = f"  [refused: {event['refused']}]" if event["refused"] else ""
    size = human_bytes(event["bytes"])
    return f"{event['index']:>3}  {size:>10}  {event['name']}: {event['path']}{link}{refused}"


def _cleaned(event: CleanDone) -> str:
    listed = event["listed"]
    if not listed:
        return "nothing to clean"
    if event["dry_run"]:
        return (
            f"dry run: --yes would remove {listed} of {listed} "
            f"({human_bytes(event['listed_bytes'])}); removed nothing"
        )
    return f"removed {len(event['removed'])} of {listed} ({human_bytes(event['bytes'])})"


def _fixture(event: Fixture) -> str:
    size = human_bytes(event["size_bytes"])
    return f"{event['model']} ({size}, sha256 {event['sha256'][:12]}...)"


def _number(value: float | None, spec: str) -> str:
    """A metric as the table shows it; null (NaN or infinity in JSON) reads as nan."""
    return format(math.nan if value is None else value, spec)


_HEADER = (
    f"{'model':34} {'candidate':18} {'pos':>4} {'max|d|':>9} {'rms':>9} {'min cos':>9} "
    f"{'max KL':>9} {'top1':>5} {'greedy':>6}  verdict"
)


def _row(name: str, row: ComparisonRow) -> str:
    s, greedy = row["summary"], row["greedy"]
    where = None if greedy is None else greedy["first_divergence"]
    diverged = "-" if greedy is None else ("same" if where is None else f"@{where}")
    verdict = f"{'pass' if row['passed'] else 'FAIL'} ({row['profile']})"
    return (
        f"{name:34} {row['candidate'][:18]:18} {row['positions']:>4} "
        f"{_number(s['max_abs_diff'], '9.3g')} {_number(s['rms_diff'], '9.3g')} "
        f"{_number(s['min_cosine'], '9.6f')} {_number(s['max_kl'], '9.3g')} "
        f"{_number(s['top1_agreement'], '5.2f')} {diverged:>6}  {verdict}"
    )


def _summary_table(event: CrossvalDone) -> str:
    """One row per model, prompt and candidate, each failure's message under its row."""
    rows = [_HEADER, "-" * len(_HEADER)]
    for model in event["models"]:
        name = Path(model["path"]).name[:34]
        if model["error"] is not None:
            rows.append(f"{name:34} ERROR: {model['error']}")
        for comparison in model["comparisons"]:
            rows.append(_row(name, comparison))
            rows += [f"    {message}" for message in comparison["failures"]]
            if trace := comparison["trace"]:
                rows.append(f"    trace: {trace}")
        rows += [f"{name:34} paths: {summary}" for summary in model["paths"]]
    rows += [f"finding: {finding}" for finding in event["findings"]]
    return "\n".join(rows)


def _crossval_plan(event: CrossvalPlanned) -> str:
    return "\n".join([*event["lines"], f"receipt: {event['receipt']}"])


def _checked(event: ReceiptChecked) -> str:
    return f"{event['receipt']}: valid receipt, verdict {'passed' if event['passed'] else 'FAILED'}"


#: (phase, command) -> how the event reads; command None: whichever command emits it.
def _fetched(event: ModelsFetchDone) -> str:
    files = sum(len(model["files"]) for model in event["models"])
    names = ", ".join(model["name"] for model in event["models"])
    lock = f"; lock: {event['lock']}" if event["lock"] else " (--locked: the lock as it was)"
    return (
        f"{names}: {files} file(s), {human_bytes(event['bytes'])}, "
        f"{event['downloaded']} downloaded, the rest already here{lock}"
    )


RENDERERS: dict[tuple[str, str | None], Render] = {
    ("start", None): Render(_start),
    ("progress", None): Render(_silent),
    ("retry", None): Render(_retry),
    ("restart", None): Render(_silent),
    ("done", "download-model"): Render(_downloaded),
    ("plan", None): Render(_plan),
    ("entry", None): Render(_entry, stdout=True),
    ("done", "clean-cache"): Render(_cleaned, stdout=True),
    ("done", "fetch-cpp"): Render(_silent),
    ("fixture", None): Render(_fixture),
    ("comparison", None): Render(_silent),
    ("step", None): Render(_silent),
    ("done", "crossval"): Render(_summary_table),
    ("done", "full-crossval"): Render(_summary_table),
    ("done", "crossval verify-receipt"): Render(_checked),
    ("plan", "crossval"): Render(_crossval_plan),
    ("done", "models fetch"): Render(_fetched),
    ("error", None): Render(_silent),
}


def renderer(event: Mapping[str, Any]) -> Render:
    """The table's entry for an event (silent for one it does not know)."""
    phase, command = str(event.get("phase")), event.get("command")
    return RENDERERS.get((phase, command)) or RENDERERS.get((phase, None)) or Render(_silent)
