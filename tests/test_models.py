"""`xtask models`: the catalog, fetch (concurrent, resumable, locked), verify, archives,
and full-crossval --model, all against the project's real Hugging Face test server."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import Run, Xtask, payload, sha256, wait_for
from servers.hf_server import COMMIT, Faults, HFTestServer

from bitnet_xtask.models.catalog import load_catalog, package_catalog_text, parse_catalog

A, B = "org/alpha", "org/beta"


def toml_entry(name: str, repo: str, files: list[dict[str, Any]], revision: str = "main") -> str:
    """One catalog entry in TOML (json.dumps of a str is a valid TOML basic string)."""

    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(i) for i in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(i)}" for k, i in v.items()) + " }"
        return json.dumps(v)

    return (
        f'[models."{name}"]\nrepo = "{repo}"\nrevision = "{revision}"\nfiles = {value(files)}\n\n'
    )


class Project:
    """A working directory with a models.toml, and the CLI run inside it."""

    def __init__(self, xtask: Xtask, hf: HFTestServer) -> None:
        self.xtask, self.hf = xtask, hf
        self.dir = xtask.workdir
        self.models = self.dir / "models"

    def catalog(self, text: str) -> None:
        (self.dir / "models.toml").write_text(text)

    def run(self, *args: str, timeout: float = 120) -> Run:
        env = self.xtask.env(HF_ENDPOINT=self.hf.hub_url)
        return self.xtask.run("models", *args, env=env, cwd=self.dir, timeout=timeout)

    def fetch(self, *args: str) -> Run:
        return self.run("fetch", "--json", "--no-progress", *args)

    def lock(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "models.lock.json").read_text())
        return data

    def path(self, repo: str, name: str) -> Path:
        return self.models / repo.replace("/", "-") / name


@pytest.fixture
def project(xtask: Xtask, hf: HFTestServer) -> Project:
    return Project(xtask, hf)


def cdn_gets(hf: HFTestServer) -> list[str]:
    """The requests for a file's bytes (the hub redirects every LFS GET to its CDN)."""
    return [r.path for r in hf.requests if r.method == "GET" and r.path.startswith("/cdn/")]


# --- the catalog --------------------------------------------------------------------------


def test_the_shipped_catalog_pins_every_fact() -> None:
    """Only entries whose commit, sizes and sha256s are known ship (the issue's rule)."""
    shipped = parse_catalog(package_catalog_text(), "package")
    assert "bitnet-b1.58-2b-4t-i2s" in shipped
    assert all(entry.pinned for entry in shipped.values())
    entry = shipped["bitnet-b1.58-2b-4t-i2s"]
    assert (entry.repo, entry.revision) == (
        "microsoft/bitnet-b1.58-2B-4T-gguf",
        "a1f2f1c765812aa8af3f6eda4a313707064bba15",
    )
    (file,) = entry.files
    assert (file.path, file.size, file.sha256) == (
        "ggml-model-i2_s.gguf",
        1_187_801_280,
        "4221b252fdd5fd25e15847adfeb5ee88886506ba50b8a34548374492884c2162",
    )


