"""The type of every event a command emits: one `TypedDict` per phase (and per command,
for `done`), so mypy checks each emit site's dict literal against the shape the README's
"JSON events" table and `events.schema.json` document.

`command` names the command whose job the event reports. The reporter a command makes
stamps its own name on every event that does not carry one (the `_Stamped` types), so
the core modules that emit them (crossval's runner, full-crossval's pipeline) need not
know which command runs them. A download is download-model's job wherever it runs (the
source tarball of fetch-cpp, step 1 of full-crossval), so the download core names
`download-model` itself, and its `done` stays distinguishable from fetch-cpp's.

The types are declared with `total=False` bases rather than `NotRequired`, which Python
3.10 lacks, so `__required_keys__` is right at runtime too (a test holds it to the schema).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, get_args


class _Stamped(TypedDict, total=False):
    """Events whose `command` the command's reporter adds."""

    command: str


# download-model (also inside fetch-cpp and full-crossval): emitted by bitnet_xtask.download


class DownloadStart(TypedDict):
    phase: Literal["start"]
    command: Literal["download-model"]
    file: str
    url: str
    path: str
    resume: bool
    start: int
    total: int | None
    connections: int


class DownloadProgress(TypedDict):
    phase: Literal["progress"]
    command: Literal["download-model"]
    file: str
    path: str  # the final path: what tells apart files downloading at once
    downloaded: int
    total: int | None


class _DownloadRetry(TypedDict):
    phase: Literal["retry"]
    command: Literal["download-model"]
    file: str
    wait_secs: float
    msg: str
    attempt: int


class DownloadRetry(_DownloadRetry, total=False):
    offset: int  # only for a stream of the body, not for the probe


class DownloadRestart(TypedDict):
    phase: Literal["restart"]
    command: Literal["download-model"]
    file: str
    msg: str
    connections: int


class DownloadDone(TypedDict):
    phase: Literal["done"]
    command: Literal["download-model"]
    file: str
    path: str
    bytes: int
    ms: int
    sha256: str | None
    commit: str | None
    cached: bool
    source: str  # network | up-to-date | hf-cache


class DownloadPlan(_Stamped):
    """download-model --dry-run: emitted by the command, one per file."""

    phase: Literal["plan"]
    url: str
    path: str
    total: int | None
    start: int
    free_bytes: int
    connections: int
    commit: str | None
    up_to_date: bool


# clean-cache


class CacheEntry(_Stamped):
    phase: Literal["entry"]
    index: int
    name: str
    path: str
    bytes: int
    link: bool
    removable: bool
    refused: str | None


class CleanDone(_Stamped):
    phase: Literal["done"]
    removed: list[str]
    bytes: int
    listed: int
    listed_bytes: int
    dry_run: bool


# fetch-cpp


class BuildDone(_Stamped):
    phase: Literal["done"]
    path: str
    built: bool
    cached: bool
    receipt: str


# gen-fixtures


class Fixture(_Stamped):
    phase: Literal["fixture"]
    model: str
    metadata: str
    sha256: str
    size_bytes: int
    size: str
    arch: str
    quant: str
    seed: int


# crossval and full-crossval


class Comparison(_Stamped):
    """One candidate compared with the reference on one prompt (crossval's runner)."""

    phase: Literal["comparison"]
    model: str
    candidate: str
    passed: bool
    summary: dict[str, float | None]


class Step(_Stamped):
    """full-crossval starts one of its steps (checkpoint, model, fetch-cpp, convert,
    crossval): the `index`-th `of` this run's."""

    phase: Literal["step"]
    step: str
    index: int
    of: int


class Greedy(TypedDict):
    first_divergence: int | None


class ComparisonRow(TypedDict):
    """One row of the summary table: what the receipt says about one comparison."""

    candidate: str
    positions: int
    summary: dict[str, float | None]
    greedy: Greedy | None
    passed: bool
    profile: str
    failures: list[str]
    trace: str | None  # --trace: the trace comparison's finding


class ModelRow(TypedDict):
    path: str
    error: str | None
    comparisons: list[ComparisonRow]
    paths: list[str]  # --paths: each engine that disagreed with itself, in a line


class CrossvalDone(_Stamped):
    """The receipt is written; `models` is the summary table, `failures` a count,
    `findings` what the failures mean together (a deviation two candidates share)."""

    phase: Literal["done"]
    passed: bool
    receipt: str
    failures: int
    models: list[ModelRow]
    findings: list[str]


class CrossvalPlanned(_Stamped):
    """crossval --dry-run: what the run would do (`crossval.plan.CrossvalPlan.to_json()`
    as `plan`; `lines` the same for a person); nothing ran."""

    phase: Literal["plan"]
    receipt: str
    ready: bool
    problems: list[str]
    plan: dict[str, Any]
    lines: list[str]


class ReceiptChecked(_Stamped):
    """crossval verify-receipt: the receipt is valid (an invalid one is an `error`)."""

    phase: Literal["done"]
    valid: bool
    passed: bool
    receipt: str


# models fetch


class FetchedFileRow(TypedDict):
    path: str
    size: int
    sha256: str
    source: str  # present | network | up-to-date | hf-cache
    unpacked: str | None


class FetchedModelRow(TypedDict):
    name: str
    commit: str | None
    files: list[FetchedFileRow]


class ModelsFetchDone(_Stamped):
    """models fetch: every file of the named models in place and verified."""

    phase: Literal["done"]
    models: list[FetchedModelRow]
    bytes: int
    downloaded: int
    lock: str | None


# every command


class Failure(_Stamped):
    """An expected failure, just before the command exits with `code`."""

    phase: Literal["error"]
    code: int
    msg: str
    hint: str | None


Event = (
    DownloadStart
    | DownloadProgress
    | DownloadRetry
    | DownloadRestart
    | DownloadDone
    | DownloadPlan
    | CacheEntry
    | CleanDone
    | BuildDone
    | Fixture
    | Comparison
    | Step
    | CrossvalDone
    | CrossvalPlanned
    | ReceiptChecked
    | ModelsFetchDone
    | Failure
)

#: Every event type, for the tests that hold the schema and the renderer table to them.
EVENT_TYPES: tuple[type, ...] = get_args(Event)
