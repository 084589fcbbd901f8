"""What huggingface_hub left on this machine: the login token and the download cache.

We reuse both so users need no second login and no second copy of a model.

huggingface_hub keeps `<cache>/models--org--name/blobs/<etag>` with `snapshots/<commit>/
<path>` symlinks and `refs/<branch>` files. For an LFS file the blob's name is its
sha256, so a blob can be trusted after hashing it; we never adopt one on its name alone.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from bitnet_xtask.inputs import read_text

from .headers import as_sha256

#: A token is about 40 characters: anything much larger is not one.
SMALL_FILE_LIMIT = 64 << 10


def hf_home() -> Path:
    """`$HF_HOME`, else `$XDG_CACHE_HOME/huggingface` (default `~/.cache/huggingface`)."""
    if home := os.environ.get("HF_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface"


def find_token(warn: Callable[[str], None] | None = None) -> str | None:
    """`HF_TOKEN`, else the token file huggingface_hub's `hf auth login` writes.

    A missing token file means no token, and so does one this user cannot read (another
    user's, mode 000) or a directory at its path: a public repo needs none, so the
    download goes on without one, with a line through `warn`. One that is a FIFO, a
    device or far too large is refused (exit 2) rather than read: `HF_TOKEN_PATH=/dev/zero`
    would never end, a FIFO would block every download forever.
    """
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if token := os.environ.get(name, "").strip():
            return token
    path = os.environ.get("HF_TOKEN_PATH")
    token_file = Path(path) if path else hf_home() / "token"
    unusable = None
    try:
        info = token_file.stat()
        if stat.S_ISDIR(info.st_mode):
            unusable = "it is a directory"
        elif stat.S_ISREG(info.st_mode):  # only a regular file: opening a FIFO may block
            os.close(os.open(token_file, os.O_RDONLY | os.O_NONBLOCK))
    except FileNotFoundError:
        return None
    except OSError as exc:
        unusable = f"it cannot be read ({exc.strerror})"
    if unusable is not None:
        if warn is not None:
            warn(f"warning: token file {token_file} ignored ({unusable}); going on without a token")
        return None
    return read_text(token_file, what="token file", limit=SMALL_FILE_LIMIT).strip() or None


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps its cache, by its own precedence of variables."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache)
    return hf_home() / "hub"


def find_blob(
    repo_id: str, revision: str, path_in_repo: str, sha256: str | None
) -> tuple[Path, str] | None:
    """A cached blob for this file and the sha256 it must have, or None.

    With a known sha256 the blob of that name is the candidate; otherwise the snapshot of
    `revision` (a commit, or a branch through refs/) points at it, and its name gives the
    hash to check, when the name is a sha256.
    """
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    if sha256:
        blob = repo / "blobs" / sha256
        return (blob, sha256) if blob.is_file() else None
    ref = repo / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit / path_in_repo
    if not snapshot.is_file():
        return None
    blob = snapshot.resolve()
    expected = as_sha256(blob.name)
    return (blob, expected) if expected else None