def test_a_project_catalog_extends_and_overrides(tmp_path: Path) -> None:
    project = tmp_path / "models.toml"
    project.write_text(
        toml_entry("mine", A, [{"path": "m.gguf"}])
        + toml_entry("stories260k", B, [{"path": "other.gguf"}])
    )
    catalog = load_catalog(project)
    assert catalog.get("mine").source == str(project)
    assert catalog.get("stories260k").repo == B  # replaced whole
    assert catalog.get("bitnet-b1.58-2b-4t-i2s").source == "package"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.x\n", "not valid TOML"),
        ('[models.x]\nrepo = "o/r"\nfiles = [{ path = "a" }]\ncolour = 1\n', "unknown keys"),
        ('[models.x]\nrepo = "o/r"\nfiles = [{ path = "a", sha256 = "ab" }]\n', "64 hex"),
        ('[models.x]\nrepo = "o/r"\nfiles = [{ path = "../a" }]\n', "model 'x' file 0"),
        ('[models.x]\nrepo = "o/r"\nfiles = []\n', "non-empty list"),
        ('[models.X]\nrepo = "o/r"\nfiles = [{ path = "a" }]\n', "lower-case"),
        ('[models.x]\nrepo = "o/r"\nfiles = [{ path = "a", contents = [] , size = -1}]\n',
         "whole number"),
        (toml_entry("x", A, [{"path": "m.gguf", "sha256": "a" * 64}])
         + toml_entry("y", A, [{"path": "sub/m.gguf", "sha256": "b" * 64}]),
         "both put 'm.gguf' in the folder of org/alpha"),
    ],
)  # fmt: skip
def test_a_bad_catalog_is_a_usage_error(project: Project, text: str, message: str) -> None:
    project.catalog(text)
    run = project.run("list")
    assert run.code == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_list_shows_the_catalog_and_what_is_here(project: Project) -> None:
    data = payload(1000)
    project.catalog(toml_entry("mine", A, [{"path": "m.gguf", "size": 1000,
                                            "sha256": sha256(data)}]))  # fmt: skip
    run = project.run("list")
    assert run.code == 0, run.stderr
    assert "bitnet-b1.58-2b-4t-i2s" in run.stdout and "absent (0/1)" in run.stdout
    project.path(A, "m.gguf").parent.mkdir(parents=True)
    project.path(A, "m.gguf").write_bytes(data)
    listed = json.loads(project.run("list", "--json").stdout)
    mine = next(m for m in listed["models"] if m["name"] == "mine")
    assert mine["presence"] == "present" and mine["size"] == 1000
    assert mine["files"][0]["local_path"].endswith("models/org-alpha/m.gguf")


# --- fetch, the lock, --locked ------------------------------------------------------------


def serve_two_models(project: Project) -> dict[str, bytes]:
    """Three files of two repositories; alpha pinned by the catalog, beta floating."""
    files = {"a1.gguf": payload(300_000, 1), "a2.bin": payload(200_000, 2),
             "b1.gguf": payload(250_000, 3)}  # fmt: skip
    for name, data in files.items():
        project.hf.add_file(A if name.startswith("a") else B, name, data)
    pinned = [{"path": n, "size": len(files[n]), "sha256": sha256(files[n])}
              for n in ("a1.gguf", "a2.bin")]  # fmt: skip
    project.catalog(toml_entry("alpha", A, pinned, revision=COMMIT)
                    + toml_entry("beta", B, [{"path": "b1.gguf"}]))  # fmt: skip
    return files


def test_fetch_several_files_with_a_drop_and_a_429_resumes_verifies_and_locks(
    project: Project,
) -> None:
    files = serve_two_models(project)
    project.hf.set_faults(A, "a1.gguf", Faults(drop_at=[100_000]))
    project.hf.set_faults(B, "b1.gguf", Faults(status_sequence=[(429, {"Retry-After": "1"})]))
    run = project.fetch("alpha", "beta")
    assert run.code == 0, run.stderr
    for name, data in files.items():
        assert project.path(A if name[0] == "a" else B, name).read_bytes() == data
    phases = [(e["phase"], e.get("command")) for e in run.events()]
    assert ("retry", "download-model") in phases  # the drop and the 429, retried
    ranged = [r for r in project.hf.requests if r.headers.get("range", "").startswith("bytes=1")]
    assert ranged, "the dropped stream resumed from its offset"
    done = run.events()[-1]
    assert (done["phase"], done["command"], done["downloaded"]) == ("done", "models fetch", 3)
    lock = project.lock()["models"]
    assert lock["beta"]["commit"] == COMMIT and lock["beta"]["revision"] == "main"
    assert lock["beta"]["files"] == [
        {"path": "b1.gguf", "size": len(files["b1.gguf"]), "sha256": sha256(files["b1.gguf"])}
    ]
    # Again: the pinned files are here with their bytes, so nobody is asked for them;
    # the floating one is revalidated (a HEAD, no body).
    project.hf.clear_log()
    again = project.fetch("alpha", "beta")
    assert again.code == 0, again.stderr
    assert not any(A in r.path for r in project.hf.requests)
    assert cdn_gets(project.hf) == []
    sources = [f["source"] for m in again.events()[-1]["models"] for f in m["files"]]
    assert sources == ["present", "present", "up-to-date"]


