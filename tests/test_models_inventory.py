"""`xtask models inventory` and the sha256 cache: real GGUF fixtures in a models folder
and in a Hugging Face hub cache laid out as huggingface_hub lays it out, a real catalog,
and the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import Xtask, sha256

from bitnet_xtask.models.catalog import Catalog, load_catalog
from bitnet_xtask.models.hash_cache import CACHE_LIMIT, HashCache
from bitnet_xtask.models.inventory import Inventory, InventoryRow, build_inventory

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
LONG_AGO = time.time() - 3600  # older than the cache's racy window
EMPTY = Catalog({})


def age(*paths: Path, when: float = LONG_AGO) -> None:
    """Give files an mtime well in the past, as a model downloaded yesterday has."""
    for path in paths:
        os.utime(path, (when, when), follow_symlinks=False)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One llama q4_0 and one bitnet i2_s GGUF (real gen-fixtures output)."""
    from bitnet_xtask.fixtures import generate_fixture

    out = tmp_path_factory.mktemp("fixtures")
    return {
        "llama": generate_fixture("tiny", "llama", "q4_0", 1, out).model,
        "bitnet": generate_fixture("tiny", "bitnet", "i2_s", 1, out).model,
    }


@pytest.fixture
def tree(tmp_path: Path, fixtures: dict[str, Path]) -> dict[str, Path]:
    """A models folder (the llama fixture, a file that is not GGUF, a `.part`) and an HF
    hub cache whose two snapshots both link `sub/model.gguf` to the bitnet blob."""
    models = tmp_path / "models"
    (models / "org-model").mkdir(parents=True)
    llama = models / "org-model" / fixtures["llama"].name
    shutil.copyfile(fixtures["llama"], llama)
    (models / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (models / "org-model" / "next.gguf.part").write_bytes(b"partial")
    hub = tmp_path / "hub"
    repo = hub / "models--org--bitnet-tiny"
    blob_sha = sha256(fixtures["bitnet"].read_bytes())
    blob = repo / "blobs" / blob_sha
    blob.parent.mkdir(parents=True)
    shutil.copyfile(fixtures["bitnet"], blob)
    for commit in (COMMIT_A, COMMIT_B):
        (repo / "snapshots" / commit / "sub").mkdir(parents=True)
        (repo / "snapshots" / commit / "sub" / "model.gguf").symlink_to(
            Path("..", "..", "..", "blobs", blob_sha)
        )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_B)
    age(llama, models / "broken.gguf", blob)
    return {"models": models, "hub": hub, "llama": llama, "blob": blob, "root": tmp_path}


def catalog(root: Path, fixtures: dict[str, Path]) -> Catalog:
    """A project catalog pinning the llama fixture, and the bitnet one inside an archive."""
    llama, bitnet = (sha256(fixtures[name].read_bytes()) for name in ("llama", "bitnet"))
    text = f"""
[models."tiny-llama"]
repo = "org/model"
files = [{{ path = "{fixtures["llama"].name}", sha256 = "{llama}" }}]

[models."tiny-bitnet"]
repo = "org/bitnet-tiny"
files = [{{ path = "weights.tar.gz", contents = [
    {{ path = "inner/model.gguf", size = {fixtures["bitnet"].stat().st_size}, sha256 = "{bitnet}" }}
] }}]
"""
    path = root / "models.toml"
    path.write_text(text)
    return load_catalog(path)


def run(tree: dict[str, Path], known: Catalog, *, hub: bool = True) -> tuple[Inventory, HashCache]:
    """One inventory with the cache file under the tree, loaded and saved as the CLI does."""
    cache = HashCache.load(tree["root"] / "cache" / "sha256-cache.json")
    inventory = build_inventory(tree["models"], known, cache, hf_cache=tree["hub"] if hub else None)
    cache.save()
    return inventory, cache


def by_name(inventory: Inventory) -> dict[str, InventoryRow]:
    return {row.path.name: row for row in inventory.rows}


# --- what is listed -------------------------------------------------------------------


