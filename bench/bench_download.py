#!/usr/bin/env python3
"""Download benchmark: `xtask download-model` against curl, huggingface_hub and aria2c.

Everything runs on 127.0.0.1 against a real nginx (``testing/servers/nginx.py``) that imitates
the Hugging Face resolve endpoint for one random file.  Each peer runs as a child process,
timed from spawn to exit, with its peak RSS read by ``wait4`` in a small launcher.

Scenarios (see bench/README.md for the targets and why they are what they are):

A. unlimited loopback, ``--size-mib`` file: xtask vs ``curl && sha256sum`` vs
   ``huggingface_hub.hf_hub_download``.
B. per-connection rate limit (nginx ``limit_rate`` on ``/limited/``), ``--limited-size-mib``
   file: ``xtask --connections 8`` vs single-stream curl vs ``aria2c -x8 -s8``.
C. peak RSS of every peer in A and B; xtask must stay small whatever the file size.

A benchmark is not a test: a missed target is reported as MISS and the exit status stays 0.
Non-zero means the benchmark itself broke (a peer failed or produced wrong bytes: 1; a required
tool is missing: 2).

Usage::

    PYTHONPATH=testing python bench/bench_download.py [--size-mib 1024] [--rate 8m] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from servers.nginx import NginxServer, nginx_available
except ImportError:  # not run the documented way
    print(
        "error: the local servers are not importable: run from the checkout with "
        "PYTHONPATH=testing (bench/README.md)",
        file=sys.stderr,
    )
    sys.exit(2)

REPO_ROOT = Path(__file__).resolve().parent.parent

MIB = 1 << 20
MB = 1_000_000
BLOCK = 64 * MIB
REPO_ID = "org/model"
LIMITED_REPO_ID = "org/model-limited"
FILENAME = "model.gguf"
LIMITED_CONNECTIONS = 8

XTASK, CURL_SHA, HF_HUB, CURL, ARIA2 = "xtask", "curl+sha256sum", "hf_hub", "curl", "aria2c"

# Proxies are dropped so every byte stays on 127.0.0.1; HF_* so no token, cache or endpoint of
# the machine leaks into a run (xtask would reuse a cached blob, hf_hub would send a token).
_DROPPED_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_")
_DROPPED_ENV = frozenset(
    {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}
    | {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY", "NO_PROXY"}
)


@functools.cache
def gnu_time() -> str | None:
    """GNU time's path, if installed (the RSS launcher of choice)."""
    path = shutil.which("time") or "/usr/bin/time"
    try:
        probe = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return path if "GNU" in probe.stdout + probe.stderr else None


# Fallback for `rss_launcher`: fork (a copy of this small interpreter), exec, wait4.
_RSS_RUNNER = """\
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""

# Run by `sys.executable -c` so that hf_hub pays interpreter start-up and imports like xtask.
_HF_SNIPPET = """\
import sys
from huggingface_hub import hf_hub_download
print(hf_hub_download(repo_id=sys.argv[1], filename=sys.argv[2], cache_dir=sys.argv[3]))
"""


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hosted:
    """One file served by nginx, Hugging Face style."""

    repo_id: str
    path: Path
    size: int
    sha256: str
    commit: str

    @property
    def url_path(self) -> str:
        """`/org/model/resolve/main/model.gguf`."""
        return f"/{self.repo_id}/resolve/main/{FILENAME}"

    def hf_headers(self) -> dict[str, str]:
        """What huggingface_hub's HEAD needs: commit, ETag (quoted) and size."""
        quoted = f'"{self.sha256}"'
        return {
            "X-Repo-Commit": self.commit,
            "ETag": quoted,
            "X-Linked-Etag": quoted,
            "X-Linked-Size": str(self.size),
        }


@dataclass(frozen=True)
class Peer:
    """A downloader: how to run it into a fresh directory and where its file lands."""

    name: str
    argv: Callable[[Path], list[str]]
    output: Callable[[Path], Path]
    env: dict[str, str]


