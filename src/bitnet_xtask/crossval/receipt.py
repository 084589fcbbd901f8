"""The crossval receipt: a versioned JSON document, its schema, and its re-check.

The schema (`receipt.schema.json`, shipped in the package) fixes the shape; the
re-check recomputes every comparison's verdict from the per-position metrics and the
thresholds recorded beside them, so a receipt whose verdict was edited, or whose
metrics no longer support it, is caught.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_xtask.crossval import metrics
from bitnet_xtask.crossval.gguf_file import GGUFFile
from bitnet_xtask.download.store import atomic_write_text, hash_file, refuse_unless_replaceable
from bitnet_xtask.errors import NoSpaceError, UsageError, XtaskError

RECEIPT_KIND = "bitnet-xtask/crossval-receipt"
RECEIPT_VERSION = 1
SCHEMA_FILE = "receipt.schema.json"


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a version-1 receipt."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@dataclass(frozen=True)
class ModelLimits:
    """What bounds the input a model takes, from its GGUF header (None: not stated)."""

    context_length: int | None
    longest_token_bytes: int | None


def _gguf_facts(reader: GGUFFile) -> tuple[str | None, str | None]:
    """Architecture and weight type from the GGUF header, for models that came without
    gen-fixtures' metadata (the reference's reader: gguf-py's refuses i2_s files)."""
    from bitnet_xtask.fixtures.spec import FILE_TYPES

    arch, file_type = reader.metadata("general.architecture"), reader.metadata("general.file_type")
    quant = next((name for name, code in FILE_TYPES.items() if code == file_type), None)
    return (None if arch is None else str(arch)), quant


def _sidecar(path: Path) -> dict[str, Any] | None:
    """gen-fixtures' metadata beside a model; anything else there (not a regular file,
    not JSON, too large or too deep) is not ours to read."""
    from bitnet_xtask.inputs import read_json

    try:
        loaded = read_json(path, what="model metadata")
    except UsageError:
        return None
    return loaded if isinstance(loaded, dict) else None


def inspect_model(model: Path) -> tuple[dict[str, Any], ModelLimits]:
    """What the receipt says about a model (path, sha256, size, arch, quant and metadata:
    gen-fixtures' JSON beside the model when there is one, else the GGUF header's) and
    its input limits.

    The GGUF header is always read, sidecar or not: a model that is not a regular file,
    whose header is corrupt or whose tensors run past its end is refused here (exit 2),
    before any backend runs.
    """
    reader = GGUFFile(model)
    metadata = _sidecar(model.with_suffix(".json"))
    if metadata is not None and {"arch", "quant"} <= metadata.keys():
        arch, quant = metadata["arch"], metadata["quant"]
    else:
        arch, quant = _gguf_facts(reader)
    facts = {
        "path": str(model),
        "sha256": hash_file(model),
        "size_bytes": reader.size,
        "arch": arch,
        "quant": quant,
        "metadata": metadata,
    }
    return facts, ModelLimits(reader.context_length(), reader.longest_token_bytes())


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


def _recomputed(comparison: dict[str, Any], tolerances: metrics.Tolerances) -> metrics.Verdict:
    logits = _logits_comparison(comparison)
    greedy = comparison.get("greedy")
    greedy_comparison = (
        metrics.compare_greedy(greedy["reference"], greedy["candidate"]) if greedy else None
    )
    return metrics.verdict(logits, tolerances, greedy_comparison)


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


def _structure_errors(receipt: dict[str, Any]) -> list[str]:
    """What a receipt must hold before its verdict means anything: every model without an
    error has one run per input (each prompt, or the ids), and each run evaluates every
    backend and compares each one after the first with the first. Without this, deleting
    the runs or comparisons of a failing receipt made it pass."""
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
            compared = [[c["reference"], c["candidate"]] for c in run["comparisons"]]
            if compared != pairs:
                errors.append(f"{name}, run {index}: comparisons {compared}, but the "
                              f"backends give {pairs}")  # fmt: skip
            if [e["backend"] for e in run["evaluations"]] != specs:
                errors.append(f"{name}, run {index}: not every backend's evaluation is recorded")
            for parity in run["tokenization"]:
                if parity["tokens"] is not None and parity["match"] != (
                    parity["tokens"] == run["tokens"]
                ):
                    errors.append(f"{name}, run {index}: {parity['backend']}'s tokenization "
                                  f"match={parity['match']} contradicts its ids")  # fmt: skip
    return errors


def verdict_errors(receipt: dict[str, Any]) -> list[str]:
    """Where the recorded verdicts disagree with what the recorded numbers say, or the
    receipt lacks the runs and comparisons its settings call for."""
    errors = _structure_errors(receipt)
    threshold_names = {f.name for f in fields(metrics.Tolerances)}
    any_failed = False
    for model in receipt["models"]:
        if model["error"] is not None:
            any_failed = True
            if model["runs"]:
                errors.append(f"{Path(model['path']).name}: an error and runs both recorded")
        recorded = model["tolerances"]
        tolerances = metrics.Tolerances(**{k: recorded[k] for k in threshold_names})
        builtin = metrics.PROFILES.get(tolerances.name)
        if builtin is not None and builtin != tolerances:
            errors.append(
                f"{Path(model['path']).name}: profile {tolerances.name!r} is recorded with "
                "thresholds that are not the built-in ones"
            )
        for run in model["runs"]:
            mismatched = {t["backend"] for t in run["tokenization"] if t["match"] is False}
            for comparison in run["comparisons"]:
                verdict = comparison["verdict"]
                expected = _recomputed(comparison, tolerances)
                errors += _summary_errors(comparison, f"{Path(model['path']).name}")
                tokenization_failed = comparison["candidate"] in mismatched
                if tokenization_failed != any(
                    f["metric"] == "tokenization" for f in verdict["failures"]
                ):
                    errors.append(
                        f"{Path(model['path']).name} / {comparison['candidate']}: the "
                        "tokenization failure and the recorded parity disagree"
                    )
                passed = expected.passed and not tokenization_failed
                any_failed |= not passed
                where = f"{Path(model['path']).name} / {comparison['candidate']}"
                if verdict["passed"] != passed:
                    errors.append(
                        f"{where}: recorded verdict passed={verdict['passed']}, but the "
                        f"metrics and thresholds say passed={passed}"
                    )
                recorded_metrics = sorted(
                    f["metric"] for f in verdict["failures"] if f["metric"] != "tokenization"
                )
                if recorded_metrics != sorted(f.metric for f in expected.failures):
                    errors.append(
                        f"{where}: recorded failures {recorded_metrics} differ from "
                        f"{sorted(f.metric for f in expected.failures)}"
                    )
    if receipt["verdict"]["passed"] == any_failed:
        errors.append(
            f"overall verdict passed={receipt['verdict']['passed']} contradicts the comparisons"
        )
    return errors


RECEIPT_LIMIT = 256 << 20
"""The largest receipt verify-receipt reads (2,048 positions of one comparison take
about 0.5 MB, so this is hundreds of long comparisons)."""


def load_receipt(path: Path) -> Any:
    """The parsed document, or a usage error naming what is wrong with the file: not a
    regular file (`/dev/zero` never ends), too large, not UTF-8, not JSON, too deep."""
    from bitnet_xtask.inputs import read_json

    return read_json(path, what="receipt", limit=RECEIPT_LIMIT)
