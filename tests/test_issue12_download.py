"""Issue 12, the download share: one freshness rule for `--dry-run` and the real run, typed
keyword arguments of the Python API, and I/O errors in the middle of a download.

Every test runs the real CLI (or the real API) against the project's HF-compatible server
on 127.0.0.1 (testing/servers/hf_server.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_type_hints

import pytest
from conftest import REPO, Run, Xtask, payload
from servers.hf_server import Faults, HFTestServer

NAME = "model.gguf"
DATA = payload(200_000, seed=1201)
NEW = payload(200_000, seed=1202)


def _plan(xtask: Xtask, hf: HFTestServer, *args: str) -> Run:
    return xtask.download(hf.hub_url, "--file", NAME, "--dry-run", *args)


def _human_plan(xtask: Xtask, hf: HFTestServer) -> Run:
    """The dry run as a person sees it: the verdict and its reason on stderr."""
    return xtask.run(
        "download-model", "--base-url", hf.hub_url, "--id", REPO, "--out", str(xtask.out),
        "--file", NAME, "--dry-run",
    )  # fmt: skip


def _hand_copied(xtask: Xtask, hf: HFTestServer) -> None:
    """The right bytes, put there by hand: no `.etag`, no `.lastmod`."""
    xtask.target(NAME).parent.mkdir(parents=True)
    xtask.target(NAME).write_bytes(DATA)


def _damaged(xtask: Xtask, hf: HFTestServer) -> None:
    """Wrong bytes with no metadata: the advertised sha256 says it is not the file."""
    xtask.target(NAME).parent.mkdir(parents=True)
    xtask.target(NAME).write_bytes(DATA[:-1] + b"!")


def _downloaded(xtask: Xtask, hf: HFTestServer) -> None:
    """A finished download: `.etag` names the version the server still serves."""
    assert xtask.download(hf.hub_url, "--file", NAME).code == 0


def _outdated(xtask: Xtask, hf: HFTestServer) -> None:
    """A finished download of a version the server has since replaced."""
    _downloaded(xtask, hf)
    hf.add_file(REPO, NAME, NEW)


@pytest.mark.parametrize(
    ("prepare", "up_to_date", "freshness"),
    [
        (_hand_copied, True, "up to date by sha256"),
        (_damaged, False, "stale"),
        (_downloaded, True, "up to date by ETag"),
        (_outdated, False, "stale"),
    ],
    ids=["hand-copied-no-etag", "damaged-no-etag", "etag-matches", "etag-changed"],
)
def test_the_dry_run_and_the_real_run_agree_on_freshness(
    hf: HFTestServer,
    xtask: Xtask,
    prepare: Callable[[Xtask, HFTestServer], None],
    up_to_date: bool,
    freshness: str,
) -> None:
    """Bug 1: the plan compared ETags only, so a hand-copied correct file was "not up to
    date" in the dry run and then accepted (by its sha256) by the real run."""
    hf.add_file(REPO, NAME, DATA)
    prepare(xtask, hf)
    before = sorted(p.name for p in xtask.target(NAME).parent.iterdir())
    dry = _plan(xtask, hf)
    assert dry.code == 0, dry.stderr
    (plan,) = dry.events()
    assert plan["up_to_date"] is up_to_date
    assert sorted(p.name for p in xtask.target(NAME).parent.iterdir()) == before  # wrote nothing
    human = _human_plan(xtask, hf)
    assert freshness in human.stderr, human.stderr

    real = xtask.download(hf.hub_url, "--file", NAME)
    assert real.code == 0, real.stderr
    done = real.events()[-1]
    assert done["phase"] == "done"
    assert (done["source"] == "up-to-date") is up_to_date
    served = DATA if prepare is not _outdated else NEW
    assert xtask.target(NAME).read_bytes() == served
    # Once the real run is done, both say "up to date".
    (after,) = _plan(xtask, hf).events()
    assert after["up_to_date"] is True


def test_a_dry_run_with_a_wrong_sha256_fails_as_the_real_run_does(
    hf: HFTestServer, xtask: Xtask
) -> None:
    """`--sha256` against an up-to-date file: the plan said "up to date" (exit 0) where the
    real run exits 13 (the hub advertises another sha256: a typo). Now both exit 13."""
    digest = hf.add_file(REPO, NAME, DATA)
    _downloaded(xtask, hf)
    typo = ("0" if digest[0] != "0" else "1") + digest[1:]
    dry = _plan(xtask, hf, "--sha256", typo)
    real = xtask.download(hf.hub_url, "--file", NAME, "--sha256", typo)
    assert (dry.code, real.code) == (13, 13), (dry.stderr, real.stderr)
    assert dry.events()[-1]["msg"] == real.events()[-1]["msg"]
    assert xtask.target(NAME).read_bytes() == DATA