@dataclass
class Run:
    """One measured execution of a peer."""

    peer: str
    repeat: int  # -1 for a warm-up round (not counted)
    wall_s: float
    max_rss_kib: int
    returncode: int
    size_ok: bool
    load_1m: float  # 1-minute load average just before the run
    other_cpu_s: float | None  # CPU that neither the peer nor nginx used meanwhile (see CpuMeter)
    sha256_ok: bool | None = None  # checked once per peer, outside the timing

    @property
    def contended(self) -> bool:
        """Something else used more than 10% of a core on average during the run."""
        return self.other_cpu_s is not None and self.other_cpu_s > 0.1 * self.wall_s

    @property
    def ok(self) -> bool:
        """Exited 0 with a file of the right size (and hash, where checked)."""
        return self.returncode == 0 and self.size_ok and self.sha256_ok is not False

    def to_json(self) -> dict[str, Any]:
        """Plain values for --json."""
        return {
            "repeat": self.repeat,
            "wall_s": round(self.wall_s, 4),
            "max_rss_mb": round(self.max_rss_kib * 1024 / MB, 2),
            "returncode": self.returncode,
            "size_ok": self.size_ok,
            "sha256_ok": self.sha256_ok,
            "load_1m_before": round(self.load_1m, 2),
            "other_cpu_s": None if self.other_cpu_s is None else round(self.other_cpu_s, 2),
            "contended": self.contended,
        }


@dataclass
class PeerStats:
    """Every run of one peer in one scenario."""

    name: str
    command: str
    runs: list[Run] = field(default_factory=list)

    @property
    def timed(self) -> list[Run]:
        """Counted runs (warm-ups excluded)."""
        return [r for r in self.runs if r.repeat >= 0]

    @property
    def ok(self) -> bool:
        """Every run succeeded."""
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def median_s(self) -> float | None:
        """Median wall time of the counted runs, None if any failed."""
        timed = self.timed
        if not timed or not self.ok:
            return None
        return statistics.median(r.wall_s for r in timed)

    @property
    def peak_rss_mb(self) -> float | None:
        """Largest peak RSS over all runs (warm-ups included), MB = 10^6 bytes."""
        if not self.runs:
            return None
        return max(r.max_rss_kib for r in self.runs) * 1024 / MB

    def mb_per_s(self, size: int) -> float | None:
        """Throughput from the median time, MB = 10^6 bytes."""
        median = self.median_s
        return size / MB / median if median else None

    def to_json(self, size: int) -> dict[str, Any]:
        """Plain values for --json."""
        median, rate, rss = self.median_s, self.mb_per_s(size), self.peak_rss_mb
        sha_checks = [r.sha256_ok for r in self.runs if r.sha256_ok is not None]
        return {
            "command": self.command,
            "ok": self.ok,
            "median_s": None if median is None else round(median, 4),
            "mb_per_s": None if rate is None else round(rate, 1),
            "peak_rss_mb": None if rss is None else round(rss, 2),
            "sha256_verified": all(sha_checks) if sha_checks else None,
            "runs": [r.to_json() for r in self.runs],
        }


@dataclass
class Scenario:
    """One scenario's file, peers and results."""

    key: str
    title: str
    hosted: Hosted
    url: str
    stats: dict[str, PeerStats] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def median(self, peer: str) -> float | None:
        """Median wall time of `peer`, None if it was skipped or broke."""
        stats = self.stats.get(peer)
        return stats.median_s if stats else None

    def to_json(self) -> dict[str, Any]:
        """Plain values for --json."""
        return {
            "title": self.title,
            "file_bytes": self.hosted.size,
            "sha256": self.hosted.sha256,
            "url": self.url,
            "peers": {name: s.to_json(self.hosted.size) for name, s in self.stats.items()},
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Target:
    """A ratio (or size) and the bound it should meet."""

    name: str
    value: float | None
    op: str  # "<=", "<", ">=", or "info" for a figure without a target
    bound: float = 0.0
    unit: str = ""

    @property
    def passed(self) -> bool | None:
        """True/False against the bound; None when unmeasured or informational."""
        if self.value is None or self.op == "info":
            return None
        if self.op == "<=":
            return self.value <= self.bound
        if self.op == "<":
            return self.value < self.bound
        return self.value >= self.bound

    @property
    def verdict(self) -> str:
        """PASS, MISS, info, or n/a."""
        if self.op == "info":
            return "info"
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]

    @property
    def goal(self) -> str:
        """`<= 0.8`, `< 100 MB`, or `-` for an informational figure."""
        if self.op == "info":
            return "-"
        return f"{self.op} {self.bound:g}" + (f" {self.unit}" if self.unit else "")

    def to_json(self) -> dict[str, Any]:
        """Plain values for --json."""
        return {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 4),
            "op": self.op,
            "target": None if self.op == "info" else self.bound,
            "unit": self.unit,
            "verdict": self.verdict,
        }


