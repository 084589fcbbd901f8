"""The files of one download on disk, and the rules that keep them trustworthy.

```
<dir>/<file>            final artifact, only ever created by an atomic rename
<dir>/<file>.part       bytes received so far (sparse while streams run in parallel)
<dir>/<file>.part.json  resume state: URL, validators, size, commit, chunk map
<dir>/<file>.lock       one writer per file (flock; the owner's pid inside for messages)
<dir>/<file>.etag       cache metadata, atomic write
<dir>/<file>.lastmod    cache metadata, atomic write
```

The resume state and its rules are `download/state.py`; the file-system primitives
underneath (atomic writes, locks, `O_NOFOLLOW` opens) are `bitnet_xtask.fs`.

Every one of these names is ours alone: a symbolic link, a directory, a FIFO or a device
planted at one of them is refused before anything is written (`check_destination`), and
every file we write is opened with `O_NOFOLLOW` (`open_regular`), so a link swapped in
later is refused too, never followed (a `.part` link would have overwritten its target,
and the rename would have published the link). Files we write in place (`.part`,
`.lock`, the state's in-place fallback) must also have a single hard link.

Every sidecar is tiny by construction, so one that is not is not ours: a planted
multi-GB (or sparse, `truncate -s 8G`) file is never read, only its size is looked at
(`fs.read_small_text`), and it counts as corrupt: the state as none (the download starts again
from byte 0), the lock as one to take over (or to wait for, when its flock is held), the
cache metadata as absent; `--verbose` says which and why.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bitnet_xtask.errors import LockedError, NoSpaceError, UsageError
from bitnet_xtask.fs import (
    Note,
    check_can_create,
    ensure_space,
    file_kind,
    read_small_text,
)
from bitnet_xtask.untrusted import printable

HEADROOM_BYTES = 50 * 1024 * 1024
#: Bytes per path component on every file system we expect (ext4, xfs, btrfs, tmpfs,
#: APFS): Linux's NAME_MAX, <linux/limits.h>.
NAME_MAX = 255
#: What the longest name derived from a local file name adds: the temp file of an atomic
#: write of its resume state, `.{name}.part.json.{pid}.tmp` (a pid has at most 7 digits:
#: the kernel's PID_MAX_LIMIT is 2^22, <linux/threads.h>).
DERIVED_NAME_EXTRA = len(".") + len(".part.json") + len(".4194304.tmp")
#: `.lock` (one JSON line: pid, host, time), `.etag` and `.lastmod` (one header value).
SMALL_SIDECAR_LIMIT = 4 << 10


def leaf_name(path_in_repo: str) -> str:
    """The local file name: the last path component, after refusing tricks.

    `sub/dir/model.gguf` is a fine path inside a repository and lands as `model.gguf`;
    `..`, absolute paths, backslashes and NULs are refused outright rather than cleaned,
    since a caller who sends them is confused or hostile.
    """
    parts = path_in_repo.split("/")
    if (
        not path_in_repo
        or path_in_repo.startswith("/")
        or "\\" in path_in_repo
        or "\0" in path_in_repo
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
    ):
        raise UsageError(
            f"refusing unsafe --file {path_in_repo!r}",
            "give a path inside the repository, like ggml-model-i2_s.gguf or sub/model.gguf",
        )
    name = parts[-1]
    fits = NAME_MAX - DERIVED_NAME_EXTRA
    if len(name.encode("utf-8", "surrogateescape")) > fits:
        raise UsageError(
            f"refusing --file {path_in_repo!r}: its local name is "
            f"{len(name.encode('utf-8', 'surrogateescape'))} bytes, at most {fits} fit",
            f"a file system allows {NAME_MAX} bytes per name and the download's sidecars "
            f"add up to {DERIVED_NAME_EXTRA} (`.part.json` and its temp file)",
        )
    return name


@dataclass(frozen=True)
class Target:
    """Where one file and its sidecars live."""

    directory: Path
    name: str

    def _sibling(self, suffix: str) -> Path:
        return self.directory / f"{self.name}{suffix}"

    @property
    def final(self) -> Path:
        """The finished file."""
        return self.directory / self.name

    @property
    def part(self) -> Path:
        """Bytes received so far."""
        return self._sibling(".part")

    @property
    def state(self) -> Path:
        """The resume sidecar of `.part`."""
        return self._sibling(".part.json")

    @property
    def lock(self) -> Path:
        """The single-writer lock."""
        return self._sibling(".lock")

    @property
    def etag(self) -> Path:
        """The version tag of the finished file."""
        return self._sibling(".etag")

    @property
    def lastmod(self) -> Path:
        """The Last-Modified date of the finished file."""
        return self._sibling(".lastmod")


def model_dir(out: Path, repo_id: str) -> Path:
    """`models/<id-with-dashes>/`, the reference guide's layout; refused (exit 2) when that
    name is longer than a file system allows, before anything is created."""
    name = repo_id.replace("/", "-")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise UsageError(
            f"--id {repo_id!r} is too long: its directory name would be "
            f"{len(name.encode('utf-8', 'surrogateescape'))} bytes, at most {NAME_MAX} fit",
            "check --id (Hugging Face repository names are at most 96 characters)",
        )
    return out / name


def metadata_ok(value: str) -> bool:
    """Cache metadata (`.etag`, `.lastmod`) we may store and send back as a header: one
    line of at most `SMALL_SIDECAR_LIMIT` bytes that http.client can encode (Latin-1)
    and requests accepts (no control characters). A corrupt `.lastmod` with a newline
    inside was an `InvalidHeader` (exit 14), one with a character outside Latin-1 a
    UnicodeEncodeError (a traceback), a 1 MiB one a `431` from the server (exit 14)."""
    try:
        encoded = value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return (
        0 < len(value.encode("utf-8")) < SMALL_SIDECAR_LIMIT  # the file holds UTF-8 and "\n"
        and value == value.strip()
        and not any(c < 0x20 or c == 0x7F for c in encoded)
    )


def read_metadata(path: Path, note: Note | None = None) -> str | None:
    """`.etag` / `.lastmod`, or None when absent, oversized or not a header value we could
    send (`metadata_ok`): such a file counts as absent, and `note` says why."""
    value = read_small_text(path, SMALL_SIDECAR_LIMIT, note)
    if value is not None and not metadata_ok(value):
        if note is not None:
            note(f"ignoring {path}: '{printable(value, 60)}' is not a header value we wrote")
        return None
    return value


#: The same for a download, whose partial file is kept (`raise_if_no_space`, `write_state`).
DOWNLOAD_NO_SPACE_HINT = (
    "free some space (or use --out on a larger disk) and run the same command "
    "again: the partial download was kept and will resume"
)


def check_destination(target: Target) -> None:
    """Refuse up front (exit 2) every file-system condition that would otherwise fail, or
    do harm, only once the download is under way or done.

    - the directory, or what would hold it, is not a directory (`--out` a file,
      `/dev/null`), or is not writable (read-only mount, permissions);
    - the final name, or a sidecar, exists and is not a regular file: a directory at the
      final name would fail the rename after the whole download; a symbolic link at
      `.part` or `.lock` would have its target overwritten or truncated;
    - `.part`, `.part.json` or `.lock` has more than one hard link (they are written in
      place). The final file may have several: a blob adopted from the HF cache has.

    Only ever reads; missing directories are created later, by the download.
    """
    directory = target.directory
    existing = check_can_create(
        directory,
        what="a directory",
        hint="give --out a writable directory (one that does not exist yet is created)",
    )
    if existing != directory:
        return
    written_in_place = (target.part, target.state, target.lock)
    for path in (target.final, target.part, target.state, target.lock, target.etag, target.lastmod):
        try:
            node = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UsageError(f"cannot use {path}: {exc.strerror}") from None
        if not stat.S_ISREG(node.st_mode):
            raise UsageError(
                f"refusing to use {path}: it is {file_kind(node.st_mode)}, not a regular file",
                "nothing was written; remove it (or choose another --out) and run again",
            )
        if path in written_in_place and node.st_nlink > 1:
            raise UsageError(
                f"refusing to use {path}: it has {node.st_nlink} hard links, so another "
                "file would change with it",
                "nothing was written; remove it (or choose another --out) and run again",
            )


def raise_if_no_space(exc: OSError, where: Path) -> None:
    """Turn ENOSPC/EDQUOT during a download into the documented exit 10 (the hint says
    the partial download is kept: only download code calls this)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpaceError(f"disk full while writing in {where}", DOWNLOAD_NO_SPACE_HINT) from None


def ensure_download_space(directory: Path, remaining: int | None) -> None:
    """Refuse to start when the remaining bytes plus headroom do not fit."""
    if remaining is not None:
        ensure_space(
            directory,
            remaining,
            headroom=HEADROOM_BYTES,
            hint="free some space or use --out on a larger disk",
        )


def download_lock_busy(final: Path) -> Callable[[str], LockedError]:
    """The error a download's lock raises when its wait runs out."""
    return lambda owner: LockedError(
        f"{final} is being downloaded by {owner}",
        "wait for it to finish, or raise --lock-timeout to wait longer",
    )
