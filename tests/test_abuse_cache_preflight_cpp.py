"""Fault and abuse: clean-cache, preflight and fetch-cpp against hostile paths and input.

Issue 10, items 1, 7 (preflight), 13, 14 (fetch-cpp) and 21 (fetch-cpp), and their
siblings. Everything is real: directories under a temporary HOME and working directory
(no test points `--yes` at the real `/` or home: system directories are only ever judged
with `--dry-run` or the pure rule), FIFOs (`os.mkfifo`), device nodes (`os.mknod`, as
root), read-only tmpfs mounts (as root: root ignores permission bits), an entry root
cannot read (capsh drops CAP_DAC_OVERRIDE), and ELF files gcc builds here, then damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import Xtask
from mounts import Mounts, fill_up
from servers.hf_server import HFTestServer

from bitnet_xtask import cache
from bitnet_xtask.cache import cache_entries, remove_entries
from bitnet_xtask.cpp import build
from bitnet_xtask.cpp.build import BuildRequest, build_reference
from bitnet_xtask.cpp.compile import BuildError
from bitnet_xtask.errors import UsageError
from bitnet_xtask.gpu.elf import parse_fatbin, read_binary

IS_ROOT = os.geteuid() == 0
SRI = "sha256-" + "A" * 43 + "="
#: Any outbound HTTP(S) a regressed build would make goes to a closed loopback port.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


# --- helpers ---------------------------------------------------------------------------


def clean(
    xtask: Xtask, box: dict[str, Path], *args: str, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = xtask.env(XDG_CACHE_HOME=str(box["xdg"]))
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        xtask.argv(["clean-cache", *args]),
        cwd=box["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tree(path: Path) -> list[str]:
    """Everything under `path` (links not followed), to prove nothing was touched."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def without_dac(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: permission bits
    then bind root too, so an unreadable entry is really unreadable."""
    if not IS_ROOT:
        return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]
    if shutil.which("capsh") is None:
        pytest.skip("capsh is not installed: root cannot be made to respect mode bits")
    command = " ".join(f"'{a}'" for a in argv)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", command],
        capture_output=True, text=True, check=False, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    work = tmp_path_factory.mktemp("elf")
    (work / "main.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O1", "-o", str(work / "prog"), str(work / "main.c")], check=True)
    return work / "prog"


def patched(elf: Path, where: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(elf.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    where.write_bytes(bytes(data))
    return where


# --- #1 clean-cache: only its own folders, never an ancestor, a system dir or a file ----


def test_the_parent_of_the_working_directory_is_refused_and_nothing_goes(
    xtask: Xtask, sandbox: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = tree(sandbox["tmp"])
    home = tmp_path_factory.mktemp("home-elsewhere")  # so that only the cwd is at stake
    for flags in (["--yes"], ["--dry-run"]):
        run = clean(xtask, sandbox, *flags, "--models", "..", home=home)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "refusing to delete" in run.stderr and "working directory" in run.stderr
        assert "Traceback" not in run.stderr
    assert tree(sandbox["tmp"]) == before  # not even the listed build went


def test_the_directory_holding_home_is_refused(xtask: Xtask, sandbox: dict[str, Path]) -> None:
    homes = sandbox["tmp"] / "homes"
    alice = homes / "alice"
    (alice / "docs").mkdir(parents=True)
    (alice / "docs" / "thesis.tex").write_text("years of work")
    (homes / "bob").mkdir()
    run = clean(xtask, sandbox, "--yes", "--models", str(homes), home=alice)
    assert run.returncode == 2 and "home directory" in run.stderr, run.stderr
    assert (alice / "docs" / "thesis.tex").read_text() == "years of work"
    assert (homes / "bob").is_dir()


@pytest.mark.parametrize(
    "system", ["/", "/etc", "/usr", "/usr/share", "/tmp", "/var", "/home", "/root", "/proc"]
)
def test_system_directories_are_refused_in_the_dry_run_as_with_yes(
    xtask: Xtask, sandbox: dict[str, Path], system: str
) -> None:
    """Judged with --dry-run only (it never deletes, old code or new), and by the rule."""
    run = clean(xtask, sandbox, "--dry-run", "--json", "--models", system)
    assert run.returncode == 2, run.stdout
    entry = json.loads(run.stdout.splitlines()[0])
    assert entry["path"] == system and entry["removable"] is False and entry["refused"]
    assert "refusing to delete" in run.stderr and "Traceback" not in run.stderr
    assert cache.refusal(Path(system)) is not None  # the same rule, in this process


def _special(kind: str, path: Path) -> None:
    if kind == "regular file":
        path.write_text("my notes")
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        if not IS_ROOT:
            pytest.skip("mknod of a device node needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers


@pytest.mark.parametrize("kind", ["regular file", "FIFO", "socket", "character device"])
def test_a_non_directory_is_never_removed(
    xtask: Xtask, sandbox: dict[str, Path], kind: str
) -> None:
    target = sandbox["work"] / "models"
    shutil.rmtree(target)
    _special(kind, target)  # even at the documented place, it is not a cache folder
    before = target.lstat()
    run = clean(xtask, sandbox, "--yes", "--models", str(target))
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"it is a {kind}, not a directory" in run.stderr
    after = target.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert sandbox["build"].is_dir()  # nothing went


def test_a_folder_xtask_neither_documents_nor_created_is_refused(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    elsewhere = sandbox["tmp"] / "photos"
    (elsewhere / "2024").mkdir(parents=True)
    (elsewhere / "2024" / "a.jpg").write_bytes(b"jpeg")
    run = clean(xtask, sandbox, "--yes", "--models", str(elsewhere))
    assert run.returncode == 2 and "not a location xtask documents" in run.stderr
    assert (elsewhere / "2024" / "a.jpg").exists()
    # A foreign CACHEDIR.TAG (another tool's) does not make it ours either.
    (elsewhere / cache.CACHEDIR_TAG).write_text(cache.TAG_SIGNATURE + "\n# created by cargo\n")
    assert clean(xtask, sandbox, "--yes", "--models", str(elsewhere)).returncode == 2
    assert (elsewhere / "2024" / "a.jpg").exists()


def test_a_folder_xtask_created_and_tagged_is_removed(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    made = sandbox["tmp"] / "data" / "models" / "org-model"
    cache.make_cache_dir(made, root=sandbox["tmp"] / "data" / "models")
    assert cache.is_tagged(sandbox["tmp"] / "data" / "models") and not cache.is_tagged(made)
    (made / "m.gguf").write_bytes(b"GGUF")
    run = clean(xtask, sandbox, "--yes", "--models", str(sandbox["tmp"] / "data" / "models"))
    assert run.returncode == 0, run.stderr
    assert not (sandbox["tmp"] / "data" / "models").exists()
    assert (sandbox["tmp"] / "data").is_dir()  # it existed before: not ours, kept


def test_inside_a_linked_models_folder_is_judged_where_it_really_is(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    precious = sandbox["tmp"] / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "sub" / "keep.txt").write_text("keep")
    models = sandbox["work"] / "models"
    shutil.rmtree(models)
    models.symlink_to(precious)
    run = clean(xtask, sandbox, "--yes", "--models", "models/sub")
    assert run.returncode == 2 and str(precious / "sub") in run.stderr
    assert (precious / "sub" / "keep.txt").read_text() == "keep"
    # The link itself is a documented cache: removed as a link, its target untouched.
    run = clean(xtask, sandbox, "--yes")
    assert run.returncode == 0, run.stderr
    assert not models.is_symlink() and (precious / "sub" / "keep.txt").exists()


@pytest.mark.parametrize("models", ["models", "..", "elsewhere", "file"])
def test_the_dry_run_shows_exactly_what_yes_does(
    xtask: Xtask, sandbox: dict[str, Path], models: str
) -> None:
    (sandbox["work"] / "elsewhere").mkdir()
    (sandbox["work"] / "file").write_text("x")
    dry = clean(xtask, sandbox, "--dry-run", "--json", "--models", models)
    yes = clean(xtask, sandbox, "--yes", "--json", "--models", models)
    assert (dry.returncode, dry.stderr) == (yes.returncode, yes.stderr)
    listed = [json.loads(line) for line in dry.stdout.splitlines()]
    entries = [e for e in listed if e["phase"] == "entry"]
    would = [e["path"] for e in entries if e["removable"]]
    if yes.returncode == 0:
        done = [json.loads(line) for line in yes.stdout.splitlines()][-1]
        assert done["removed"] == would == [e["path"] for e in entries]
    else:
        assert all(os.path.lexists(sandbox["work"] / e["path"]) for e in entries if e["path"])


def test_stray_files_in_the_build_cache_are_not_listed_or_removed(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    stray = sandbox["xdg"] / "bitnet_cpp" / "notes.txt"
    stray.write_text("mine")
    run = clean(xtask, sandbox, "--yes")
    assert run.returncode == 0 and "removed 3 of 3" in run.stdout, run.stdout + run.stderr
    assert stray.read_text() == "mine"


def test_a_folder_swapped_after_the_listing_is_not_removed(
    sandbox: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sandbox["work"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox["xdg"]))
    monkeypatch.setenv("HOME", str(sandbox["home"]))
    entries = cache_entries(Path("models"), Path("crossval/fixtures"))
    models = sandbox["work"] / "models"
    models.rename(sandbox["tmp"] / "moved")
    models.mkdir()
    (models / "new.txt").write_text("arrived after the listing")
    with pytest.raises(UsageError, match="changed since it was listed"):
        remove_entries([entries[0]], entries)
    assert (models / "new.txt").exists()


def test_a_read_only_cache_fails_with_exit_1_and_no_traceback(
    xtask: Xtask,
    sandbox: dict[str, Path],
    mounts: Mounts,
) -> None:
    fixtures = sandbox["work"] / "crossval" / "fixtures"
    shutil.rmtree(fixtures)

    def fill(path: Path) -> None:
        (path / "sub").mkdir()
        (path / "sub" / "a.gguf").write_bytes(b"GGUF")

    mounts.tmpfs(fixtures, "4m", fill=fill, read_only=True)
    run = clean(xtask, sandbox, "--yes")
    assert run.returncode == 1, run.stderr
    assert "could not remove all of" in run.stderr and "Read-only file system" in run.stderr
    assert "Traceback" not in run.stderr
    assert (fixtures / "sub" / "a.gguf").exists()


# --- #7, #13 preflight: special files, unreadable entries, corrupt ELF ------------------


def test_preflight_refuses_a_fifo_at_once(xtask: Xtask, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    run = xtask.run("preflight", "--binary", str(fifo), timeout=30)  # old code: forever
    assert run.code == 2 and "is a FIFO, not a binary" in run.stderr
    assert "Traceback" not in run.stderr


def test_preflight_refuses_a_device_node(xtask: Xtask, tmp_path: Path) -> None:
    if IS_ROOT:
        device = tmp_path / "zero"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    else:
        device = Path("/dev/zero")
    run = xtask.run("preflight", "--binary", str(device), timeout=30)
    assert run.code == 2 and "character device" in run.stderr, run.stderr


def test_preflight_scan_passes_over_special_entries_in_bounded_time(
    xtask: Xtask, tmp_path: Path, elf: Path
) -> None:
    build = tmp_path / "build"
    (build / "bin").mkdir(parents=True)
    shutil.copy(elf, build / "bin" / "llama-cli")
    os.mkfifo(build / "fifo")
    _special("socket", build / "sock")
    (build / "loop").symlink_to("loop")
    (build / "dangling").symlink_to("nowhere")
    (build / "bin" / "up").symlink_to("..")
    (build / "zero").symlink_to("/dev/zero")
    run = xtask.run("preflight", "--binary", str(build), "--format", "json", timeout=60)
    assert run.code == 0, run.stderr
    paths = [b["path"] for b in json.loads(run.stdout)["compiled"]["binaries"]]
    assert paths == [str(build / "bin" / "llama-cli")]


def test_preflight_names_an_entry_it_cannot_read(xtask: Xtask, tmp_path: Path, elf: Path) -> None:
    build = tmp_path / "build"
    (build / "bin").mkdir(parents=True)
    shutil.copy(elf, build / "bin" / "llama-cli")
    (build / "bin").chmod(0o444)  # listable, but its entries cannot be looked at
    try:
        run = without_dac(
            xtask.argv(["preflight", "--binary", str(build)]), env=xtask.env(), timeout=60
        )
    finally:
        (build / "bin").chmod(0o755)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "cannot read" in run.stderr and "Permission denied" in run.stderr
    assert "Traceback" not in run.stderr


def test_preflight_default_names_a_build_binary_it_cannot_read(
    xtask: Xtask, tmp_path: Path, elf: Path
) -> None:
    """Without --binary it checks the fetch-cpp builds' bin/: the same rule holds."""
    bin_dir = tmp_path / "xdg" / "bitnet_cpp" / "llama.cpp-x-cpu" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy(elf, bin_dir / "llama-cli")
    bin_dir.chmod(0o444)
    try:
        run = without_dac(
            xtask.argv(["preflight"]), env=xtask.env(XDG_CACHE_HOME=str(tmp_path / "xdg"))
        )
    finally:
        bin_dir.chmod(0o755)
    assert run.returncode == 2 and "cannot read" in run.stderr, run.stdout + run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("field", "offset", "fmt", "value"),
    [
        ("e_phoff 2**60", 0x20, "<Q", 1 << 60),
        ("e_phoff 2**64-1", 0x20, "<Q", (1 << 64) - 1),
        ("e_phentsize 1", 0x36, "<H", 1),
        ("e_shoff 2**60", 0x28, "<Q", 1 << 60),
    ],
)
def test_a_corrupt_elf_is_not_reported_as_a_fitting_binary(
    xtask: Xtask, tmp_path: Path, elf: Path, field: str, offset: int, fmt: str, value: int
) -> None:
    bad = patched(elf, tmp_path / "corrupt", offset, fmt, value)
    with pytest.raises(UsageError, match="not a readable ELF binary"):
        read_binary(bad)
    run = xtask.run("preflight", "--binary", str(bad), timeout=60)
    assert run.code == 2, f"{field}: {run.stdout}"
    assert "not a readable ELF binary" in run.stderr and "Traceback" not in run.stderr


