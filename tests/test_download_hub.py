"""download-model against the project's HF-compatible server: the protocol, end to end.

Every test runs the real CLI in a subprocess against a real HTTP server on 127.0.0.1
(testing/servers/hf_server.py): a hub that redirects to a CDN on another port.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REPO, Xtask, payload, sha256
from servers.hf_server import Faults, HFTestServer

NAME = "model.gguf"


def leftovers(xtask: Xtask, name: str = NAME) -> list[str]:
    """Sidecars that must not survive a finished (or failed) download."""
    return [
        suffix
        for suffix in (".part", ".part.json", ".lock")
        if xtask.target(name + suffix).exists()
    ]


def cdn_gets(hf: HFTestServer) -> list[str]:
    return [
        r.headers.get("range", "") for r in hf.requests if r.server == "cdn" and r.method == "GET"
    ]


def test_downloads_through_the_redirect_and_verifies_the_linked_sha(
    hf: HFTestServer, xtask: Xtask
) -> None:
    data = payload(3_000_000)
    digest = hf.add_file(REPO, NAME, data)
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert run.phases() == ["start", "progress", "done"]
    start, done = run.events()[0], run.events()[-1]
    assert start["url"] == f"{hf.hub_url}/{REPO}/resolve/main/{NAME}"
    assert start["resume"] is False and start["start"] == 0 and start["total"] == len(data)
    assert done["bytes"] == len(data) and done["sha256"] == digest
    assert done["commit"] == hf.commit and done["cached"] is False
    assert xtask.target(NAME).read_bytes() == data
    assert xtask.target(NAME + ".etag").read_text().strip() == f'"{digest}"'
    assert xtask.target(NAME + ".lastmod").exists()
    assert leftovers(xtask) == []
    assert all(r.headers.get("accept-encoding") == "identity" for r in hf.requests)


def test_relative_redirect_and_nested_path_use_the_leaf_name(
    hf: HFTestServer, xtask: Xtask
) -> None:
    data = payload(10_000, seed=1)
    hf.add_file(REPO, "sub/dir/weights.gguf", data)
    hf.set_faults(REPO, "sub/dir/weights.gguf", Faults(relative_redirect=True))
    run = xtask.download(hf.hub_url, "--file", "sub/dir/weights.gguf")
    assert run.code == 0, run.stderr
    assert xtask.target("weights.gguf").read_bytes() == data


@pytest.mark.parametrize("bad", ["../evil.gguf", "/etc/passwd", "a\\b.gguf", "sub/../../x"])
def test_unsafe_file_names_are_refused_before_any_request(
    hf: HFTestServer, xtask: Xtask, bad: str
) -> None:
    run = xtask.download(hf.hub_url, "--file", bad)
    assert run.code == 2
    assert "unsafe --file" in run.stderr
    assert run.events()[-1]["phase"] == "error" and run.events()[-1]["code"] == 2
    assert hf.requests == []
    assert not xtask.out.exists()


def test_second_run_is_up_to_date_without_a_get(hf: HFTestServer, xtask: Xtask) -> None:
    hf.add_file(REPO, NAME, payload(100_000))
    assert xtask.download(hf.hub_url, "--file", NAME).code == 0
    hf.clear_log()
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    done = run.events()[-1]
    assert done["cached"] is True and done["source"] == "up-to-date"
    assert [r.method for r in hf.requests] == ["HEAD", "HEAD"]  # hub redirect, CDN


def test_force_downloads_again(hf: HFTestServer, xtask: Xtask) -> None:
    hf.add_file(REPO, NAME, payload(100_000))
    assert xtask.download(hf.hub_url, "--file", NAME).code == 0
    run = xtask.download(hf.hub_url, "--file", NAME, "--force")
    assert run.code == 0 and run.events()[-1]["cached"] is False


def test_sha256_mismatch_removes_the_file_and_metadata(hf: HFTestServer, xtask: Xtask) -> None:
    hf.add_file(REPO, NAME, payload(50_000))
    run = xtask.download(hf.hub_url, "--file", NAME, "--sha256", "0" * 64)
    assert run.code == 13
    assert "SHA-256 mismatch" in run.stderr and "0" * 64 in run.stderr
    assert run.events()[-1] == {
        "phase": "error",
        "command": "download-model",
        "code": 13,
        "msg": run.events()[-1]["msg"],
        "hint": run.events()[-1]["hint"],
    }
    for suffix in ("", ".etag", ".lastmod", ".part", ".part.json", ".lock"):
        assert not xtask.target(NAME + suffix).exists(), suffix


def test_up_to_date_file_still_gets_the_sha256_check(hf: HFTestServer, xtask: Xtask) -> None:
    digest = hf.add_file(REPO, NAME, payload(50_000))
    assert xtask.download(hf.hub_url, "--file", NAME).code == 0
    ok = xtask.download(hf.hub_url, "--file", NAME, "--sha256", digest.upper())
    assert ok.code == 0 and ok.events()[-1]["cached"] is True
    bad = xtask.download(hf.hub_url, "--file", NAME, "--sha256", "f" * 64)
    assert bad.code == 13
    # A mismatch never deletes the verified file (issue 10 #4).
    assert xtask.target(NAME).exists() and xtask.target(NAME + ".etag").exists()


def test_linked_sha_mismatch_is_caught_without_sha256_flag(hf: HFTestServer, xtask: Xtask) -> None:
    """A CDN that serves other bytes than the hub advertises is caught by X-Linked-Etag."""
    hf.add_file(REPO, NAME, payload(40_000))
    hf.set_faults(REPO, NAME, Faults(wrong_content_range=True, drop_at=[10_000]))
    run = xtask.download(hf.hub_url, "--file", NAME)
    # The resumed 206 starts one byte late: we must restart, never splice.
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == payload(40_000)


@pytest.mark.parametrize(
    ("repo", "rev", "file", "what"),
    [
        ("org/missing", "main", NAME, "repository not found"),
        (REPO, "v9", NAME, "revision not found"),
        (REPO, "main", "nope.gguf", "file not found"),
    ],
)
def test_404_says_what_is_missing(
    hf: HFTestServer, xtask: Xtask, repo: str, rev: str, file: str, what: str
) -> None:
    hf.add_file(REPO, NAME, b"x")
    run = xtask.run(
        "download-model",
        "--base-url",
        hf.hub_url,
        "--id",
        repo,
        "--rev",
        rev,
        "--file",
        file,
        "--out",
        str(xtask.out),
    )
    assert run.code == 14
    assert what in run.stderr
    assert "Traceback" not in run.stderr


def test_gated_repo_needs_the_token_and_the_token_never_leaks(
    hf: HFTestServer, xtask: Xtask
) -> None:
    token = "hf_secretTOKENvalue123"
    data = payload(20_000)
    hf.add_file(REPO, NAME, data)
    hf.set_token(token, gated_repos={REPO})

    denied = xtask.download(hf.hub_url, "--file", NAME)
    assert denied.code == 11
    assert "HF_TOKEN" in denied.stderr and "gated" in denied.stderr

    wrong = xtask.download(hf.hub_url, "--file", NAME, env=xtask.env(HF_TOKEN="hf_wrong"))
    assert wrong.code == 11 and "rejected" in wrong.stderr

    hf.clear_log()
    ok = xtask.download(hf.hub_url, "--file", NAME, "--verbose", env=xtask.env(HF_TOKEN=token))
    assert ok.code == 0, ok.stderr
    assert xtask.target(NAME).read_bytes() == data
    hub = [r for r in hf.requests if r.server == "hub"]
    cdn = [r for r in hf.requests if r.server == "cdn"]
    assert hub and all(r.headers.get("authorization") == f"Bearer {token}" for r in hub)
    assert cdn and all("authorization" not in r.headers for r in cdn)
    for text in (ok.stdout, ok.stderr, denied.stderr, wrong.stderr):
        assert token not in text
    # --verbose shows each request and the headers that decide things, minus secrets.
    assert f"debug: GET {hf.hub_url}/{REPO}/resolve/main/{NAME} -> 302" in ok.stderr
    assert "sig=" not in ok.stderr and "x-linked-etag=" in ok.stderr


def test_token_file_written_by_huggingface_hub_is_used(hf: HFTestServer, xtask: Xtask) -> None:
    token = "hf_fromTheTokenFile"
    hf.add_file(REPO, NAME, b"gated bytes")
    hf.set_token(token, gated_repos={REPO})
    token_file = xtask.home / ".cache" / "huggingface" / "token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(token + "\n")
    assert xtask.download(hf.hub_url, "--file", NAME).code == 0


def test_429_honours_retry_after_then_succeeds(hf: HFTestServer, xtask: Xtask) -> None:
    hf.add_file(REPO, NAME, payload(5_000))
    hf.set_faults(REPO, NAME, Faults(status_sequence=[(429, {"Retry-After": "1"})]))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    retry = next(e for e in run.events() if e["phase"] == "retry")
    assert retry["wait_secs"] == 1 and "429" in retry["msg"]


def test_429_until_retries_run_out_exits_12(hf: HFTestServer, xtask: Xtask) -> None:
    hf.add_file(REPO, NAME, payload(5_000))
    hf.set_faults(REPO, NAME, Faults(status_sequence=[(429, {"Retry-After": "0"})] * 5))
    run = xtask.download(hf.hub_url, "--file", NAME, "--retries", "2")
    assert run.code == 12
    assert [e["phase"] for e in run.events()] == ["retry", "retry", "error"]
    assert "rate limited" in run.stderr


def test_5xx_is_retried_and_exhaustion_exits_14(hf: HFTestServer, xtask: Xtask) -> None:
    hf.add_file(REPO, NAME, payload(5_000))
    hf.set_faults(REPO, NAME, Faults(status_sequence=[(503, {}), (502, {})]))
    assert xtask.download(hf.hub_url, "--file", NAME).code == 0
    hf.set_faults(REPO, NAME, Faults(status_sequence=[(500, {})] * 3))
    run = xtask.download(hf.hub_url, "--file", NAME, "--force", "--retries", "1")
    assert run.code == 14 and "giving up after 1 retries" in run.stderr


def test_dropped_connections_resume_at_the_exact_offset(hf: HFTestServer, xtask: Xtask) -> None:
    data = payload(4_000_000, seed=7)
    hf.add_file(REPO, NAME, data)
    hf.set_faults(REPO, NAME, Faults(drop_at=[1_000_000, 2_500_000]))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    assert cdn_gets(hf) == ["", "bytes=1000000-3999999", "bytes=2500000-3999999"]
    if_range = [r.headers.get("if-range") for r in hf.requests if r.headers.get("range")]
    assert all(v and v.startswith('"') for v in if_range)  # strong ETag guards the resume
    assert [e["offset"] for e in run.events() if e["phase"] == "retry"] == [1_000_000, 2_500_000]


def test_a_stalled_stream_is_retried_from_its_offset(hf: HFTestServer, xtask: Xtask) -> None:
    data = payload(3_000_000, seed=8)
    hf.add_file(REPO, NAME, data)
    hf.set_faults(REPO, NAME, Faults(stall_at=2_500_000, stall_seconds=20))
    run = xtask.download(hf.hub_url, "--file", NAME, "--stall-timeout", "1")
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    # Whole read buffers (1 MiB) that arrived before the stall are kept.
    resumed = cdn_gets(hf)[-1]
    assert resumed == "bytes=2097152-2999999", resumed
    assert "stalled" in next(e["msg"] for e in run.events() if e["phase"] == "retry")


@pytest.mark.parametrize(
    "fault",
    [
        Faults(drop_at=[100_000], ignore_range=True),
        Faults(drop_at=[100_000], missing_content_range=True),
        Faults(drop_at=[100_000], wrong_content_range=True),
        Faults(drop_at=[100_000], range_not_satisfiable_once=True),
    ],
    ids=["200-to-range", "no-content-range", "misaligned", "416"],
)
def test_unsafe_resume_answers_restart_from_zero(
    hf: HFTestServer, xtask: Xtask, fault: Faults
) -> None:
    data = payload(600_000, seed=9)
    hf.add_file(REPO, NAME, data)
    hf.set_faults(REPO, NAME, fault)
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    assert "restarting model.gguf from byte 0" in run.stderr
    assert cdn_gets(hf)[-1] == ""  # the last stream was a full, unranged GET
    starts = [e for e in run.events() if e["phase"] == "start"]
    assert starts[-1]["start"] == 0


def test_a_new_version_mid_download_is_never_spliced(hf: HFTestServer, xtask: Xtask) -> None:
    old, new = payload(800_000, seed=10), payload(800_000, seed=11)
    hf.add_file(REPO, NAME, old)
    hf.set_faults(REPO, NAME, Faults(drop_at=[300_000], change_after=new, change_after_requests=1))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == new
    assert run.events()[-1]["sha256"] == sha256(new)
    assert "new version" in run.stderr


def test_new_version_mid_download_with_pinned_sha_exits_13(hf: HFTestServer, xtask: Xtask) -> None:
    old, new = payload(800_000, seed=10), payload(800_000, seed=11)
    hf.add_file(REPO, NAME, old)
    hf.set_faults(REPO, NAME, Faults(drop_at=[300_000], change_after=new, change_after_requests=1))
    run = xtask.download(hf.hub_url, "--file", NAME, "--sha256", sha256(old))
    assert run.code == 13
    assert not xtask.target(NAME).exists()


def test_parallel_streams_write_one_verified_file(hf: HFTestServer, xtask: Xtask) -> None:
    data = payload(40 << 20, seed=12)
    digest = hf.add_file(REPO, NAME, data)
    hf.set_faults(REPO, NAME, Faults(drop_at=[25 << 20] * 4))  # whichever stream holds it
    run = xtask.download(hf.hub_url, "--file", NAME, "--connections", "4", "--sha256", digest)
    assert run.code == 0, run.stderr
    assert run.events()[0]["connections"] == 4
    ranges = cdn_gets(hf)
    assert len(ranges) >= 5 and all(r.startswith("bytes=") for r in ranges)
    # The broken stream resumed where it stopped, inside its 8 MiB piece.
    assert "bytes=26214400-33554431" in ranges
    assert xtask.target(NAME).read_bytes() == data


def test_several_files_and_manifest(hf: HFTestServer, xtask: Xtask, tmp_path: Path) -> None:
    a, b = payload(1000, seed=1), payload(2000, seed=2)
    hf.add_file(REPO, "a.gguf", a)
    hf.add_file(REPO, "tok/b.json", b)
    run = xtask.download(hf.hub_url, "--file", "a.gguf", "--file", "tok/b.json")
    assert run.code == 0, run.stderr
    assert [e["file"] for e in run.events() if e["phase"] == "done"] == ["a.gguf", "b.json"]
    manifest = tmp_path / "files.txt"
    manifest.write_text(f"a.gguf {sha256(a)}\ntok/b.json {'0' * 64}\n")
    bad = xtask.download(hf.hub_url, "--manifest", str(manifest), "--force")
    assert bad.code == 13 and "b.json" in bad.stderr
    assert xtask.target("a.gguf").read_bytes() == a


def _seed_hf_cache(home: Path, data: bytes, commit: str) -> Path:
    repo = home / ".cache" / "huggingface" / "hub" / f"models--{REPO.replace('/', '--')}"
    blob = repo / "blobs" / sha256(data)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / commit / NAME
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return blob


def test_hf_cache_blob_is_linked_instead_of_downloaded(hf: HFTestServer, xtask: Xtask) -> None:
    data = payload(70_000, seed=13)
    digest = hf.add_file(REPO, NAME, data)
    blob = _seed_hf_cache(xtask.home, data, hf.commit)
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert run.events()[-1]["source"] == "hf-cache"
    assert not [r for r in hf.requests if r.method == "GET"]
    assert xtask.target(NAME).stat().st_ino == blob.stat().st_ino
    assert run.events()[-1]["sha256"] == digest


def test_hf_cache_works_offline(xtask: Xtask) -> None:
    data = payload(70_000, seed=14)
    _seed_hf_cache(xtask.home, data, "c" * 40)
    offline = "http://127.0.0.1:9"  # discard port: connection refused
    run = xtask.download(offline, "--file", NAME, "--retries", "0")
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    corrupt = xtask.home / ".cache/huggingface/hub/models--org--model/blobs" / sha256(data)
    corrupt.write_bytes(b"bit rot")
    xtask.target(NAME).unlink()
    failed = xtask.download(offline, "--file", NAME, "--retries", "0")
    assert failed.code == 14 and "connection" in failed.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(hf: HFTestServer, xtask: Xtask) -> None:
    hf.add_file(REPO, NAME, payload(123_456))
    run = xtask.download(hf.hub_url, "--file", NAME, "--dry-run")
    assert run.code == 0, run.stderr
    (plan,) = run.events()
    assert plan["phase"] == "plan" and plan["total"] == 123_456 and plan["start"] == 0
    assert plan["url"].endswith(f"/{REPO}/resolve/main/{NAME}")
    assert plan["path"] == str(xtask.target(NAME)) and plan["free_bytes"] > 0
    assert plan["commit"] == hf.commit and plan["up_to_date"] is False
    assert not xtask.out.exists()
    assert [r.method for r in hf.requests] == ["HEAD", "HEAD"]
    human = xtask.run(
        "download-model", "--base-url", hf.hub_url, "--id", REPO, "--file", NAME, "--dry-run"
    )
    assert "resume at:" in human.stderr and "free space:" in human.stderr


def test_weak_etag_never_goes_into_if_range(hf: HFTestServer, xtask: Xtask) -> None:
    """The hub's sha256 still names the bytes, so the resume is safe without If-Range."""
    data = payload(500_000, seed=15)
    hf.add_file(REPO, NAME, data)
    hf.set_faults(REPO, NAME, Faults(weak_etag=True, drop_at=[200_000]))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    assert cdn_gets(hf)[-1] == "bytes=200000-499999"
    assert all("if-range" not in r.headers for r in hf.requests)


