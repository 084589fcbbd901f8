"""`hf.fetch.fetch_checkpoint` against the project's Hugging Face-compatible server: a
sharded checkpoint with a dropped connection and a 429 is fetched whole and verified, a
repository without a tokenizer is not found, an index naming shards elsewhere is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from servers.hf_server import Faults, HFTestServer

from bitnet_xtask.errors import NotFoundError, UsageError
from bitnet_xtask.hf.checkpoint import read_checkpoint
from bitnet_xtask.hf.fetch import fetch_checkpoint

REPO = "org/sharded"
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def serve(hf: HFTestServer, files: dict[str, bytes], repo: str = REPO) -> None:
    for name, data in files.items():
        hf.add_file(repo, name, data)


def sharded() -> dict[str, bytes]:
    shards = {"model-00001-of-00002.safetensors": b"a" * 300_000,
              "model-00002-of-00002.safetensors": b"b" * 200_000}  # fmt: skip
    index = {"weight_map": {"x.weight": next(iter(shards)), "y.weight": list(shards)[1],
                            "z.weight": next(iter(shards))}}  # fmt: skip
    return {
        "config.json": json.dumps(CONFIG).encode(),
        "model.safetensors.index.json": json.dumps(index).encode(),
        "tokenizer.json": b"{}",
        "tokenizer_config.json": b"{}",
        **shards,
    }


def test_a_sharded_checkpoint_is_fetched_whole_through_faults(
    hf: HFTestServer, tmp_path: Path
) -> None:
    files = sharded()
    serve(hf, files)
    hf.set_faults(REPO, "model-00001-of-00002.safetensors", Faults(drop_at=[150_000]))
    hf.set_faults(REPO, "config.json", Faults(status_sequence=[(429, {"Retry-After": "0"})]))
    directory = fetch_checkpoint(REPO, base_url=hf.hub_url, out=tmp_path, use_hf_cache=False)
    assert directory == tmp_path / "org-sharded"
    for name, data in files.items():
        assert hashlib.sha256((directory / name).read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        ), name
    assert not (directory / "tokenizer.model").exists()  # optional: absent upstream
    seen = hf.requests
    assert any(r.status == 429 and r.path.endswith("/config.json") for r in seen)
    shard = [r for r in seen if r.method == "GET" and "00001-of" in r.path and r.bytes_sent]
    assert shard[0].bytes_sent < 300_000  # dropped
    assert any("range" in {k.lower() for k in r.headers} for r in shard[1:])  # resumed
    checkpoint = read_checkpoint(directory)
    assert [p.name for p in checkpoint.weights] == [n for n in files if n.startswith("model-")]


def test_a_checkpoint_without_a_tokenizer_is_not_found(hf: HFTestServer, tmp_path: Path) -> None:
    serve(hf, {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": b"w" * 64})
    with pytest.raises(NotFoundError, match=r"neither tokenizer\.json nor tokenizer\.model"):
        fetch_checkpoint(REPO, base_url=hf.hub_url, out=tmp_path, use_hf_cache=False)


def test_an_index_naming_shards_elsewhere_is_refused(hf: HFTestServer, tmp_path: Path) -> None:
    index = {"weight_map": {"x.weight": "../elsewhere.safetensors"}}
    serve(hf, {"config.json": json.dumps(CONFIG).encode(),
               "model.safetensors.index.json": json.dumps(index).encode()})  # fmt: skip
    with pytest.raises(UsageError, match=r"not a \.safetensors file beside it"):
        fetch_checkpoint(REPO, base_url=hf.hub_url, out=tmp_path, use_hf_cache=False)