def test_a_fatbin_header_that_claims_no_size_does_not_hang(xtask: Xtask, tmp_path: Path) -> None:
    """A `.nv_fatbin` whose container says header and payload are 0 bytes long made the
    parser loop in place forever."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    assert parse_fatbin(struct.pack("<IHHQ", 0xBA55ED50, 1, 0, 0)).cubin_sms == ()
    (tmp_path / "lib.c").write_text(
        '__attribute__((section(".nv_fatbin"), used)) static const unsigned char fb[16] ='
        " {0x50, 0xED, 0x55, 0xBA, 1, 0, 0, 0};\nint f(void) { return 0; }\n"
    )
    library = tmp_path / "libfat.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(library), str(tmp_path / "lib.c")], check=True
    )
    run = xtask.run("preflight", "--binary", str(library), "--format", "json", timeout=60)
    assert run.code == 0, run.stderr
    (binary,) = json.loads(run.stdout)["compiled"]["binaries"]
    assert binary["notes"] == [".nv_fatbin present but no device code found in it"]


# --- #21 fetch-cpp: bad --hash, --rev, --tag, --cuda-arch before any fetch --------------


def fetch(xtask: Xtask, tmp_path: Path, *args: str) -> tuple[int, str]:
    """fetch-cpp with a fresh cache, no way out to the network, and (so that a check that
    regressed stops before a download) no C++ compiler."""
    env = xtask.env(XDG_CACHE_HOME=str(tmp_path / "xdg"), CXX="no-such-compiler++", **NO_NETWORK)
    run = xtask.run("fetch-cpp", *args, env=env, timeout=60)
    assert "Traceback" not in run.stderr, run.stderr
    assert not list((tmp_path / "xdg").glob("bitnet_cpp/*/downloads/*"))
    return run.code, run.stderr


def test_a_malformed_hash_is_called_malformed(xtask: Xtask, tmp_path: Path) -> None:
    code, err = fetch(xtask, tmp_path, "--tag", "b6000", "--hash", "garbage")
    assert code == 2 and "'garbage' is not a NAR hash" in err and "sha256-" in err
    assert "needs --hash" not in err
    code, err = fetch(xtask, tmp_path, "--tag", "b6000")
    assert code == 2 and "needs --hash" in err


@pytest.mark.parametrize("rev", ["zzzz", "0c1e57", "0c1e57098g", "a" * 41, "", "-rf"])
def test_a_rev_that_is_not_a_commit_is_refused_before_any_fetch(
    xtask: Xtask, tmp_path: Path, rev: str
) -> None:
    code, err = fetch(xtask, tmp_path, f"--rev={rev}", "--hash", SRI)
    assert code == 2 and "is not a commit id" in err, err


@pytest.mark.parametrize("tag", ["", "../x", "-b1", "a b"])
def test_a_tag_that_is_no_tag_name_is_refused(xtask: Xtask, tmp_path: Path, tag: str) -> None:
    code, err = fetch(xtask, tmp_path, f"--tag={tag}", "--hash", SRI)
    assert code == 2 and "is not a tag name" in err, err


def test_good_revisions_pass_the_check() -> None:
    assert build.requested_revision("0c1e57098", None) == "0c1e57098"
    assert build.requested_revision("A" * 40, None) == "A" * 40
    assert build.requested_revision(None, "b6000") == "b6000"
    assert build.requested_revision(None, None) is None


@pytest.mark.parametrize(
    "arch", ["abc", "9.0", "sm_90", "35", "1000", "90;86", "90-fake", "", "OFF"]
)
def test_a_bad_cuda_arch_is_refused_before_any_fetch(
    xtask: Xtask, tmp_path: Path, arch: str
) -> None:
    code, err = fetch(xtask, tmp_path, "--backend", "cuda", f"--cuda-arch={arch}")
    assert code == 2 and "is not a CUDA architecture" in err, err


def test_cuda_arch_keywords_stand_alone(xtask: Xtask, tmp_path: Path) -> None:
    code, err = fetch(xtask, tmp_path, "--backend", "cuda", "--cuda-arch", "native",
                      "--cuda-arch", "90")  # fmt: skip
    assert code == 2 and "stands alone" in err


def test_the_forms_cmake_accepts_pass_the_check() -> None:
    for archs in (("90",), ("86-real", "90-virtual"), ("120a",), ("100f-real",), ("all",),
                  ("all-major",), ("native",), ("50", "199")):  # fmt: skip
        assert build.check_cuda_archs(archs) == archs
    with pytest.raises(UsageError, match="needs --backend cuda"):
        build_reference(BuildRequest(cuda_archs=("90",)))


# --- #14 fetch-cpp: a read-only cache, and its siblings in the build directory ----------


def test_a_read_only_cache_is_one_clear_error(xtask: Xtask, tmp_path: Path, mounts: Mounts) -> None:
    source = tmp_path / "tree"
    source.mkdir()
    (source / "CMakeLists.txt").write_text("project(x C)\n")
    for existing in (False, True):  # the cache empty, and with the build folder already
        xdg = tmp_path / f"xdg-{existing}"

        def fill(path: Path, existing: bool = existing) -> None:
            if existing:
                (path / "bitnet_cpp" / "llama.cpp-local-cpu").mkdir(parents=True)

        mounts.tmpfs(xdg, "4m", fill=fill, read_only=True)
        env = xtask.env(XDG_CACHE_HOME=str(xdg), **NO_NETWORK)
        run = xtask.run("fetch-cpp", "--source", str(source), env=env, timeout=60)
        assert run.code == 2, run.stderr
        assert "cannot write the fetch-cpp cache" in run.stderr
        assert "Read-only file system" in run.stderr and "Traceback" not in run.stderr


def test_a_full_cache_is_exit_10_before_anything_runs(
    xtask: Xtask, tmp_path: Path, mounts: Mounts
) -> None:
    """A genuinely full tmpfs (filled to ENOSPC) as $XDG_CACHE_HOME."""
    xdg = mounts.tmpfs(tmp_path / "full", fill=fill_up)
    source = tmp_path / "tree"
    source.mkdir()
    (source / "CMakeLists.txt").write_text("project(x C)\n")
    env = xtask.env(XDG_CACHE_HOME=str(xdg), **NO_NETWORK)
    run = xtask.run("fetch-cpp", "--source", str(source), env=env, timeout=60)
    assert run.code == 10, run.stderr
    assert "Traceback" not in run.stderr


def test_a_corrupt_receipt_means_rebuild_not_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "broken"
    source.mkdir()
    (source / "CMakeLists.txt").write_text('message(FATAL_ERROR "configured")\n')
    directory = tmp_path / "cache" / "bitnet_cpp" / "llama.cpp-local-cpu"
    directory.mkdir(parents=True)
    (directory / "receipt.json").write_bytes(b"\xff{not json" + b"[" * 100_000)
    with pytest.raises(BuildError, match="cmake"):
        build_reference(BuildRequest(source=source))


def test_a_source_tree_nix_cannot_archive_is_a_usage_error(xtask: Xtask, tmp_path: Path) -> None:
    source = tmp_path / "tree"
    source.mkdir()
    (source / "CMakeLists.txt").write_text("project(x C)\n")
    os.mkfifo(source / "pipe")
    env = xtask.env(XDG_CACHE_HOME=str(tmp_path / "xdg"), **NO_NETWORK)
    run = xtask.run("fetch-cpp", "--source", str(source), env=env, timeout=60)
    assert run.code == 2 and "--source" in run.stderr and "pipe" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_read_only_bitnet_checkout_is_a_usage_error(
    xtask: Xtask, tmp_path: Path, mounts: Mounts
) -> None:
    checkout = tmp_path / "BitNet"
    mounts.tmpfs(checkout, "4m", fill=lambda path: (path / "include").mkdir(), read_only=True)
    env = xtask.env(XDG_CACHE_HOME=str(tmp_path / "xdg"), **NO_NETWORK)
    run = xtask.run("fetch-cpp", "--ref", "bitnet.cpp", "--source", str(checkout), env=env)
    assert run.code == 2, run.stderr
    assert "cannot write bitnet.cpp's generated kernel code" in run.stderr
    assert "Traceback" not in run.stderr


# --- what xtask creates, it tags; what it tags, clean-cache may remove ------------------


def test_a_download_folder_xtask_made_is_tagged_and_can_be_cleaned(
    xtask: Xtask, hf: HFTestServer, sandbox: dict[str, Path]
) -> None:
    from conftest import REPO, payload

    hf.add_file(REPO, "m.gguf", payload(10_000))
    existing = sandbox["tmp"] / "data"
    existing.mkdir()
    out = existing / "my-models"  # made by download-model: tagged there, not above
    run = xtask.run("download-model", "--base-url", hf.hub_url, "--id", REPO, "--file",
                    "m.gguf", "--out", str(out), cwd=sandbox["work"])  # fmt: skip
    assert run.code == 0, run.stderr
    assert cache.is_tagged(out) and not cache.is_tagged(existing)
    assert clean(xtask, sandbox, "--yes", "--models", str(existing)).returncode == 2
    run2 = clean(xtask, sandbox, "--yes", "--models", str(out))
    assert run2.returncode == 0, run2.stderr
    assert not out.exists() and existing.is_dir()


def test_a_fixtures_folder_xtask_made_is_tagged_and_can_be_cleaned(
    xtask: Xtask, sandbox: dict[str, Path]
) -> None:
    output = sandbox["tmp"] / "fx"
    run = xtask.run("gen-fixtures", "--output", str(output), cwd=sandbox["work"], timeout=300)
    assert run.code == 0, run.stderr
    assert cache.is_tagged(output)
    run2 = clean(xtask, sandbox, "--yes", "--fixtures", str(output))
    assert run2.returncode == 0, run2.stderr
    assert not output.exists()


# --- siblings: other files fetch-cpp reads from the cache or a user -------------------


@pytest.mark.parametrize(
    "text",
    ['{"version": 1, "references": []}', '{"version": 1, "references": {"x": []}}',
     '{"version": 1, "references": {"x": {"kind": "github", "rev": 5}}}', "[]",
     "[" * 100_000, '{"version": 1, "references": {"x": {"kind": "pypi-sdist", "sha256": 1}}}'],
    ids=["references-a-list", "reference-a-list", "rev-a-number", "document-a-list",
         "nested-too-deep", "sha256-a-number"],
)  # fmt: skip
def test_a_malformed_pins_file_is_a_usage_error(text: str) -> None:
    from bitnet_xtask.cpp.pins import parse_pins

    with pytest.raises(UsageError):
        parse_pins(text)


def test_a_pins_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    from bitnet_xtask.cpp.pins import load_pins

    fifo = tmp_path / "pins.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        load_pins(fifo)


def test_an_unreadable_source_marker_means_verify_again(tmp_path: Path) -> None:
    marker = tmp_path / "src.verified"
    marker.write_bytes(b"\xff\xfe not text")
    assert build._read_marker(marker) is None
    marker.write_text("sha256:abc")
    assert build._read_marker(marker) == "sha256:abc"