def test_a_dry_run_that_must_ask_with_a_get_says_so(hf: HFTestServer, xtask: Xtask) -> None:
    """A server with no ETag: only a conditional GET can tell; the plan says it is unknown
    (not "stale"), and does not send that GET."""
    hf.add_file(REPO, NAME, DATA)
    hf.set_faults(REPO, NAME, Faults(no_linked_headers=True))
    _downloaded(xtask, hf)
    xtask.target(NAME + ".etag").unlink()
    hf.clear_log()
    dry = _human_plan(xtask, hf)
    assert dry.code == 0, dry.stderr
    assert "unknown" in dry.stderr and "conditional GET" in dry.stderr
    assert [r.method for r in hf.requests] == ["HEAD"]


# --- the Python API takes typed keyword arguments ----------------------------------------


def test_the_option_keywords_are_the_fields_of_download_options() -> None:
    """`download_model(**options)` was untyped (`type: ignore`): a misspelt keyword was a
    TypeError at run time only. The keywords are now TypedDicts that mypy checks; they
    must name exactly the fields of `DownloadOptions`, with the same types."""
    from bitnet_xtask.download import DownloadOptions
    from bitnet_xtask.download.options import HubOptions, TransferOptions

    fields = {f.name: f for f in dataclasses.fields(DownloadOptions)}
    hints = get_type_hints(DownloadOptions)
    assert set(HubOptions.__annotations__) == set(fields) - {"repo_id"}
    assert set(TransferOptions.__annotations__) <= set(HubOptions.__annotations__)
    for name, kind in get_type_hints(HubOptions).items():
        assert kind == hints[name], name


def test_mypy_refuses_a_misspelt_option(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e .[dev])")
    script = tmp_path / "caller.py"
    script.write_text(
        "from pathlib import Path\n"
        "from bitnet_xtask.download import download_model, download_url\n"
        "download_model('org/m', 'f.gguf', out=Path('m'), connections=4, retries=1)\n"
        "download_url('http://127.0.0.1:1/x', Path('d'), retries=0, stall_timeout=5.0)\n"
        "download_model('org/m', 'f.gguf', conections=4)\n"
        "download_url('http://127.0.0.1:1/x', Path('d'), token='t')\n"
        "download_model('org/m', 'f.gguf', retries='3')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--python-version", "3.10", str(script)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["5", "6", "7"], done.stdout


# --- an I/O error in the middle of a download ---------------------------------------------


def _limit_file_size(limit: int) -> Callable[[], None]:
    """RLIMIT_FSIZE: a write past `limit` bytes fails with EFBIG (Python ignores SIGXFSZ),
    a real kernel error in the middle of a download, without root."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_an_io_error_mid_download_is_a_clear_error_and_keeps_the_part(
    hf: HFTestServer, xtask: Xtask
) -> None:
    """`PartFile.write` let every OSError but ENOSPC out raw (a traceback, the path
    nowhere). A write the kernel refuses half way (here EFBIG: the file-size limit; EIO
    on a dying disk takes the same path) is now exit 1 naming `.part`, which is kept, and
    the same command resumes once the cause is gone."""
    data = payload(3 << 20, seed=1203)
    digest = hf.add_file(REPO, NAME, data)
    args = xtask.download_args(hf.hub_url, "--file", NAME, "--retries", "0")
    done = subprocess.run(
        xtask.argv(args), env=xtask.env(), capture_output=True, text=True, timeout=120,
        preexec_fn=_limit_file_size(1 << 20), check=False,
    )  # fmt: skip
    part = xtask.target(NAME + ".part")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"cannot write {part}: File too large" in done.stderr, done.stderr
    error = [json.loads(line) for line in done.stdout.splitlines()][-1]
    assert error["phase"] == "error" and error["code"] == 1
    assert "kept" in error["hint"], error
    assert 0 < part.stat().st_size <= 1 << 20
    assert not xtask.target(NAME + ".lock").exists()

    resumed = xtask.download(hf.hub_url, "--file", NAME)
    assert resumed.code == 0, resumed.stderr
    assert resumed.events()[0]["resume"] is True
    assert resumed.events()[-1]["sha256"] == digest
    assert xtask.target(NAME).read_bytes() == data


def test_a_head_refused_with_405_fails_at_once_without_a_get_fallback(
    hf: HFTestServer, xtask: Xtask
) -> None:
    """`HubClient.probe` had a GET fallback for a HEAD answered 405 or 501 that could never
    run: `request` turns those statuses into errors first. Removed; this is what happens
    (405: exit 14 at once, naming the status; nothing written)."""
    hf.add_file(REPO, NAME, DATA)
    hf.set_faults(REPO, NAME, Faults(status_sequence=[(405, {})]))
    run = xtask.download(hf.hub_url, "--file", NAME, "--retries", "0")
    assert run.code == 14, run.stderr
    assert "405" in run.events()[-1]["msg"]
    assert [r.method for r in hf.requests] == ["HEAD"]
    assert not xtask.target(NAME).exists()