def test_a_second_machine_fetches_the_locked_bytes_and_refuses_a_changed_file(
    project: Project, xtask: Xtask, tmp_path: Path
) -> None:
    files = serve_two_models(project)
    assert project.fetch("beta").code == 0
    lock = project.lock()
    # Machine two: the same models.toml and lock, an empty models folder.
    project.models.rename(tmp_path / "machine-one")
    run = project.fetch("--locked", "beta")
    assert run.code == 0, run.stderr
    assert project.path(B, "b1.gguf").read_bytes() == files["b1.gguf"]
    assert project.lock() == lock  # --locked only reads it
    # The hub's file changes: --locked refuses before any byte of it is fetched.
    project.path(B, "b1.gguf").unlink()
    project.hf.add_file(B, "b1.gguf", payload(250_000, 99))
    project.hf.clear_log()
    run = project.fetch("--locked", "beta")
    assert run.code == 13, run.stderr
    assert "b1.gguf" in run.stderr and sha256(files["b1.gguf"]) in run.stderr
    assert cdn_gets(project.hf) == []
    assert not project.path(B, "b1.gguf").exists()
    # Without --locked the floating entry follows the hub, and the lock records it.
    assert project.fetch("beta").code == 0
    assert project.lock()["models"]["beta"]["files"][0]["sha256"] == sha256(payload(250_000, 99))


def test_locked_refuses_what_the_lock_does_not_hold(project: Project) -> None:
    serve_two_models(project)
    run = project.fetch("--locked", "beta")
    assert run.code == 2 and "'beta' is not in models.lock.json" in run.stderr
    assert project.fetch("beta").code == 0
    text = (project.dir / "models.toml").read_text().replace('"b1.gguf" }', '"b2.gguf" }')
    project.catalog(text)
    run = project.fetch("--locked", "beta")
    assert run.code == 2, run.stderr
    assert "no longer matches the catalog's 'beta'" in run.stderr
    assert "the catalog lists other files than the lock" in run.stderr


def test_the_connection_bound_holds_across_models(project: Project) -> None:
    """Four files of two models, `--connections 2`: never more than two bodies at once
    on the server, though each file alone would take more."""
    for index, repo in enumerate((A, A, B, B)):
        project.hf.add_file(repo, f"f{index}.gguf", payload(3 << 20, 10 + index))
        project.hf.set_faults(repo, f"f{index}.gguf", Faults(rate_limit=4_000_000))
    alpha = toml_entry("alpha", A, [{"path": "f0.gguf"}, {"path": "f1.gguf"}])
    project.catalog(alpha + toml_entry("beta", B, [{"path": "f2.gguf"}, {"path": "f3.gguf"}]))
    run = project.fetch("--connections", "2", "alpha", "beta")
    assert run.code == 0, run.stderr
    assert project.hf.peak_body_streams == 2


def test_a_rerun_checks_every_file_by_its_bytes_and_repairs_a_damaged_one(
    project: Project,
) -> None:
    """Floating files (no pin in the catalog): a small non-LFS one (the hub serves it
    directly, with a git-blob ETag and no sha256) and an LFS one. A rerun finds both
    current by their ETags; a flipped byte in either is caught by its bytes (against the
    hub's advertised sha256, or what the last fetch locked) and downloaded again."""
    config, weights = b'{"model_type": "llama"}\n', payload(200_000, 4)
    project.hf.add_file(A, "config.json", config)
    project.hf.set_faults(A, "config.json", Faults(no_linked_headers=True))
    project.hf.add_file(A, "w.gguf", weights)
    project.catalog(toml_entry("alpha", A, [{"path": "config.json"}, {"path": "w.gguf"}]))
    assert project.fetch("alpha").code == 0
    again = project.fetch("alpha")
    assert again.code == 0, again.stderr
    sources = [f["source"] for f in again.events()[-1]["models"][0]["files"]]
    assert sources == ["up-to-date", "up-to-date"]
    for name, data in (("config.json", config), ("w.gguf", weights)):
        target = project.path(A, name)
        target.write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])
        run = project.fetch("alpha")
        assert run.code == 0, run.stderr
        assert "is not the file the hub serves: downloading it again" in run.stderr
        assert target.read_bytes() == data
    assert project.run("verify", "alpha").code == 0