class CpuMeter:
    """How much CPU the rest of the machine used while a peer ran.

    other = system-wide user+nice+system time (/proc/stat) minus the CPU of the benchmark's
    own processes: waited-for children (the peer, via RUSAGE_CHILDREN), this process, and
    nginx (/proc/<pid>/stat).  Kernel threads working for the run (writeback) count as
    "other", so a quiet machine shows a small positive figure, not zero; another test suite
    running beside the benchmark shows up as seconds.  None where /proc is unavailable.
    """

    def __init__(self, nginx_pids: Sequence[int] = ()) -> None:
        self.nginx_pids = list(nginx_pids)
        self._tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def _busy_s(self) -> float | None:
        try:
            fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
        except OSError:
            return None
        user, nice, system = (int(x) for x in fields[1:4])
        return (user + nice + system) / self._tick

    def _proc_s(self, pid: int) -> float:
        try:
            text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        except OSError:
            return 0.0
        rest = text.rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / self._tick  # utime, stime

    def _own_s(self) -> float:
        own = 0.0
        for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF):
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        return own + sum(self._proc_s(pid) for pid in self.nginx_pids)

    def snapshot(self) -> tuple[float | None, float]:
        """(system busy seconds, own seconds) now."""
        return self._busy_s(), self._own_s()

    def other_since(self, before: tuple[float | None, float]) -> float | None:
        """CPU seconds used by others since `before`."""
        busy0, own0 = before
        busy1, own1 = self.snapshot()
        if busy0 is None or busy1 is None:
            return None
        return max(0.0, (busy1 - busy0) - (own1 - own0))


def nginx_pids(pid_file: Path) -> list[int]:
    """nginx's master (from its pid file) and its workers (children in /proc)."""
    try:
        master = int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return []
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if rest[1] == str(master):  # field 4: ppid
            pids.append(int(stat.parent.name))
    return pids


# -- helpers ----------------------------------------------------------------------------------


def make_random_file(path: Path, size: int) -> str:
    """Write `size` random bytes in 64 MiB blocks; return their sha256 (hex)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    remaining = size
    with path.open("wb") as handle:
        while remaining:
            block = os.urandom(min(BLOCK, remaining))
            handle.write(block)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def host_file(root: Path, repo_id: str, size: int) -> Hosted:
    """Create `<root>/<repo_id>/resolve/main/model.gguf` with `size` random bytes."""
    path = root / repo_id / "resolve" / "main" / FILENAME
    sha = make_random_file(path, size)
    commit = hashlib.sha1(f"{repo_id}@{sha}".encode()).hexdigest()
    return Hosted(repo_id=repo_id, path=path, size=size, sha256=sha, commit=commit)


def base_env(work: Path, peer: str) -> dict[str, str]:
    """The environment every peer gets: no proxies, no HF settings, an empty HF_HOME.

    Python peers share a bytecode cache in the scratch dir (PYTHONPYCACHEPREFIX), filled by
    `prime_bytecode`, so no run pays for compiling modules, even where the environment sets
    PYTHONDONTWRITEBYTECODE or the checkout has no __pycache__; nothing is written to the repo.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED_ENV
        and not k.startswith(_DROPPED_ENV_PREFIXES)
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["HF_HOME"] = str(work / f"hf-home-{peer}")
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def prime_bytecode(work: Path) -> None:
    """Import both Python peers once, untimed, so their bytecode is cached for every run."""
    env = base_env(work, "prime")
    subprocess.run(
        [*xtask_argv(), "download-model", "--help"],
        env=env,
        stdout=subprocess.DEVNULL,
        check=False,
    )
    if hf_hub_version() is not None:
        snippet = "import huggingface_hub.file_download"
        subprocess.run([sys.executable, "-c", snippet], env=env, check=False)


