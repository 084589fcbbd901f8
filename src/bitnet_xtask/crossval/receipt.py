"""The crossval receipt: a versioned JSON document, its schema, and its re-check.

The document is written by `results.CrossvalResult.to_receipt()`. The schema
(`receipt.schema.json`, shipped in the package) fixes the shape; the re-check
recomputes every comparison's verdict from the per-position metrics, the greedy
continuations, the tokenization and the thresholds recorded beside them, through the
same `metrics.verdict` that judged them, so a receipt whose verdict was edited, or
whose numbers no longer support it, is caught.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_xtask.crossval import metrics
from bitnet_xtask.errors import NoSpaceError, UsageError, XtaskError
from bitnet_xtask.fs import atomic_write_text, refuse_unless_replaceable

SCHEMA_FILE = "receipt.schema.json"


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a version-1 receipt."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they are written as null (the schema says so)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_receipt(path: Path, receipt: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a receipt. Only an absent path or a regular
    file is replaced (`atomic_write_text`: a device, FIFO, symlink or directory there is
    refused, exit 2); the directories are created only now, so a run that failed earlier
    leaves none behind."""
    refuse_unless_replaceable(path)
    text = json.dumps(_json_safe(receipt), indent=2, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except NoSpaceError:
        raise NoSpaceError(
            f"disk full while writing the receipt {path}",
            "free some space (or give --receipt on another disk) and run again",
        ) from None
    except (OSError, XtaskError) as exc:  # mkdir's OSError, or atomic_write_text's
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        why = (cause.strerror or cause) if isinstance(cause, OSError) else exc
        raise UsageError(f"cannot write the receipt {path}: {why}") from None


def schema_errors(receipt: Any) -> list[str]:
    """Every place the document breaks the schema, as `path: message` lines."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    return [
        _clip(f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}")
        for error in sorted(validator.iter_errors(receipt), key=lambda e: list(e.absolute_path))
    ]


def _clip(line: str, width: int = 240) -> str:
    """jsonschema quotes the offending value whole: a deep or huge one would fill pages."""
    return line if len(line) <= width else f"{line[: width // 2]} ... {line[-width // 2 :]}"


def _logits_comparison(comparison: dict[str, Any]) -> metrics.LogitsComparison:
    """The per-position metrics as recorded, back in their dataclass."""
    positions = comparison["metrics"]["positions"]

    def column(name: str, dtype: type = np.float64) -> Any:
        values = [np.nan if p[name] is None else p[name] for p in positions]
        return np.array(values, dtype=dtype)

    return metrics.LogitsComparison(
        n_vocab=comparison["metrics"]["n_vocab"],
        top_k=comparison["metrics"]["top_k"],
        max_abs_diff=column("max_abs_diff"),
        rms_diff=column("rms_diff"),
        cosine=column("cosine"),
        kl=column("kl"),
        top1_match=column("top1_match", bool),
        top1_margin=column("top1_margin"),
        topk_overlap=column("topk_overlap"),
    )


def _token_difference(run: dict[str, Any], candidate: str) -> int | None:
    """Where the candidate's own ids, as recorded, part from the ids the run evaluated
    (None: the same, or the candidate did not tokenize)."""
    parity = next((t for t in run["tokenization"] if t["backend"] == candidate), None)
    if parity is None or parity["tokens"] is None:
        return None
    return metrics.compare_greedy(run["tokens"], parity["tokens"]).first_divergence


def _recomputed(
    comparison: dict[str, Any], tolerances: metrics.Tolerances, run: dict[str, Any]
) -> metrics.Verdict:
    """The verdict the recorded numbers give, by the rule that judged them."""
    greedy = comparison.get("greedy")
    greedy_comparison = (
        metrics.compare_greedy(greedy["reference"], greedy["candidate"]) if greedy else None
    )
    differ = _token_difference(run, comparison["candidate"])
    return metrics.verdict(_logits_comparison(comparison), tolerances, greedy_comparison, differ)


def _summary_errors(comparison: dict[str, Any], where: str) -> list[str]:
    """The summary (what the table shows) must be the summary of the positions."""
    recorded = comparison["metrics"]
    if recorded["n_positions"] != len(recorded["positions"]):
        return [f"{where}: n_positions {recorded['n_positions']} but "
                f"{len(recorded['positions'])} positions"]  # fmt: skip
    return [
        f"{where}: summary {name} = {recorded['summary'].get(name)} but the positions give {value}"
        for name, value in _logits_comparison(comparison).summary().items()
        if not _same(recorded["summary"].get(name), value)
    ]


def _same(a: Any, b: float) -> bool:
    if a is None:
        return math.isnan(b)
    return math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)


def _run_structure_errors(
    where: str, run: dict[str, Any], specs: list[str], pairs: list[list[str]]
) -> list[str]:
    """One run compares each backend after the first with the first, records every
    backend's evaluation, and each recorded tokenization agrees with its own ids."""
    errors = []
    compared = [[c["reference"], c["candidate"]] for c in run["comparisons"]]
    if compared != pairs:
        errors.append(f"{where}: comparisons {compared}, but the backends give {pairs}")
    if [e["backend"] for e in run["evaluations"]] != specs:
        errors.append(f"{where}: not every backend's evaluation is recorded")
    for parity in run["tokenization"]:
        if parity["tokens"] is not None and parity["match"] != (parity["tokens"] == run["tokens"]):
            errors.append(f"{where}: {parity['backend']}'s tokenization "
                          f"match={parity['match']} contradicts its ids")  # fmt: skip
    return errors


def _structure_errors(receipt: dict[str, Any]) -> list[str]:
    """What a receipt must hold before its verdict means anything: every model without an
    error has one run per input (each prompt, or the ids), each as `_run_structure_errors`
    says. Without this, deleting the runs or comparisons of a failing receipt made it
    pass."""
    settings, errors = receipt["settings"], []
    inputs = [None] if settings["token_ids"] is not None else list(settings["prompts"])
    specs = [backend["spec"] for backend in receipt["backends"]]
    pairs = [[specs[0], spec] for spec in specs[1:]]
    for model in receipt["models"]:
        name = Path(model["path"]).name
        if model["error"] is not None:
            continue
        if [run["prompt"] for run in model["runs"]] != inputs:
            errors.append(
                f"{name}: {len(model['runs'])} runs recorded, but the settings give "
                f"{len(inputs)} input(s): a run is missing or does not match its prompt"
            )
        for index, run in enumerate(model["runs"], 1):
            errors += _run_structure_errors(f"{name}, run {index}", run, specs, pairs)
            errors += _paths_structure_errors(f"{name}, run {index}", run, receipt)
    return errors


def _paths_structure_errors(where: str, run: dict[str, Any], receipt: dict[str, Any]) -> list[str]:
    """With --paths, every cpp: and cmd: engine has its paths recorded (none without),
    each as `_engine_paths_errors` says."""
    backends = receipt["backends"]
    engines = [b["spec"] for b in backends if b["identity"]["kind"] in ("cpp", "cmd")]
    wanted = engines if receipt["settings"].get("paths") else []
    sections = run.get("paths", [])
    recorded = [section["backend"] for section in sections]
    if recorded != wanted:
        return [f"{where}: execution paths are recorded for {recorded}, but the settings "
                f"and backends give {wanted}"]  # fmt: skip
    reference = backends[0]["spec"]
    return [e for section in sections for e in _engine_paths_errors(where, section, reference)]


def _engine_paths_errors(where: str, section: dict[str, Any], reference: str) -> list[str]:
    """One engine's paths: each labelled by its settings, none twice nor the baseline,
    each compared with the baseline and with the reference (none for the reference)."""
    from bitnet_xtask.crossval.eval_options import ExecutionPath
    from bitnet_xtask.crossval.paths import path_name

    spec, errors = section["backend"], []
    paths = [section["baseline"], *(check["path"] for check in section["paths"])]
    labels = [path["label"] for path in paths]
    if labels != [ExecutionPath(**{k: v for k, v in p.items() if k != "label"}).label()
                  for p in paths]:  # fmt: skip
        errors.append(f"{where} / {spec}: a path's label is not its settings")
    if len(set(labels)) != len(labels):
        errors.append(f"{where} / {spec}: a path is recorded twice, or is the baseline")
    for check in section["paths"]:
        name = path_name(spec, check["path"]["label"])
        pairs = [(check["against_baseline"], path_name(spec, labels[0]))]
        if (check["against_reference"] is None) != (spec == reference):
            errors.append(f"{where} / {name}: compared with the reference {reference!r} "
                          "exactly when it is not the reference")  # fmt: skip
        elif check["against_reference"] is not None:
            pairs.append((check["against_reference"], reference))
        errors += [f"{where} / {name}: a comparison names other backends"
                   for c, against in pairs
                   if (c["reference"], c["candidate"]) != (against, name)]  # fmt: skip
    return errors


def _failure_errors(
    recorded: list[dict[str, Any]], expected: tuple[metrics.Failure, ...], where: str
) -> list[str]:
    """The recorded failures must be the ones the numbers give, metric by metric."""
    have = Counter(f["metric"] for f in recorded)
    want = Counter(f.metric for f in expected)
    missing = [f"{where}: the numbers give a {metric} failure that is not recorded"
               for metric in sorted(want - have)]  # fmt: skip
    return missing + [f"{where}: a {metric} failure is recorded that the numbers do not give"
                      for metric in sorted(have - want)]  # fmt: skip


def _comparison_errors(
    comparison: dict[str, Any], tolerances: metrics.Tolerances, run: dict[str, Any], where: str
) -> tuple[list[str], bool]:
    """Where one comparison's recorded verdict and its numbers disagree, and whether the
    numbers say it passed."""
    expected = _recomputed(comparison, tolerances, run)
    recorded = comparison["verdict"]
    errors = _summary_errors(comparison, where)
    if recorded["passed"] != expected.passed:
        errors.append(
            f"{where}: recorded verdict passed={recorded['passed']}, but the "
            f"metrics and thresholds say passed={expected.passed}"
        )
    return errors + _failure_errors(recorded["failures"], expected.failures, where), expected.passed


def _recorded_tolerances(model: dict[str, Any]) -> tuple[metrics.Tolerances, list[str]]:
    """The thresholds recorded for a model, and an error if they claim a built-in
    profile's name with other numbers."""
    recorded = model["tolerances"]
    # a receipt written before --trace has no max_tensor_rel_err: its profile's, or strict's
    base = metrics.PROFILES.get(recorded["name"], metrics.PROFILES["strict"])
    tolerances = metrics.Tolerances(
        **{f.name: recorded.get(f.name, getattr(base, f.name)) for f in fields(metrics.Tolerances)}
    )
    builtin = metrics.PROFILES.get(tolerances.name)
    if builtin is None or builtin == tolerances:
        return tolerances, []
    return tolerances, [
        f"{Path(model['path']).name}: profile {tolerances.name!r} is recorded with "
        "thresholds that are not the built-in ones"
    ]


def _shared_errors(run: dict[str, Any], tolerances: metrics.Tolerances, name: str) -> list[str]:
    """A shared deviation must be what its numbers say: the two candidates agree with
    each other (its `between` comparison passes), and each failed against the reference."""
    failed = {c["candidate"] for c in run["comparisons"] if not c["verdict"]["passed"]}
    errors = []
    for shared in run.get("shared_deviations", []):
        first, second = shared["candidates"]
        where = f"{name} / {first} and {second}"
        between = shared["between"]
        if (between["reference"], between["candidate"]) != (first, second):
            errors.append(f"{where}: the comparison between them names other backends")
        found, passed = _comparison_errors(between, tolerances, {**run, "tokenization": []}, where)
        errors += found
        if not passed:
            errors.append(f"{where}: recorded as a shared deviation, but they do not agree")
        errors += [f"{where}: {spec} is recorded as failing, but its comparison passed"
                   for spec in (first, second) if spec not in failed]  # fmt: skip
    return errors


def _model_errors(model: dict[str, Any], receipt: dict[str, Any]) -> tuple[list[str], bool]:
    """Where one model's record contradicts itself, and whether it failed."""
    name = Path(model["path"]).name
    tolerances, errors = _recorded_tolerances(model)
    failed = model["error"] is not None
    if failed and model["runs"]:
        errors.append(f"{name}: an error and runs both recorded")
    for run in model["runs"]:
        for comparison in run["comparisons"]:
            where = f"{name} / {comparison['candidate']}"
            found, passed = _comparison_errors(comparison, tolerances, run, where)
            errors += found
            failed |= not passed
        errors += _shared_errors(run, tolerances, name)
        errors += _trace_errors(run, tolerances, name, receipt)
        found, passed = _paths_errors(run, tolerances, name)
        errors += found
        failed |= not passed
    return errors, failed


def _paths_errors(
    run: dict[str, Any], tolerances: metrics.Tolerances, name: str
) -> tuple[list[str], bool]:
    """Each --paths comparison's verdict follows from its numbers (as every comparison's:
    `_comparison_errors`, the tokenization aside: a path evaluates the run's ids), a path
    passed exactly when its comparisons did, an engine exactly when its paths did; and
    whether they all passed."""
    errors, every = [], True
    for section in run.get("paths", []):
        engine = True
        for check in section["paths"]:
            where = f"{name} / {section['backend']} at {check['path']['label']}"
            compared = [check["against_baseline"], check["against_reference"]]
            passed = True
            for comparison in (c for c in compared if c is not None):
                found, ok = _comparison_errors(comparison, tolerances, {**run, "tokenization": []},
                                               where)  # fmt: skip
                errors += found
                passed &= ok
            if check["passed"] != passed:
                errors.append(f"{where}: recorded passed={check['passed']}, but its "
                              f"comparisons say passed={passed}")  # fmt: skip
            engine &= passed
        if section["passed"] != engine:
            errors.append(f"{name} / {section['backend']}: its paths are recorded "
                          f"passed={section['passed']}, but they say passed={engine}")  # fmt: skip
        every &= engine
    return errors, every


def _trace_errors(
    run: dict[str, Any], tolerances: metrics.Tolerances, name: str, receipt: dict[str, Any]
) -> list[str]:
    """Each trace comparison's judgements follow from its numbers: it compares a
    candidate of the run with its reference (the first backend), once, and only when the
    settings asked for traces; its tolerance is the profile's; a step is over exactly
    when its relative error exceeds it (a NaN, recorded as null, is over) or its shapes
    could not be compared; the first divergence is the first step over."""
    specs = [b["spec"] for b in receipt["backends"]]
    traces = run.get("traces", [])
    errors = []
    if traces and receipt["settings"].get("trace") is None:
        errors.append(f"{name}: traces recorded, but the settings asked for none")
    candidates = [t["candidate"] for t in traces]
    if len(set(candidates)) != len(candidates):
        errors.append(f"{name}: a candidate's trace is recorded twice")
    for trace in traces:
        where = f"{name} / trace of {trace['candidate']}"
        if trace["reference"] != specs[0] or trace["candidate"] not in specs[1:]:
            errors.append(f"{where}: not a candidate of this run against its reference "
                          f"{specs[0]!r}")  # fmt: skip
        if trace["tolerance"] != tolerances.max_tensor_rel_err:
            errors.append(f"{where}: tolerance {trace['tolerance']} is not the profile's "
                          f"{tolerances.max_tensor_rel_err}")  # fmt: skip
        for step in trace["steps"]:
            measured, status = step["metrics"], step["status"]
            rel_err = None if measured is None else measured["rel_err"]
            if (measured is not None) != (status == "compared"):
                errors.append(f"{where}: {step['label']} is {status} but has "
                              f"{'no ' * (measured is None)}metrics")  # fmt: skip
            over = status == "incomparable" or (
                measured is not None and (rel_err is None or rel_err > trace["tolerance"])
            )
            if step["over"] != over:
                errors.append(f"{where}: {step['label']} is recorded over={step['over']}, "
                              f"but its rel_err {rel_err} says {over}")  # fmt: skip
        first = next((s["label"] for s in trace["steps"] if s["over"]), None)
        if trace["first_divergence"] != first:
            recorded = trace["first_divergence"]
            errors.append(f"{where}: the first divergence is recorded as {recorded!r}, "
                          f"but the first step over is {first!r}")  # fmt: skip
    return errors


def verdict_errors(receipt: dict[str, Any]) -> list[str]:
    """Where the recorded verdicts disagree with what the recorded numbers say, or the
    receipt lacks the runs and comparisons its settings call for."""
    errors = _structure_errors(receipt)
    any_failed = False
    for model in receipt["models"]:
        found, failed = _model_errors(model, receipt)
        errors += found
        any_failed |= failed
    if receipt["verdict"]["passed"] == any_failed:
        errors.append(
            f"overall verdict passed={receipt['verdict']['passed']} contradicts the comparisons"
        )
    return errors + _findings_errors(receipt)


def _findings_errors(receipt: dict[str, Any]) -> list[str]:
    """The verdict's findings are the runs' shared deviations, each judged against the
    run's reference (the first backend)."""
    reference = receipt["backends"][0]["spec"]
    recorded = [
        (Path(model["path"]).name, shared)
        for model in receipt["models"]
        for run in model["runs"]
        for shared in run.get("shared_deviations", [])
    ]
    errors = [f"{name}: a shared deviation against {shared['reference']!r}, but the "
              f"reference is {reference!r}"
              for name, shared in recorded if shared["reference"] != reference]  # fmt: skip
    findings = receipt["verdict"].get("findings", [])
    pairs = [(s["candidates"], s["between"]["metrics"]["summary"]) for _, s in recorded]
    listed = [(f["candidates"], f["between"]["metrics"]["summary"]) for f in findings]
    if pairs != listed:
        errors.append("the verdict's findings are not the runs' shared deviations")
    return errors


RECEIPT_LIMIT = 256 << 20
"""The largest receipt verify-receipt reads (2,048 positions of one comparison take
about 0.5 MB, so this is hundreds of long comparisons)."""


def load_receipt(path: Path) -> Any:
    """The parsed document, or a usage error naming what is wrong with the file: not a
    regular file (`/dev/zero` never ends), too large, not UTF-8, not JSON, too deep."""
    from bitnet_xtask.inputs import read_json

    return read_json(path, what="receipt", limit=RECEIPT_LIMIT)
