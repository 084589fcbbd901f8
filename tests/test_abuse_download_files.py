"""Issue 10, download-model's file-system side, attacked for real: planted symbolic and hard
links, FIFOs and device nodes at the sidecars, `--out` a file, a device or a read-only mount,
names longer than NAME_MAX, a final name that is a directory, a failed re-check of a good
file, a `.part` cut short behind its state's back, a SIGKILL in the first seconds, and
manifests that are devices, FIFOs, not UTF-8, nested past the recursion limit or the wrong
JSON shape.

Every run is the real CLI in a subprocess against the project's HF-compatible server on
127.0.0.1 (testing/servers/hf_server.py); FIFOs, device nodes (`mknod`, as root) and
read-only mounts (`mount -t tmpfs -o ro`, as root) are real, and skipped with the reason
where this machine cannot make them. The promise checked each time: a clear message, the
documented exit code, no traceback, and nothing lost or written through.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, Run, Xtask, payload, sha256, wait_for
from mounts import Mounts
from servers.hf_server import Faults, HFTestServer

from bitnet_xtask.errors import UsageError
from bitnet_xtask.filelock import FileLock
from bitnet_xtask.fs import atomic_write_text, open_regular

pytestmark = pytest.mark.timeout(90)

NAME = "model.gguf"
DATA = payload(300_000, seed=41)
MIB = 1 << 20
SIDECARS = ("", ".part", ".part.json", ".lock", ".etag", ".lastmod")


def clean(run: Run, code: int) -> None:
    """The documented exit code, a message, no traceback, and the JSON error event."""
    assert run.code == code, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "error:" in run.stderr
    assert run.events() and run.events()[-1]["phase"] == "error"
    assert run.events()[-1]["code"] == code


def cdn_gets(hf: HFTestServer) -> int:
    return sum(1 for r in hf.requests if r.server == "cdn" and r.method == "GET")


@pytest.fixture
def served(hf: HFTestServer) -> HFTestServer:
    hf.add_file(REPO, NAME, DATA)
    return hf


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(b"precious, not ours\n")
    return path


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")


# -- #3: symbolic links, hard links, FIFOs and devices at the sidecars ---------------------------


@pytest.mark.parametrize("suffix", SIDECARS)
def test_a_symlink_planted_at_any_name_of_the_download_is_refused_touching_nothing(
    served: HFTestServer, xtask: Xtask, victim: Path, suffix: str
) -> None:
    link = xtask.target(NAME + suffix)
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    run = xtask.download(served.hub_url, "--file", NAME)
    clean(run, 2)
    assert f"refusing to use {link}: it is a symbolic link" in run.stderr
    assert victim.read_bytes() == b"precious, not ours\n"
    assert link.is_symlink()
    assert cdn_gets(served) == 0
    dry = xtask.download(served.hub_url, "--file", NAME, "--dry-run")
    clean(dry, 2)


def test_a_hard_link_at_part_is_refused_not_truncated(
    served: HFTestServer, xtask: Xtask, victim: Path
) -> None:
    part = xtask.target(NAME + ".part")
    part.parent.mkdir(parents=True)
    os.link(victim, part)
    run = xtask.download(served.hub_url, "--file", NAME)
    clean(run, 2)
    assert "2 hard links" in run.stderr
    assert victim.read_bytes() == b"precious, not ours\n"
    assert not xtask.target(NAME).exists()


def test_a_fifo_at_etag_is_refused_instead_of_blocking(served: HFTestServer, xtask: Xtask) -> None:
    assert xtask.download(served.hub_url, "--file", NAME).code == 0
    etag = xtask.target(NAME + ".etag")
    etag.unlink()
    os.mkfifo(etag)
    run = xtask.download(served.hub_url, "--file", NAME, timeout=30)
    clean(run, 2)
    assert "it is a FIFO" in run.stderr
    assert xtask.target(NAME).read_bytes() == DATA


def test_a_device_node_at_part_is_refused_not_renamed_to_the_final_name(
    served: HFTestServer, xtask: Xtask
) -> None:
    need_root("mknod")
    part = xtask.target(NAME + ".part")
    part.parent.mkdir(parents=True)
    os.mknod(part, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a second /dev/null
    run = xtask.download(served.hub_url, "--file", NAME)
    clean(run, 2)
    assert "it is a character device" in run.stderr
    assert stat.S_ISCHR(part.lstat().st_mode) and not xtask.target(NAME).exists()


def test_a_link_swapped_in_after_the_check_is_refused_at_open(tmp_path: Path, victim: Path) -> None:
    """The up-front check can race with an attacker; the open itself never follows a link
    (`O_NOFOLLOW`) and never writes a file with other hard links."""
    link = tmp_path / "x.lock"
    link.symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"):
        FileLock(link, timeout=0).acquire()
    with pytest.raises(UsageError, match="symbolic link"):
        open_regular(link, write=True, create=True, truncate=True)
    hard = tmp_path / "x.part"
    os.link(victim, hard)
    with pytest.raises(UsageError, match="hard links"):
        open_regular(hard, write=True, truncate=True)
    assert victim.read_bytes() == b"precious, not ours\n"


def test_an_atomic_write_never_writes_through_a_link_at_its_temp_name(
    tmp_path: Path, victim: Path
) -> None:
    """Sibling: every atomic write (sidecars, receipts, fixtures' metadata) went through
    `open("w")` on a predictable temp name, `.<name>.<pid>.tmp`, following a link there."""
    target = tmp_path / "model.gguf.etag"
    (tmp_path / f".{target.name}.{os.getpid()}.tmp").symlink_to(victim)
    atomic_write_text(target, '"abc"\n')
    assert target.read_text() == '"abc"\n' and not target.is_symlink()
    assert victim.read_bytes() == b"precious, not ours\n"


# -- #4: a failed re-check never deletes the verified file ---------------------------------------


def test_new_advertised_sha_that_the_served_bytes_miss_keeps_the_good_file(
    served: HFTestServer, xtask: Xtask
) -> None:
    assert xtask.download(served.hub_url, "--file", NAME).code == 0
    etag = xtask.target(NAME + ".etag").read_text()
    # A new version is published, but the CDN answers with some other object's bytes.
    served.add_file(REPO, NAME, payload(300_000, seed=42))
    other = served.add_file(REPO, "other.bin", payload(300_000, seed=43))
    served.set_faults(REPO, NAME, Faults(redirect_to=f"{served.cdn_url}/cdn/{other}"))
    run = xtask.download(served.hub_url, "--file", NAME)
    clean(run, 13)
    assert "was kept" in run.stderr
    assert xtask.target(NAME).read_bytes() == DATA
    assert xtask.target(NAME + ".etag").read_text() == etag
    assert not xtask.target(NAME + ".part").exists()
    assert not xtask.target(NAME + ".part.json").exists()


def test_a_one_digit_sha256_typo_keeps_the_file_and_downloads_nothing(
    served: HFTestServer, xtask: Xtask
) -> None:
    assert xtask.download(served.hub_url, "--file", NAME).code == 0
    digest = sha256(DATA)
    typo = ("0" if digest[0] != "0" else "1") + digest[1:]
    served.clear_log()
    run = xtask.download(served.hub_url, "--file", NAME, "--sha256", typo)
    clean(run, 13)
    assert "nothing was removed" in run.stderr and digest in run.stderr
    assert cdn_gets(served) == 0
    assert xtask.target(NAME).read_bytes() == DATA
    assert xtask.target(NAME + ".etag").exists()
    forced = xtask.download(served.hub_url, "--file", NAME, "--sha256", typo, "--force")
    clean(forced, 13)
    assert xtask.target(NAME).read_bytes() == DATA
    assert xtask.target(NAME + ".etag").exists()


def test_a_damaged_file_is_replaced_only_by_a_verified_download(
    served: HFTestServer, xtask: Xtask
) -> None:
    assert xtask.download(served.hub_url, "--file", NAME).code == 0
    final = xtask.target(NAME)
    damaged = bytearray(DATA)
    damaged[1000] ^= 0xFF
    final.write_bytes(bytes(damaged))
    run = xtask.download(served.hub_url, "--file", NAME, "--sha256", sha256(DATA))
    assert run.code == 0, run.stderr
    assert "downloading it again" in run.stderr
    assert final.read_bytes() == DATA and run.events()[-1]["source"] == "network"


# -- #10: --out and the names, checked before anything is fetched or created ---------------------


def out_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    afile = tmp_path / "a-file"
    afile.write_text("keep me\n")
    return {
        "a regular file": (str(afile), "is a regular file"),
        "under a regular file": (str(afile / "sub"), "is a regular file"),
        "/dev/null": ("/dev/null", "is a character device"),
    }


@pytest.mark.parametrize("case", ["a regular file", "under a regular file", "/dev/null"])
@pytest.mark.parametrize("dry", [False, True])
def test_an_out_that_is_not_a_directory_is_a_usage_error_up_front(
    served: HFTestServer, xtask: Xtask, tmp_path: Path, case: str, dry: bool
) -> None:
    out, says = out_cases(tmp_path)[case]
    args = ["download-model", "--base-url", served.hub_url, "--id", REPO, "--out", out]
    run = xtask.run(*args, "--file", NAME, "--json", *(["--dry-run"] if dry else []))
    clean(run, 2)
    assert says in run.stderr
    assert served.requests == []
    assert (tmp_path / "a-file").read_text() == "keep me\n"


@pytest.mark.parametrize("dry", [False, True])
def test_a_read_only_out_is_a_usage_error_up_front(
    served: HFTestServer, xtask: Xtask, mounts: Mounts, dry: bool
) -> None:
    mounts.tmpfs(xtask.out, read_only=True)
    run = xtask.download(served.hub_url, "--file", NAME, *(["--dry-run"] if dry else []))
    clean(run, 2)
    assert "read-only file system" in run.stderr
    assert served.requests == []


def test_an_out_under_missing_parents_is_created_and_a_dry_run_creates_nothing(
    served: HFTestServer, xtask: Xtask, tmp_path: Path
) -> None:
    out = tmp_path / "missing" / "deep" / "models"
    args = ["download-model", "--base-url", served.hub_url, "--id", REPO, "--out", str(out)]
    dry = xtask.run(*args, "--file", NAME, "--json", "--dry-run")
    assert dry.code == 0, dry.stderr
    assert not (tmp_path / "missing").exists()
    run = xtask.run(*args, "--file", NAME, "--json")
    assert run.code == 0, run.stderr
    assert (out / REPO.replace("/", "-") / NAME).read_bytes() == DATA


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--id", "org/" + "a" * 300, "at most 255 fit"),
        ("--file", "b" * 240 + ".gguf", "at most 232 fit"),
        ("--file", "sub/" + "é" * 120, "at most 232 fit"),  # 240 bytes in 120 characters
    ],
)
@pytest.mark.parametrize("dry", [False, True])
def test_a_name_longer_than_name_max_is_a_usage_error_before_any_request(
    hf: HFTestServer, xtask: Xtask, option: str, value: str, says: str, dry: bool
) -> None:
    args = ["download-model", "--base-url", hf.hub_url, "--id", REPO, "--out", str(xtask.out)]
    args.append("--json")
    run = xtask.run(*args, option, value, *(["--dry-run"] if dry else []))
    clean(run, 2)
    assert says in run.stderr
    assert hf.requests == []
    assert not xtask.out.exists()


@pytest.mark.parametrize("dry", [False, True])
def test_a_directory_at_the_final_name_is_refused_before_the_download(
    served: HFTestServer, xtask: Xtask, dry: bool
) -> None:
    final = xtask.target(NAME)
    final.mkdir(parents=True)
    run = xtask.download(served.hub_url, "--file", NAME, *(["--dry-run"] if dry else []))
    clean(run, 2)
    assert "it is a directory" in run.stderr
    assert cdn_gets(served) == 0
    assert final.is_dir() and not xtask.target(NAME + ".part").exists()


# -- #18: a .part that no longer holds what its state claims -------------------------------------


def _interrupted_part(hf: HFTestServer, xtask: Xtask) -> tuple[Path, int]:
    """A real partial download: the connection drops at 150,000 and no retry is allowed."""
    hf.set_faults(REPO, NAME, Faults(drop_at=[150_000]))
    first = xtask.download(hf.hub_url, "--file", NAME, "--retries", "0")
    assert first.code == 14, first.stderr
    state = json.loads(xtask.target(NAME + ".part.json").read_text())
    claimed = sum(c["done"] - c["start"] for c in state["chunks"])
    assert claimed == 150_000
    return xtask.target(NAME + ".part"), claimed


@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_a_part_that_disagrees_with_its_state_is_downloaded_afresh_not_spliced(
    served: HFTestServer, xtask: Xtask, change: str
) -> None:
    part, claimed = _interrupted_part(served, xtask)
    with part.open("r+b") as handle:
        handle.truncate(claimed - 50_000 if change == "shorter" else len(DATA) + 4096)
    run = xtask.download(served.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert f"discarding {NAME}.part" in run.stderr
    assert run.events()[0]["start"] == 0
    assert xtask.target(NAME).read_bytes() == DATA


def test_a_hostile_lock_or_state_sidecar_is_ignored_not_a_traceback(
    served: HFTestServer, xtask: Xtask
) -> None:
    """Sibling: the lock's previous owner and the resume state were parsed with json,
    whose RecursionError (not a ValueError) escaped; a state with a matching checksum
    (it exposes torn writes, it is no signature) but a non-integer offset crashed later."""
    directory = xtask.target(NAME).parent
    directory.mkdir(parents=True)
    xtask.target(NAME + ".lock").write_text("[" * 4096)
    xtask.target(NAME + ".part.json").write_text("[" * 100_000)
    xtask.target(NAME + ".part").write_bytes(DATA[:1000])
    run = xtask.download(served.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == DATA

    xtask.target(NAME).unlink()
    xtask.target(NAME + ".part").write_bytes(DATA[:1000])
    body = {
        "url": f"{served.hub_url}/{REPO}/resolve/main/{NAME}",
        "size": len(DATA),
        "etag": f'"{sha256(DATA)}"',
        "linked_etag": f'"{sha256(DATA)}"',
        "commit": None,
        "last_modified": None,
        "chunks": [{"start": 0, "end": len(DATA), "done": "1000"}],
        "version": 1,
    }
    check = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    xtask.target(NAME + ".part.json").write_text(json.dumps({**body, "check": check}))
    run = xtask.download(served.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert run.events()[0]["start"] == 0
    assert xtask.target(NAME).read_bytes() == DATA


# -- #23: what a SIGKILL in the first seconds costs ----------------------------------------------


def test_a_sigkill_before_the_first_periodic_checkpoint_loses_little(
    served: HFTestServer, xtask: Xtask
) -> None:
    """At 1.5 MiB/s, a kill after 4 MiB comes before the 5-second checkpoint: with one
    checkpoint per 64 MiB or 5 s all 4 MiB were lost; the ramp (after 1, 2, 4 MiB, ...)
    loses at most what the run had saved (here: 1-2 MiB), as the README says."""
    big = payload(24 * MIB, seed=44)
    served.add_file(REPO, "big.bin", big)
    served.set_faults(REPO, "big.bin", Faults(rate_limit=3 * MIB // 2))
    part = xtask.target("big.bin.part")
    proc = xtask.start(*xtask.download_args(served.hub_url, "--file", "big.bin"))
    try:
        wait_for(lambda: part.exists() and part.stat().st_size >= 4 * MIB, 20, "4 MiB")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    on_disk = part.stat().st_size
    state = json.loads(xtask.target("big.bin.part.json").read_text())
    saved = sum(c["done"] - c["start"] for c in state["chunks"])
    lost = on_disk - saved
    assert on_disk < 7 * MIB, "killed before the 5-second checkpoint"
    assert saved > 0 and lost <= max(MIB, saved) + MIB, (on_disk, saved)
    assert part.read_bytes()[:saved] == big[:saved]
    served.set_faults(REPO, "big.bin", Faults())
    run = xtask.download(served.hub_url, "--file", "big.bin")
    assert run.code == 0, run.stderr
    assert run.events()[0]["start"] == saved
    assert xtask.target("big.bin").read_bytes() == big


# -- review: a folder download-model created is tagged even when the download fails ------------


def clean_cache_would_remove(xtask: Xtask, folder: Path) -> bool:
    run = xtask.run(
        "clean-cache", "--models", str(folder), "--dry-run", "--json", cwd=xtask.workdir
    )
    assert run.code in (0, 2) and "Traceback" not in run.stderr, run.stderr
    entry = next(e for e in run.events() if e.get("path") == str(folder))
    return run.code == 0 and bool(entry["removable"])


@pytest.mark.parametrize("how", ["interrupted", "failed"])
def test_a_new_out_is_tagged_even_when_its_first_download_does_not_finish(
    served: HFTestServer, xtask: Xtask, how: str
) -> None:
    """The `.part` (and its state) stay, so the folder stays: it is xtask's and must carry
    the `CACHEDIR.TAG`, or clean-cache refuses it forever. Interrupted is a real SIGINT
    (exit 130); failed is a connection the server cuts mid-body on every try (exit 14)."""
    assert not xtask.out.exists()
    part = xtask.target(NAME + ".part")
    if how == "interrupted":
        # Fast slices of a big file: the SIGINT is seen within one read, not one of 64 KiB
        # trickling in at a few KiB/s.
        served.add_file(REPO, NAME, payload(8 * MIB, seed=45))
        served.set_faults(REPO, NAME, Faults(rate_limit=256 << 10))  # ~30 s
        proc = xtask.start(*xtask.download_args(served.hub_url, "--file", NAME))
        try:
            wait_for(lambda: part.exists() and part.stat().st_size > 0, 60, "bytes in .part")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
    else:
        served.set_faults(REPO, NAME, Faults(drop_at=[100_000] * 8))
        run = xtask.download(served.hub_url, "--file", NAME, "--retries", "0", "--connections", "1")
        clean(run, 14)
    assert part.exists()
    assert (xtask.out / "CACHEDIR.TAG").is_file()  # --out was made from nothing
    assert clean_cache_would_remove(xtask, xtask.out)


# -- #7, #12, #21: manifests ---------------------------------------------------------------------


def manifest_run(xtask: Xtask, hf: HFTestServer, path: Path | str, timeout: float = 30) -> Run:
    return xtask.download(hf.hub_url, "--manifest", str(path), timeout=timeout)


def test_a_device_or_fifo_manifest_is_refused_before_reading(
    hf: HFTestServer, xtask: Xtask, tmp_path: Path
) -> None:
    zero = manifest_run(xtask, hf, "/dev/zero")
    clean(zero, 2)
    assert "not a regular file (a character device)" in zero.stderr
    fifo = tmp_path / "files.fifo"
    os.mkfifo(fifo)
    run = manifest_run(xtask, hf, fifo)
    clean(run, 2)
    assert "a FIFO" in run.stderr
    assert hf.requests == []


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"model.gguf\n\xff\xfe junk\n", "is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"file":"model.gguf"}', "a JSON object, not a list of files"),
        (b'[{"file": null}]', '"file" must be a non-empty string, got None'),
        (b'[{"file": ""}]', '"file" must be a non-empty string'),
        (b'[{"file": "model.gguf", "sha": "' + b"0" * 64 + b'"}]', "unknown keys ['sha']"),
        (b'[{"file": "model.gguf", "sha256": 5}]', '"sha256" must be a string'),
        (b'["model.gguf"]', "entry 0 is a JSON string, not an object"),
        (b'[{"file": "model.gguf", "sha256": "abc"}]', "entry 0: --sha256 must be 64 hex"),
        (b"[]", "lists no files"),
    ],
    ids=[
        "not-utf8",
        "nested",
        "object",
        "file-null",
        "file-empty",
        "unknown-key",
        "sha-number",
        "entry-string",
        "bad-sha",
        "empty-list",
    ],
)
def test_a_malformed_manifest_is_a_usage_error_before_any_request(
    hf: HFTestServer, xtask: Xtask, tmp_path: Path, content: bytes, says: str
) -> None:
    manifest = tmp_path / "files.json"
    manifest.write_bytes(content)
    run = manifest_run(xtask, hf, manifest)
    clean(run, 2)
    assert says in run.stderr
    assert hf.requests == []


def test_an_oversized_manifest_is_refused_without_reading_it(
    hf: HFTestServer, xtask: Xtask, tmp_path: Path
) -> None:
    manifest = tmp_path / "huge.txt"
    with manifest.open("wb") as handle:
        handle.truncate(5 << 30)  # sparse: 5 GiB that cost no disk
    run = manifest_run(xtask, hf, manifest)
    clean(run, 2)
    assert "more than the 16,777,216 accepted" in run.stderr


def test_a_good_json_manifest_still_downloads_with_its_hashes(
    served: HFTestServer, xtask: Xtask, tmp_path: Path
) -> None:
    manifest = tmp_path / "files.json"
    manifest.write_text(json.dumps([{"file": NAME, "sha256": sha256(DATA)}]))
    run = manifest_run(xtask, served, manifest)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == DATA


# -- siblings: huggingface_hub's files we read -------------------------------------------------


def as_user_without_dac(argv: list[str], env: dict[str, str]) -> Run:
    """Run `argv` so that permission bits bind: as root, with CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH dropped (capsh), else as this user."""
    if os.geteuid() == 0:
        if shutil.which("capsh") is None:
            pytest.skip("capsh is not installed: root cannot be made to respect mode bits")
        command = " ".join(shlex.quote(a) for a in argv)
        argv = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", command]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("kind", ["unreadable", "directory"])
def test_a_token_file_that_cannot_be_read_is_no_token_not_a_refusal(
    served: HFTestServer, xtask: Xtask, tmp_path: Path, kind: str, dry: bool
) -> None:
    """Another user's token file (mode 000) or a directory at its path must not stop a
    public download (or its --dry-run): no token, a warning, exit 0."""
    token = tmp_path / "token"
    if kind == "directory":
        token.mkdir()
    else:
        token.write_text("hf_secret\n")
        token.chmod(0)
    env = xtask.env(HF_TOKEN_PATH=str(token))
    argv = xtask.argv(
        xtask.download_args(served.hub_url, "--file", NAME, *(["--dry-run"] if dry else []))
    )
    run = as_user_without_dac(argv, env)
    assert run.code == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert f"token file {token} ignored" in run.stderr
    assert all("authorization" not in {k.lower() for k in r.headers} for r in served.requests)
    if not dry:
        assert xtask.target(NAME).read_bytes() == DATA


def test_a_token_file_that_is_a_fifo_or_device_is_refused_not_read(
    served: HFTestServer, xtask: Xtask, tmp_path: Path
) -> None:
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    for token_path in (str(fifo), "/dev/zero"):
        env = xtask.env(HF_TOKEN_PATH=token_path)
        run = xtask.run(*xtask.download_args(served.hub_url, "--file", NAME), env=env, timeout=30)
        clean(run, 2)
        assert f"token file {token_path} is not a regular file" in run.stderr
    assert served.requests == []