def test_failed_run_keeps_part_and_a_resume_can_use_more_connections(
    hf: HFTestServer, xtask: Xtask
) -> None:
    data = payload(48 << 20, seed=16)
    digest = hf.add_file(REPO, NAME, data)
    hf.set_faults(REPO, NAME, Faults(drop_at=[5 << 20, 5 << 20]))
    failed = xtask.download(hf.hub_url, "--file", NAME, "--connections", "1", "--retries", "0")
    assert failed.code == 14, failed.stderr
    assert xtask.target(NAME + ".part").exists() and xtask.target(NAME + ".part.json").exists()
    assert not xtask.target(NAME + ".lock").exists()

    hf.clear_log()
    run = xtask.download(hf.hub_url, "--file", NAME, "--connections", "4", "--sha256", digest)
    assert run.code == 0, run.stderr
    start = run.events()[0]
    assert start["resume"] is True and start["start"] == 5 << 20
    ranges = cdn_gets(hf)
    assert len(ranges) >= 4 and any(r.startswith(f"bytes={5 << 20}-") for r in ranges)
    assert xtask.target(NAME).read_bytes() == data


def test_existing_file_is_used_with_a_warning_when_the_hub_is_unreachable(
    hf: HFTestServer, xtask: Xtask
) -> None:
    data = payload(10_000, seed=17)
    hf.add_file(REPO, NAME, data)
    assert xtask.download(hf.hub_url, "--file", NAME).code == 0
    run = xtask.download("http://127.0.0.1:9", "--file", NAME, "--retries", "0")
    assert run.code == 0, run.stderr
    assert "could not check for a newer version" in run.stderr
    assert run.events()[-1]["cached"] is True