def test_every_gguf_is_listed_with_its_facts_and_catalog_match(
    tree: dict[str, Path], fixtures: dict[str, Path]
) -> None:
    inventory, _ = run(tree, catalog(tree["root"], fixtures))
    rows = by_name(inventory)
    assert set(rows) == {fixtures["llama"].name, "broken.gguf", tree["blob"].name}  # no .part

    llama = rows[fixtures["llama"].name]
    assert (llama.location, llama.path) == ("models", tree["llama"])
    assert llama.sha256 == sha256(fixtures["llama"].read_bytes())
    assert llama.size == fixtures["llama"].stat().st_size
    assert llama.facts is not None and llama.error is None
    assert (llama.facts.architecture, llama.facts.quantization, llama.facts.tokenizer) == (
        "llama",
        "q4_0",
        "llama",
    )
    assert dict(llama.facts.tensor_types) == {"F32": 7, "Q4_0": 14}
    assert llama.facts.n_tensors == 21 and llama.facts.n_params > 0
    assert llama.match is not None
    assert (llama.match.model, llama.match.file, llama.match.member) == (
        "tiny-llama",
        fixtures["llama"].name,
        None,
    )

    blob = rows[tree["blob"].name]  # two snapshots link to it: listed once
    assert blob.location == "hf-cache" and blob.hf is not None
    assert (blob.hf.repo, blob.hf.commit, blob.hf.path) == (
        "org/bitnet-tiny",
        COMMIT_A,
        "sub/model.gguf",
    )
    assert blob.facts is not None and blob.facts.architecture == "bitnet"
    assert blob.facts.quantization == "i2_s" and dict(blob.facts.tensor_types)["I2_S"] == 14
    assert blob.match is not None
    assert (blob.match.model, blob.match.member) == ("tiny-bitnet", "inner/model.gguf")

    broken = rows["broken.gguf"]
    assert broken.facts is None and broken.match is None
    assert broken.error is not None and "as GGUF" in broken.error
    assert broken.sha256 == sha256(b"GGUF" + b"\0" * 60)

    summary = inventory.summary()
    assert summary == {"files": 3, "bytes": inventory.total_bytes, "models": 2, "hf_cache": 1,
                       "matched": 2, "errors": 1, "hashed": 3, "parsed": 3}  # fmt: skip