def test_a_size_pin_is_checked_on_a_rerun_too(project: Project) -> None:
    data = payload(100_000, 6)
    project.hf.add_file(A, "m.gguf", data)
    project.catalog(toml_entry("alpha", A, [{"path": "m.gguf", "size": len(data)}]))
    assert project.fetch("alpha").code == 0
    project.path(A, "m.gguf").write_bytes(data + b"tail")
    run = project.fetch("alpha")
    assert run.code == 0, run.stderr
    assert project.path(A, "m.gguf").read_bytes() == data


def test_locked_refuses_archive_members_the_catalog_changed(project: Project) -> None:
    archive = tar_bytes({"model.gguf": b"weights"})
    project.hf.add_file(A, "p.tar.gz", archive)
    member = {"path": "model.gguf", "size": 7, "sha256": sha256(b"weights")}
    project.catalog(toml_entry("p", A, [{"path": "p.tar.gz", "contents": [member]}]))
    assert project.fetch("p").code == 0
    other = {**member, "sha256": sha256(b"other")}
    project.catalog(toml_entry("p", A, [{"path": "p.tar.gz", "contents": [other]}]))
    run = project.fetch("--locked", "p")
    assert run.code == 2, run.stderr
    assert "other members of p.tar.gz than the lock records" in run.stderr


def test_the_lock_is_updated_from_a_fresh_read(tmp_path: Path) -> None:
    """Two fetches of different models at once: the one that writes last keeps the other's
    entry, since each re-reads the lock under its own lock before it writes."""
    from bitnet_xtask.models.lock import LockedFile, LockedModel, read_lock, update_lock

    path = tmp_path / "models.lock.json"
    entry = LockedModel("o/r", "main", None, (LockedFile("m.gguf", 1, "a" * 64),))
    stale = read_lock(path)  # what a second fetch read before the first one wrote
    update_lock(path, {"first": entry})
    update_lock(stale.path, {"second": entry})
    assert set(read_lock(path).models) == {"first", "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.lock.json"]


def test_fetch_refuses_unknown_names_and_needs_one(project: Project) -> None:
    serve_two_models(project)
    run = project.fetch("nope")
    assert run.code == 2 and "no model called 'nope'" in run.stderr and "alpha" in run.stderr
    assert project.fetch().code == 2
    assert not (project.dir / "models.lock.json").exists()


def test_a_pinned_file_the_hub_serves_differently_is_refused(project: Project) -> None:
    serve_two_models(project)
    project.hf.add_file(A, "a2.bin", payload(200_000, 7))
    run = project.fetch("alpha")
    assert run.code == 13, run.stderr
    assert "a2.bin" in run.stderr
    assert not (project.dir / "models.lock.json").exists()  # only a whole fetch is locked