def xtask_argv() -> list[str]:
    """The installed `xtask` entry point next to this interpreter (no pyenv shim), or -m."""
    script = Path(sys.executable).parent / "xtask"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "bitnet_xtask"]


def rss_launcher(rss_file: Path) -> list[str]:
    """A small parent that runs the peer and writes its peak RSS (KiB) to `rss_file`.

    Measuring from this (large) Python process would be wrong: on Linux a child's ru_maxrss
    starts from its parent's RSS at fork (or, with vfork, from the parent's high-water mark at
    exec), so every peer would report at least the benchmark's own size.  GNU time is a tiny
    C program, so the floor it adds is ~1-2 MB; without it, a bare Python runner that forks
    (not vforks) adds ~7 MB.
    """
    if (timer := gnu_time()) is not None:
        return [timer, "-f", "%M", "-o", str(rss_file)]
    return [sys.executable, "-S", "-c", _RSS_RUNNER, str(rss_file)]


def run_measured(argv: Sequence[str], env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """Run `argv` to completion; return (wall seconds, peak RSS KiB, exit code).

    The RSS comes from wait4 in the launcher (see `rss_launcher`): on Linux its ru_maxrss is
    the largest RSS of the child and of every descendant it waited for, so
    ``sh -c 'curl && sha256sum'`` reports the bigger of the two, not their sum.  Wall time is
    taken here, from spawn to exit, launcher included (the same ~ms for every peer).
    """
    rss_file = log.with_suffix(".rss")
    rss_file.unlink(missing_ok=True)
    with log.open("wb") as out:
        start = time.perf_counter()
        done = subprocess.run(
            [*rss_launcher(rss_file), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - start
    lines = rss_file.read_text(encoding="utf-8").split() if rss_file.is_file() else []
    rss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return wall, rss, done.returncode


def clear_dir(path: Path) -> None:
    """Delete a run's outputs and flush dirty pages, so the next run starts from the same state."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def tool_version(argv: Sequence[str]) -> str | None:
    """First line of a tool's version output, or None."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def hf_hub_version() -> str | None:
    """Installed huggingface_hub version, or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("huggingface_hub")
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """`<commit>` of the checkout, with `+dirty` when src/ has local changes."""
    rev = tool_version(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    if rev is None:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", "src"], check=False
    ).returncode
    return rev + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "network": "loopback (127.0.0.1)",
    }


def versions(nginx: str | None, work: Path) -> dict[str, str | None]:
    """Versions of every peer and the server."""
    snippet = "import bitnet_xtask; print(bitnet_xtask.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        env=base_env(work, "xtask"),
        capture_output=True,
        text=True,
        check=False,
    )
    module = done.stdout.strip() or None
    in_checkout = module is not None and Path(module).resolve().is_relative_to(REPO_ROOT)
    return {
        "bitnet-xtask": git_revision() if in_checkout else "not from this checkout",
        "bitnet-xtask module": module,
        "huggingface_hub": hf_hub_version(),
        "curl": tool_version(["curl", "--version"]),
        "aria2c": tool_version(["aria2c", "--version"]),
        "nginx": tool_version([nginx, "-v"]) if nginx else None,
        "sha256sum": tool_version(["sha256sum", "--version"]),
    }


# -- peers ------------------------------------------------------------------------------------


def curl_peer(url: str, work: Path) -> Peer:
    """Plain single-stream curl into a file, no hashing."""
    return Peer(
        CURL,
        lambda d: ["curl", "-sf", "-o", str(d / FILENAME), url],
        lambda d: d / FILENAME,
        base_env(work, "curl"),
    )


def xtask_peer(base_url: str, hosted: Hosted, env: dict[str, str], *extra: str) -> Peer:
    """`xtask download-model --sha256` of the hosted file, plus `extra` flags."""
    return Peer(
        XTASK,
        lambda d: [
            *xtask_argv(),
            "download-model",
            "--base-url",
            base_url,
            "--id",
            hosted.repo_id,
            "--file",
            FILENAME,
            "--out",
            str(d),
            "--sha256",
            hosted.sha256,
            "--no-progress",
            *extra,
        ],
        lambda d: d / hosted.repo_id.replace("/", "-") / FILENAME,
        env,
    )


def scenario_a_peers(
    hosted: Hosted, base_url: str, work: Path
) -> tuple[list[Peer], dict[str, str]]:
    """Unlimited: xtask (default connections) vs curl && sha256sum vs hf_hub_download.

    Plain curl (no hash) runs too, as context for the table; it has no target.
    """
    url = base_url + hosted.url_path
    xtask_env = base_env(work, "xtask")
    peers = [
        xtask_peer(base_url, hosted, xtask_env),
        Peer(
            CURL_SHA,
            lambda d: [
                "sh",
                "-c",
                f"curl -sf -o {shlex.quote(str(d / FILENAME))} {shlex.quote(url)}"
                f" && sha256sum {shlex.quote(str(d / FILENAME))}",
            ],
            lambda d: d / FILENAME,
            base_env(work, "curl"),
        ),
    ]
    skipped: dict[str, str] = {}
    if hf_hub_version() is None:
        skipped[HF_HUB] = "huggingface_hub is not installed (pip install huggingface_hub)"
    else:
        hf_env = base_env(work, "hf")
        hf_env["HF_ENDPOINT"] = base_url
        hf_env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # xtask runs with --no-progress, curl -s
        repo_dir = "models--" + hosted.repo_id.replace("/", "--")
        peers.append(
            Peer(
                HF_HUB,
                lambda d: [sys.executable, "-c", _HF_SNIPPET, hosted.repo_id, FILENAME, str(d)],
                lambda d: d / repo_dir / "snapshots" / hosted.commit / FILENAME,
                hf_env,
            )
        )
    # Context, no target: the transfer alone, to show what the hashing peers pay for.
    peers.append(curl_peer(url, work))
    return peers, skipped


def scenario_b_peers(
    hosted: Hosted, base_url: str, work: Path
) -> tuple[list[Peer], dict[str, str]]:
    """Rate-limited per connection: xtask --connections 8 vs curl vs aria2c -x8 -s8."""
    limited_base = base_url + "/limited"
    url = limited_base + hosted.url_path
    peers = [
        xtask_peer(
            limited_base,
            hosted,
            base_env(work, "xtask"),
            "--connections",
            str(LIMITED_CONNECTIONS),
        ),
        curl_peer(url, work),
    ]
    skipped: dict[str, str] = {}
    if shutil.which("aria2c") is None:
        skipped[ARIA2] = "aria2c is not installed (apt-get install aria2)"
    else:
        n = str(LIMITED_CONNECTIONS)
        peers.append(
            Peer(
                ARIA2,
                lambda d: [
                    "aria2c",
                    "--no-conf",
                    f"-x{n}",
                    f"-s{n}",
                    "-k1M",
                    "--file-allocation=none",
                    "--allow-overwrite=true",
                    "-d",
                    str(d),
                    "-o",
                    FILENAME,
                    url,
                ],
                lambda d: d / FILENAME,
                base_env(work, "aria2"),
            )
        )
    return peers, skipped


# -- running ----------------------------------------------------------------------------------


def run_peer(peer: Peer, scenario: Scenario, repeat: int, work: Path, meter: CpuMeter) -> Run:
    """Run one peer into a fresh directory, check its output, then delete it."""
    stats = scenario.stats[peer.name]
    out_dir = work / "out" / f"{scenario.key}-{peer.name}"
    clear_dir(out_dir)
    out_dir.mkdir(parents=True)
    log = work / "logs" / f"{scenario.key}-{peer.name}-{repeat}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = peer.argv(out_dir)
    if not stats.command:
        stats.command = shlex.join(argv)
    load = os.getloadavg()[0]
    before = meter.snapshot()
    wall, rss, code = run_measured(argv, peer.env, log)
    other = meter.other_since(before)
    output = peer.output(out_dir)
    size_ok = output.is_file() and output.stat().st_size == scenario.hosted.size
    run = Run(peer.name, repeat, wall, rss, code, size_ok, load, other)
    if code == 0 and size_ok and not any(r.sha256_ok is not None for r in stats.runs):
        run.sha256_ok = sha256_of(output) == scenario.hosted.sha256  # outside the timing
    stats.runs.append(run)
    label = "warm-up" if repeat < 0 else f"run {repeat + 1}"
    check = {True: ", sha256 ok", False: ", SHA256 WRONG", None: ""}[run.sha256_ok]
    status = "ok" if run.ok else f"FAILED (exit {code}, size ok: {size_ok})"
    others = "" if other is None else f"  other CPU {other:5.2f} s"
    print(
        f"  [{scenario.key}] {peer.name:<15} {label:<8} {wall:8.2f} s "
        f"{rss * 1024 / MB:8.1f} MB{others}  {status}{check}",
        flush=True,
    )
    if not run.ok:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        print(f"    log {log}:\n" + "\n".join("    | " + x for x in tail.splitlines()))
    clear_dir(out_dir)
    return run


def run_scenario(
    scenario: Scenario, peers: list[Peer], repeat: int, warmup: int, work: Path, meter: CpuMeter
) -> None:
    """Warm-up rounds, then `repeat` counted rounds in alternating order."""
    for peer in peers:
        scenario.stats[peer.name] = PeerStats(peer.name, "")
    for name, why in scenario.skipped.items():
        print(f"  [{scenario.key}] {name}: skipped ({why})")
    for _ in range(warmup):
        for peer in peers:
            run_peer(peer, scenario, -1, work, meter)
    for i in range(repeat):
        for peer in peers if i % 2 == 0 else list(reversed(peers)):
            run_peer(peer, scenario, i, work, meter)


# -- report -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(scenario: Scenario) -> None:
    """peer | median wall s | MB/s | peak RSS MB | every counted run."""
    size = scenario.hosted.size
    print(f"\n{scenario.key}. {scenario.title}")
    print(f"   file {size / MIB:.0f} MiB, {scenario.url}")
    header = f"   {'peer':<16} {'median s':>9} {'MB/s':>8} {'peak RSS MB':>12}  runs (s)"
    print(header)
    print("   " + "-" * (len(header) - 3))
    for stats in scenario.stats.values():
        runs = " ".join(f"{r.wall_s:.2f}" for r in stats.timed)
        broken = "" if stats.ok else "  BROKEN"
        print(
            f"   {stats.name:<16} {_fmt(stats.median_s, '9.2f'):>9} "
            f"{_fmt(stats.mb_per_s(size), '8.1f'):>8} {_fmt(stats.peak_rss_mb, '12.1f'):>12}"
            f"  {runs}{broken}"
        )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None if either is missing."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def targets(scenarios: dict[str, Scenario]) -> list[Target]:
    """The ratios of bench/README.md, computed from the medians."""
    out: list[Target] = []
    if a := scenarios.get("A"):
        xtask = a.median(XTASK)
        out += [
            Target(
                "A  xtask / (curl && sha256sum)  time", ratio(xtask, a.median(CURL_SHA)), "<=", 0.8
            ),
            Target("A  xtask / hf_hub_download  time", ratio(xtask, a.median(HF_HUB)), "<", 1.0),
            Target("A  xtask / curl (no hash)  time", ratio(xtask, a.median(CURL)), "info"),
        ]
    if b := scenarios.get("B"):
        xtask = b.median(XTASK)
        out += [
            Target("B  curl / xtask  (throughput x)", ratio(b.median(CURL), xtask), ">=", 6.0),
            Target("B  aria2c / xtask  (throughput x)", ratio(b.median(ARIA2), xtask), ">=", 0.9),
        ]
    rss = [s.stats[XTASK].peak_rss_mb for s in scenarios.values() if XTASK in s.stats]
    known = [r for r in rss if r is not None]
    out.append(
        Target("C  xtask peak RSS (all runs)", max(known) if known else None, "<", 100, "MB")
    )
    return out


def print_targets(results: list[Target]) -> None:
    """One line per target: value, bound, PASS/MISS."""
    print("\nTargets")
    for t in results:
        value = _fmt(t.value, ".2f") + (f" {t.unit}" if t.unit else "")
        print(f"   {t.name:<38} {value:>9}   {t.goal:<9} {t.verdict}")


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="scenario A file size")
    parser.add_argument(
        "--limited-size-mib", type=int, default=256, help="scenario B file size (default 256)"
    )
    parser.add_argument("--rate", default="8m", help="nginx limit_rate per connection for B")
    parser.add_argument("--repeat", type=int, default=3, help="counted runs per peer")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds before A")
    parser.add_argument(
        "--scenarios", default="AB", help="which of A and B to run (C comes with them)"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="parent of the scratch directory (default: the system temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.limited_size_mib < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("sizes and --repeat must be >= 1, --warmup >= 0")
    if not set(args.scenarios.upper()) <= {"A", "B"} or not args.scenarios:
        parser.error("--scenarios takes A, B or AB")
    return args


def missing_tools(wanted: set[str], nginx: str | None) -> list[str]:
    """The required tools this machine lacks (exit 2)."""
    missing = [name for name, ok in (("nginx", nginx), ("curl", shutil.which("curl"))) if not ok]
    if "A" in wanted and not shutil.which("sha256sum"):
        missing.append("sha256sum")
    return missing


@dataclass(frozen=True)
class Setting:
    """What a run was measured against, printed first and written to --json."""

    load_start: tuple[float, float, float]
    tools: dict[str, str | None]
    floor_kib: int


def measure_setting(nginx: str | None, work: Path) -> Setting:
    """Load, versions and the RSS launcher's own floor; bytecode primed for every peer."""
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} (1 min), {load_start[1]:.2f} (5 min)")
    if load_start[0] > 0.5:
        print("warning: the machine is busy; timings will be noisy (see load_1m_before)")
    prime_bytecode(work)
    tools = versions(nginx, work)
    print(
        f"xtask: {shlex.join(xtask_argv())} (bitnet_xtask {tools['bitnet-xtask']}, "
        f"from {tools['bitnet-xtask module']})"
    )
    _, floor_kib, _ = run_measured(["true"], dict(os.environ), work / "rss-floor.log")
    launcher = "GNU time" if gnu_time() else "a Python fork runner"
    print(f"peak RSS via {launcher}; `true` measures {floor_kib * 1024 / MB:.1f} MB")
    return Setting(load_start, tools, floor_kib)


def host_files(root: Path, wanted: set[str], args: argparse.Namespace) -> dict[str, Hosted]:
    """The random file of each wanted scenario, flushed to disk before any timing."""
    t0 = time.perf_counter()
    sizes = {"A": (REPO_ID, args.size_mib), "B": (LIMITED_REPO_ID, args.limited_size_mib)}
    hosted = {key: host_file(root, repo, mib * MIB) for key, (repo, mib) in sizes.items()
              if key in wanted}  # fmt: skip
    os.sync()
    print(
        f"generated {sum(h.size for h in hosted.values()) / MIB:.0f} MiB of random data "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return hosted


def run_scenarios(
    args: argparse.Namespace, hosted: dict[str, Hosted], root: Path, work: Path
) -> dict[str, Scenario]:
    """A and B (those hosted) against one nginx, every peer in its own process."""
    headers = {h.url_path: h.hf_headers() for h in hosted.values()}
    server = NginxServer(root, work / "nginx", rate_limit=args.rate, hf_headers=headers)
    scenarios: dict[str, Scenario] = {}
    with server:
        base_url: str = server.url
        meter = CpuMeter(nginx_pids(server.pid_path))
        print(f"nginx at {base_url}; every peer reads the same page-cache-hot source files")
        if h := hosted.get("A"):
            a = Scenario("A", "unlimited loopback", h, base_url + h.url_path)
            peers, a.skipped = scenario_a_peers(h, base_url, work)
            scenarios["A"] = a
            run_scenario(a, peers, args.repeat, args.warmup, work, meter)
        if h := hosted.get("B"):
            title = f"rate-limited to {args.rate}/s per connection"
            b = Scenario("B", title, h, base_url + "/limited" + h.url_path)
            peers, b.skipped = scenario_b_peers(h, base_url, work)
            scenarios["B"] = b
            run_scenario(b, peers, args.repeat, 0, work, meter)
    return scenarios


@dataclass(frozen=True)
class Outcome:
    """The targets, and what makes the figures doubtful or the run broken."""

    targets: list[Target]
    broken: list[str]
    contended: int


def report(scenarios: dict[str, Scenario]) -> Outcome:
    """Print the tables, the targets and any warnings."""
    for scenario in scenarios.values():
        print_table(scenario)
    results = targets(scenarios)
    print_targets(results)
    broken = [f"{s.key}/{p.name}" for s in scenarios.values() for p in s.stats.values() if not p.ok]
    counted = [r for s in scenarios.values() for p in s.stats.values() for r in p.timed]
    contended = [r for r in counted if r.contended]
    if contended:
        print(
            f"\nwarning: in {len(contended)} of {len(counted)} counted runs other processes "
            "used > 10% of a core (other CPU above); rerun on a quiet machine"
        )
    if broken:
        print(f"\nBROKEN (failed or wrong bytes): {', '.join(broken)}")
    return Outcome(results, broken, len(contended))


def write_json(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    started: dt.datetime,
    setting: Setting,
    scenarios: dict[str, Scenario],
    outcome: Outcome,
) -> None:
    """Every figure, as --json."""
    document = {
        "date": started.isoformat(timespec="seconds"),
        "argv": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "settings": {
            "size_mib": args.size_mib,
            "limited_size_mib": args.limited_size_mib,
            "rate": args.rate,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "limited_connections": LIMITED_CONNECTIONS,
        },
        "machine": machine_info(),
        "load_avg_start": [round(x, 2) for x in setting.load_start],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "rss_launcher": "GNU time" if gnu_time() else "python fork runner",
        "rss_floor_mb": round(setting.floor_kib * 1024 / MB, 2),
        "versions": setting.tools,
        "scenarios": {k: s.to_json() for k, s in scenarios.items()},
        "targets": [t.to_json() for t in outcome.targets],
        "broken": outcome.broken,
        "contended_runs": outcome.contended,
        "units": "MB = 10^6 bytes; MiB = 2^20 bytes; times are wall-clock seconds",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 unless something broke (missed targets are not breakage)."""
    args = parse_args(argv)
    wanted = set(args.scenarios.upper())
    nginx = nginx_available()
    if missing := missing_tools(wanted, nginx):
        print(f"error: required tools not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="xtask-bench-", dir=args.workdir))
    started = dt.datetime.now(dt.timezone.utc)
    try:
        print(f"scratch: {work}")
        setting = measure_setting(nginx, work)
        hosted = host_files(work / "root", wanted, args)
        scenarios = run_scenarios(args, hosted, work / "root", work)
        outcome = report(scenarios)
        if args.json:
            write_json(args, argv, started, setting, scenarios, outcome)
        return 1 if outcome.broken else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