def test_links_inside_the_models_folder(tree: dict[str, Path], tmp_path: Path) -> None:
    """A link to a file is listed (its target hashed), a link to nothing is listed as an
    error, a linked folder is not entered (the walk never leaves the tree)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(tree["llama"], outside / "elsewhere.gguf")
    models = tree["models"]
    (models / "linked-dir").symlink_to(outside, target_is_directory=True)
    (models / "alias.gguf").symlink_to(tree["llama"])
    (models / "gone.gguf").symlink_to(tmp_path / "no-such-file")
    inventory, _ = run(tree, EMPTY, hub=False)
    rows = by_name(inventory)
    assert "elsewhere.gguf" not in rows
    assert rows["alias.gguf"].sha256 == rows[tree["llama"].name].sha256
    assert rows["alias.gguf"].path == models / "alias.gguf"
    gone = rows["gone.gguf"]
    assert gone.sha256 is None and gone.size is None
    assert gone.error is not None and "link to nothing" in gone.error
    assert all(row.location == "models" for row in inventory.rows)


def test_an_hf_cache_inside_the_models_folder_is_listed_once(tree: dict[str, Path]) -> None:
    inside = tree["models"] / "hf"
    tree["hub"].rename(inside)
    cache = HashCache.load(tree["root"] / "cache.json")
    inventory = build_inventory(tree["models"], EMPTY, cache, hf_cache=inside)
    assert [row.location for row in inventory.rows].count("hf-cache") == 1
    assert not any("snapshots" in str(row.path) for row in inventory.rows)


def test_an_absent_models_folder_and_hf_cache_list_nothing(tmp_path: Path) -> None:
    cache = HashCache.load(tmp_path / "cache.json")
    inventory = build_inventory(tmp_path / "models", EMPTY, cache, hf_cache=tmp_path / "hub")
    assert inventory.rows == () and inventory.hf_cache == tmp_path / "hub"


# --- the cache ------------------------------------------------------------------------


def test_a_rerun_reads_nothing_and_a_changed_file_is_hashed_again(
    tree: dict[str, Path], fixtures: dict[str, Path]
) -> None:
    known = catalog(tree["root"], fixtures)
    first, _ = run(tree, known)
    second, cache = run(tree, known)
    assert (first.hashed, first.parsed) == (3, 3)
    assert (second.hashed, second.parsed) == (0, 0) and cache.hashed == 0
    assert second.rows == first.rows

    age(tree["llama"], when=LONG_AGO + 60)  # a new mtime: hashed and parsed again
    third, _ = run(tree, known)
    assert (third.hashed, third.parsed) == (1, 1)

    # The same size, the old mtime given back: the ctime still tells it apart.
    data = bytearray(tree["llama"].read_bytes())
    data[-1] ^= 0xFF
    before = tree["llama"].stat()
    tree["llama"].write_bytes(bytes(data))
    os.utime(tree["llama"], ns=(before.st_atime_ns, before.st_mtime_ns))
    fourth, _ = run(tree, known)
    assert fourth.hashed == 1
    row = by_name(fourth)[tree["llama"].name]
    assert row.sha256 == sha256(bytes(data)) and row.match is None


def test_a_file_modified_just_now_is_hashed_but_not_recorded(tmp_path: Path) -> None:
    """A write in the same clock tick as the hash would leave the key unchanged."""
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"x" * 1000)
    cache = HashCache.load(tmp_path / "cache.json")
    assert cache.sha256(fresh) == cache.sha256(fresh) == sha256(b"x" * 1000)
    assert cache.hashed == 2
    age(fresh)
    cache.sha256(fresh)
    cache.sha256(fresh)
    assert cache.hashed == 3


def test_the_cache_survives_processes_and_prunes_files_that_are_gone(tmp_path: Path) -> None:
    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 100)
    age(*files)
    store = tmp_path / "cache" / "sha256-cache.json"
    cache = HashCache.load(store)
    digests = [cache.sha256(path) for path in files]
    cache.attach(files[0], "facts", {"answer": 42})
    cache.save()
    files[2].unlink()
    again = HashCache.load(store)
    assert [again.sha256(path) for path in files[:2]] == digests[:2] and again.hashed == 0
    assert again.attached(files[0], "facts") == {"answer": 42}
    again.save()
    kept = json.loads(store.read_text())["entries"]
    assert sorted(kept) == [str(files[0]), str(files[1])]


def test_a_value_is_not_attached_to_a_file_that_changed_since_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"one")
    age(path)
    cache = HashCache.load(tmp_path / "cache.json")
    cache.sha256(path)
    path.write_bytes(b"two")
    cache.attach(path, "facts", {"of": "one"})
    assert cache.attached(path, "facts") is None
    age(path)
    assert cache.sha256(path) == sha256(b"two") and cache.attached(path, "facts") is None


@pytest.mark.parametrize(
    "content",
    [b"", b"not json at all", b'{"version": 99, "entries": {}}', b"[1, 2, 3]",
     b'{"version": 1, "entries": {"relative": {}, "/x": {"dev": "a"}, "/y": 7}}'],
)  # fmt: skip
def test_a_corrupt_cache_file_is_ignored_and_replaced(tmp_path: Path, content: bytes) -> None:
    store = tmp_path / "sha256-cache.json"
    store.write_bytes(content)
    path = tmp_path / "model.gguf"
    path.write_bytes(b"data")
    age(path)
    cache = HashCache.load(store)
    assert cache.sha256(path) == sha256(b"data") and cache.hashed == 1
    cache.save()
    assert HashCache.load(store).sha256(path) == sha256(b"data")
    assert json.loads(store.read_text())["version"] == 1


def test_an_oversized_cache_file_is_not_read(tmp_path: Path) -> None:
    store = tmp_path / "sha256-cache.json"
    with store.open("wb") as handle:  # sparse: no disk is spent on it
        handle.truncate(CACHE_LIMIT + 1)
    notes: list[str] = []
    cache = HashCache.load(store, note=notes.append)
    assert cache.attached(store, "anything") is None
    assert any("ignoring" in note for note in notes)


def test_a_cache_that_cannot_be_read_or_written_is_a_note_not_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"data")
    age(path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would be")
    for store in (tmp_path / "a-dir", tmp_path / "link.json", blocker / "sha256-cache.json"):
        notes: list[str] = []
        if store.name == "a-dir":
            store.mkdir()
        elif store.name == "link.json":
            store.symlink_to(tmp_path / "target.json")
        cache = HashCache.load(store, note=notes.append)
        assert cache.sha256(path) == sha256(b"data")
        cache.save()
        assert any("not saved" in note for note in notes), (store, notes)
    assert not (tmp_path / "target.json").exists()  # never written through the link


def test_hashing_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    from bitnet_xtask.errors import UsageError

    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    cache = HashCache.load(tmp_path / "cache.json")
    for path, words in ((fifo, "not a regular file"), (tmp_path / "absent", "does not exist")):
        with pytest.raises(UsageError, match=words):
            cache.sha256(path)


# --- the CLI --------------------------------------------------------------------------


def test_the_cli_lists_a_table_and_a_checked_report_and_reruns_from_its_cache(
    xtask: Xtask, tree: dict[str, Path], fixtures: dict[str, Path]
) -> None:
    catalog(tree["root"], fixtures)
    env = xtask.env(XDG_CACHE_HOME=str(tree["root"] / "xdg"), HF_HUB_CACHE=str(tree["hub"]))
    args = ["models", "inventory", "--models", str(tree["models"]),
            "--catalog", str(tree["root"] / "models.toml")]  # fmt: skip
    first = xtask.run(*args, "--json", env=env)
    assert first.code == 0, first.stderr
    report = json.loads(first.stdout)  # one document, checked against the schema
    assert report["summary"]["files"] == 3 and report["summary"]["hashed"] == 3
    assert report["hf_cache"] == str(tree["hub"])
    assert (tree["root"] / "xdg" / "bitnet_xtask" / "sha256-cache.json").is_file()

    second = json.loads(xtask.run(*args, "--json", env=env).stdout)
    assert (second["summary"]["hashed"], second["summary"]["parsed"]) == (0, 0)
    assert second["files"] == report["files"]

    text = xtask.run(*args, env=env)
    assert text.code == 0, text.stderr
    header, *lines = text.stdout.splitlines()
    assert header.split() == ["PATH", "SIZE", "SHA256", "ARCH", "QUANT", "TOKENIZER", "MATCH"]
    llama = next(line for line in lines if line.startswith("org-model/"))
    assert "q4_0" in llama and f"tiny-llama ({fixtures['llama'].name})" in llama
    assert any(
        line.startswith(f"hf:org/bitnet-tiny/sub/model.gguf@{COMMIT_A[:7]}") for line in lines
    )
    assert any(line.startswith("✗ cannot read") for line in lines)
    assert lines[-1].startswith("3 GGUF files") and "0 hashed" in lines[-1]

    without = xtask.run(*args, "--no-hf-cache", "--json", env=env)
    assert {f["location"] for f in json.loads(without.stdout)["files"]} == {"models"}


def test_the_cli_refuses_a_models_folder_that_is_not_there(xtask: Xtask, tmp_path: Path) -> None:
    done = xtask.run("models", "inventory", "--models", str(tmp_path / "nope"), "--json",
                     env=xtask.env(XDG_CACHE_HOME=str(tmp_path / "xdg")))  # fmt: skip
    assert done.code == 2
    (error,) = done.events()
    assert error["phase"] == "error" and error["command"] == "models inventory"
    assert "does not exist" in error["msg"]


def test_the_cli_default_folder_may_be_absent(xtask: Xtask, tmp_path: Path) -> None:
    env = xtask.env(XDG_CACHE_HOME=str(tmp_path / "xdg"), HF_HUB_CACHE=str(tmp_path / "hub"))
    done = xtask.run("models", "inventory", env=env, cwd=xtask.workdir)
    assert done.code == 0, done.stderr
    assert done.stdout.startswith("no GGUF files in ")