def test_an_expired_cdn_url_is_resolved_again_and_resumed(hf: HFTestServer, xtask: Xtask) -> None:
    """A 403 from the CDN on a resume: back through the hub for a fresh signed URL."""
    data = payload(2_000_000, seed=18)
    hf.add_file(REPO, NAME, data)
    hf.set_token("hf_tokenForTheHubOnly", gated_repos={REPO})
    env = xtask.env(HF_TOKEN="hf_tokenForTheHubOnly")
    hf.set_faults(REPO, NAME, Faults(drop_at=[700_000]))
    first = xtask.download(hf.hub_url, "--file", NAME, "--retries", "0", env=env)
    assert first.code == 14 and xtask.target(NAME + ".part").exists()
    hf.set_faults(REPO, NAME, Faults(cdn_status_sequence=[(403, {})]))
    hf.clear_log()
    run = xtask.download(hf.hub_url, "--file", NAME, env=env)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    (retry,) = [e for e in run.events() if e["phase"] == "retry"]
    assert "403 from the CDN" in retry["msg"] and retry["offset"] == 700_000
    assert cdn_gets(hf) == ["bytes=700000-1999999", "bytes=700000-1999999"]
    hub_gets = [r for r in hf.requests if r.server == "hub" and r.method == "GET"]
    assert len(hub_gets) == 2  # each attempt resolved through the hub again
    assert all("authorization" not in r.headers for r in hf.requests if r.server == "cdn")


def test_a_failed_first_download_leaves_no_empty_directories(
    hf: HFTestServer, xtask: Xtask
) -> None:
    run = xtask.download("http://127.0.0.1:9", "--file", NAME, "--retries", "0")
    assert run.code == 14
    assert not xtask.out.exists()