def test_ctrl_c_keeps_every_partial_file_and_the_same_command_resumes_them_all(
    project: Project,
) -> None:
    """Resumable as a whole: a SIGINT mid-fetch of two models' files exits 130 with each
    `.part` kept, and the same command then fetches only the rest of each."""
    # Streams write a read of up to 1 MiB at a time: files of 3 MiB at 1 MB/s each.
    files = {"a1.gguf": payload(3 << 20, 1), "b1.gguf": payload(3 << 20, 2)}
    project.hf.add_file(A, "a1.gguf", files["a1.gguf"])
    project.hf.add_file(B, "b1.gguf", files["b1.gguf"])
    project.catalog(toml_entry("alpha", A, [{"path": "a1.gguf"}])
                    + toml_entry("beta", B, [{"path": "b1.gguf"}]))  # fmt: skip
    for repo, name in ((A, "a1.gguf"), (B, "b1.gguf")):
        project.hf.set_faults(repo, name, Faults(rate_limit=1_000_000))
    env = project.xtask.env(HF_ENDPOINT=project.hf.hub_url)
    argv = project.xtask.argv(["models", "fetch", "--json", "--no-progress", "alpha", "beta"])
    proc = subprocess.Popen(argv, env=env, cwd=project.dir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    parts = [project.path(A, "a1.gguf.part"), project.path(B, "b1.gguf.part")]

    def started() -> bool:
        return all(p.exists() and p.stat().st_blocks > 0 for p in parts)

    wait_for(started, what="both slow files streaming")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert all(p.exists() for p in parts)
    assert not (project.dir / "models.lock.json").exists()
    project.hf.clear_log()
    for repo, name in ((A, "a1.gguf"), (B, "b1.gguf")):
        project.hf.set_faults(repo, name, Faults())
    run = project.fetch("alpha", "beta")
    assert run.code == 0, run.stderr
    for name, data in files.items():
        assert project.path(A if name[0] == "a" else B, name).read_bytes() == data
    resumed = [r.headers["range"] for r in project.hf.requests if "range" in r.headers]
    assert len(resumed) >= 2 and not any(r.startswith("bytes=0-") for r in resumed), resumed
    assert not any(p.exists() for p in parts)
    assert set(project.lock()["models"]) == {"alpha", "beta"}


# --- verify -------------------------------------------------------------------------------


def test_verify_catches_a_corrupted_byte_and_names_the_file(project: Project) -> None:
    files = serve_two_models(project)
    assert project.fetch("alpha", "beta").code == 0
    run = project.run("verify")
    assert run.code == 0, run.stderr
    assert "3 ok" in run.stdout
    target = project.path(A, "a2.bin")
    broken = bytearray(files["a2.bin"])
    broken[123_456] ^= 0x01
    target.write_bytes(bytes(broken))
    run = project.run("verify", "--json")
    assert run.code == 13, run.stderr
    assert "models/org-alpha/a2.bin" in run.stderr and sha256(files["a2.bin"]) in run.stderr
    report = json.loads(run.stdout)
    statuses = {Path(f["path"]).name: f["status"] for f in report["files"]}
    assert statuses == {"a1.gguf": "ok", "a2.bin": "mismatch", "b1.gguf": "ok"}
    assert report["ok"] is False
    # beta's file is pinned by the lock alone; verify uses it.
    beta = next(f for f in report["files"] if f["model"] == "beta")
    assert beta["expected_sha256"] == sha256(files["b1.gguf"])
    # What verify's hint says: fetch repairs it.
    run = project.fetch("alpha")
    assert run.code == 0, run.stderr
    assert target.read_bytes() == files["a2.bin"]
    assert project.run("verify").code == 0


def test_verify_of_a_named_model_that_is_not_here_fails(project: Project) -> None:
    files = serve_two_models(project)
    run = project.run("verify", "alpha")
    assert run.code == 1, run.stderr
    assert "2 file(s) of the named models are not here" in run.stderr
    assert project.run("verify").stdout.startswith("no catalog model has a file here")
    # Half of alpha here: without names it is listed, not failed; named, it fails.
    project.path(A, "a1.gguf").parent.mkdir(parents=True)
    project.path(A, "a1.gguf").write_bytes(files["a1.gguf"])
    run = project.run("verify", "--json")
    assert run.code == 0, run.stderr
    statuses = [f["status"] for f in json.loads(run.stdout)["files"]]
    assert statuses == ["ok", "missing"]
    assert project.run("verify", "alpha").code == 1


# --- archives -----------------------------------------------------------------------------


def tar_bytes(
    members: dict[str, bytes], *, zstd: bool = False, hostile: str | None = None
) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if hostile is not None:
            info = tarfile.TarInfo(hostile)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    if zstd:
        return zstandard.ZstdCompressor().compress(raw.getvalue())
    out = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.zst"])
def test_an_archive_is_unpacked_safely_and_its_members_verified(
    project: Project, suffix: str
) -> None:
    inner = {"weights/model.gguf": payload(50_000, 5), "README": b"hello\n"}
    archive = tar_bytes(inner, zstd=suffix == ".tar.zst")
    name = f"pack{suffix}"
    project.hf.add_file(A, name, archive)
    contents = [{"path": p, "size": len(d), "sha256": sha256(d)} for p, d in inner.items()]
    project.catalog(toml_entry("packed", A, [{"path": name, "sha256": sha256(archive),
                                              "contents": contents}]))  # fmt: skip
    run = project.fetch("packed")
    assert run.code == 0, run.stderr
    unpacked = project.path(A, "pack")
    assert (unpacked / "weights" / "model.gguf").read_bytes() == inner["weights/model.gguf"]
    assert project.lock()["models"]["packed"]["files"][0]["contents"] == sorted(
        contents, key=lambda m: str(m["path"])
    )
    assert project.run("verify", "packed").code == 0
    (unpacked / "README").write_bytes(b"HELLO\n")
    run = project.run("verify", "packed")
    assert run.code == 13 and "README" in run.stderr


def test_a_hostile_archive_is_refused_and_nothing_escapes(project: Project) -> None:
    archive = tar_bytes({"ok.gguf": b"fine"}, hostile="../../escaped")
    project.hf.add_file(A, "evil.tar.gz", archive)
    project.catalog(toml_entry("evil", A, [{"path": "evil.tar.gz", "sha256": sha256(archive)}]))
    run = project.fetch("evil")
    assert run.code == 1, run.stderr
    assert "../../escaped" in run.stderr and "Traceback" not in run.stderr
    assert not (project.models / "escaped").exists() and not (project.dir / "escaped").exists()
    assert not project.path(A, "evil").exists()
    assert not (project.dir / "models.lock.json").exists()


def test_an_archive_whose_member_differs_from_its_pin_is_refused(project: Project) -> None:
    archive = tar_bytes({"model.gguf": b"actual"})
    project.hf.add_file(A, "p.tar.gz", archive)
    wrong = [{"path": "model.gguf", "size": 6, "sha256": sha256(b"expect")}]
    project.catalog(toml_entry("p", A, [{"path": "p.tar.gz", "contents": wrong}]))
    run = project.fetch("p")
    assert run.code == 13, run.stderr
    assert "member model.gguf" in run.stderr


# --- full-crossval --model ----------------------------------------------------------------


def test_full_crossval_runs_a_catalog_model(
    project: Project, llama_bin: Path, tmp_path: Path
) -> None:
    from bitnet_xtask.fixtures import generate_fixture

    fixture = generate_fixture("tiny", "llama", "f32", 0, tmp_path / "fx").model
    data = fixture.read_bytes()
    project.hf.add_file(A, "tiny.gguf", data)
    project.catalog(toml_entry("tiny", A, [{"path": "tiny.gguf", "size": len(data),
                                            "sha256": sha256(data)}]))  # fmt: skip
    env = project.xtask.env(HF_ENDPOINT=project.hf.hub_url,
                            XTASK_CPP_PREFIX_LLAMA_CPP=str(llama_bin.parent))  # fmt: skip
    receipt = tmp_path / "r.json"
    run = project.xtask.run("full-crossval", "--model", "tiny", "--receipt", str(receipt),
                            "--json", env=env, cwd=project.dir, timeout=300)  # fmt: skip
    assert run.code == 0, run.stderr
    steps = [e["step"] for e in run.events() if e["phase"] == "step"]
    assert steps == ["model", "fetch-cpp", "crossval"]
    assert json.loads(receipt.read_text())["verdict"]["passed"]
    assert project.lock()["models"]["tiny"]["files"][0]["sha256"] == sha256(data)
    run = project.xtask.run("full-crossval", "--model", "tiny", "--id", "o/r", env=env,
                            cwd=project.dir)  # fmt: skip
    assert run.code == 2 and "not both" in run.stderr
