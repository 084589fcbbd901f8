"""download-model against a hostile or broken server, and hostile arguments (issue 10).

The protocol side of the attack: sizes a server makes up (`X-Linked-Size` of 10^15, 10^20,
`abc`, `-5`, `0`), redirects that can't be followed (`http://[::1`, port 99999, `file://`,
a host name that does not exist), ranged answers mangled on every request, credentials in
`--base-url`, and revisions that are no git ref. Every test runs the real CLI in a
subprocess against the project's HF-compatible server on 127.0.0.1 (testing/servers), and
checks what a user sees: the documented exit code, a message that says what happened, no
traceback, no retry of what cannot succeed, and memory that stays bounded whatever the
server claims (measured: the child's peak RSS from `wait4`, under an address-space limit).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import REPO, Run, Xtask, payload, sha256
from servers.hf_server import Faults, HFTestServer

from bitnet_xtask.download import download_url
from bitnet_xtask.download.hub import MAX_FILE_SIZE
from bitnet_xtask.download.transfer import MAX_PIECES, plan_chunks
from bitnet_xtask.errors import UsageError

pytestmark = pytest.mark.timeout(120)

NAME = "model.gguf"
MIB = 1 << 20
ADDRESS_SPACE = 1 << 30  # the child's RLIMIT_AS: the old code needed ~3 GB for 10^15
PEAK_RSS = 256 * MIB  # what a download may cost, whatever the size a server claims
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: a request that escapes goes nowhere


# Forks the command with the limit set (no preexec_fn: unsafe with the server's threads)
# and reports its own peak RSS. Not this process's, nor a vforked child's: Linux carries
# a process's peak RSS across execve (exec_mmap), so a child spawned straight from the
# test process would report the test process's peak (hundreds of MB once a test has
# imported torch in it); a fork of this small wrapper starts from the wrapper's.
_LIMITED = """
import os, resource, signal, sys
limit, report, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    out.write(str(usage.ru_maxrss))
if os.WIFSIGNALED(status):
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: Sequence[str], env: dict[str, str], timeout: float = 60) -> tuple[Run, int]:
    """Run `argv` under an address-space limit; its result and its peak RSS in bytes
    (`wait4` of exactly the command, in the wrapper: see `_LIMITED`)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "maxrss"
        wrapped = [sys.executable, "-c", _LIMITED, str(ADDRESS_SPACE), str(report), *argv]
        pipe = subprocess.PIPE
        proc = subprocess.Popen(wrapped, env=env, stdout=pipe, stderr=pipe, text=True,
                                start_new_session=True)  # fmt: skip
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        try:
            out, err = proc.communicate()
        finally:
            timer.cancel()
        return Run(proc.returncode, out, err), int(report.read_text()) * 1024


def run_cli(argv: Sequence[str], env: dict[str, str]) -> Run:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def hub_resolves(hf: HFTestServer) -> int:
    return sum(1 for r in hf.requests if r.server == "hub" and "/resolve/" in r.path)


def cdn_gets(hf: HFTestServer) -> list[str]:
    return [
        r.headers.get("range", "") for r in hf.requests if r.server == "cdn" and r.method == "GET"
    ]


def assert_clean_failure(run: Run, code: int, *phrases: str) -> None:
    """The documented code, a message with `phrases`, an error event, no traceback."""
    assert run.code == code, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    for phrase in phrases:
        assert phrase in run.stderr, run.stderr
    assert run.events()[-1]["phase"] == "error"
    assert run.events()[-1]["code"] == code


def no_sidecars(xtask: Xtask) -> bool:
    directory = xtask.target(NAME).parent
    return not directory.exists() or not any(directory.iterdir())


@pytest.fixture
def served(hf: HFTestServer) -> bytes:
    data = payload(300_000, seed=5)
    hf.add_file(REPO, NAME, data)
    return data


# -- #5: sizes from the server are checked before anything is built from them -------------


@pytest.mark.parametrize(
    ("claimed", "code", "phrase"),
    [
        (10**15, 10, "not enough disk space"),  # plausible: the disk check says no
        (MAX_FILE_SIZE, 10, "not enough disk space"),  # the largest size believed
        (MAX_FILE_SIZE + 1, 14, "is not a size in bytes"),
        (10**20, 14, "is not a size in bytes"),  # grew until the kernel killed it
    ],
    ids=["1e15", "2^50", "2^50+1", "1e20"],
)
def test_a_huge_linked_size_costs_no_memory_and_writes_nothing(
    hf: HFTestServer, xtask: Xtask, served: bytes, claimed: int, code: int, phrase: str
) -> None:
    hf.set_faults(REPO, NAME, Faults(hub_headers={"X-Linked-Size": str(claimed)}))
    argv = xtask.argv(xtask.download_args(hf.hub_url, "--file", NAME, "--connections", "64"))
    run, peak = run_measured(argv, xtask.env())
    assert_clean_failure(run, code, phrase)
    assert peak < PEAK_RSS, f"peak RSS {peak / MIB:.0f} MiB"
    assert cdn_gets(hf) == []  # refused before the first byte
    assert no_sidecars(xtask)


def test_the_chunk_map_is_bounded_for_any_size_the_server_may_claim() -> None:
    chunks = plan_chunks(MAX_FILE_SIZE, 64)
    assert len(chunks) <= MAX_PIECES
    assert chunks[0].start == 0 and chunks[-1].end == MAX_FILE_SIZE
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))


@pytest.mark.parametrize(
    "value", ["abc", "-5", "1e6", "+300000", "0x493e0", "1_000", "", "9" * 5000]
)
def test_a_linked_size_that_is_not_a_byte_count_is_a_protocol_error(
    hf: HFTestServer, xtask: Xtask, served: bytes, value: str
) -> None:
    hf.set_faults(REPO, NAME, Faults(hub_headers={"X-Linked-Size": value}))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert_clean_failure(run, 14, "protocol error: X-Linked-Size", "is not a size in bytes")
    assert hub_resolves(hf) == 1  # a broken server is not asked again
    assert no_sidecars(xtask)


@pytest.mark.parametrize("value", ["abc", "-5", str(10**20)])
def test_dry_run_reports_a_bad_size_as_the_download_would(
    hf: HFTestServer, xtask: Xtask, served: bytes, value: str
) -> None:
    hf.set_faults(REPO, NAME, Faults(hub_headers={"X-Linked-Size": value}))
    run = xtask.download(hf.hub_url, "--file", NAME, "--dry-run")
    assert_clean_failure(run, 14, "is not a size in bytes")


@pytest.mark.parametrize("claimed", [1000, 400_000])
def test_a_cdn_that_sends_another_size_than_the_hub_claimed_is_a_protocol_error(
    hf: HFTestServer, xtask: Xtask, served: bytes, claimed: int
) -> None:
    """Smaller: 1,000 bytes were kept and failed as a SHA-256 mismatch (exit 13, files
    removed). Larger: retried and restarted until it gave up."""
    hf.set_faults(REPO, NAME, Faults(hub_headers={"X-Linked-Size": str(claimed)}))
    run = xtask.download(hf.hub_url, "--file", NAME, "--retries", "1")
    assert_clean_failure(run, 14, f"said the file is {claimed:,} bytes, then sent 300,000")
    assert "SHA-256" not in run.stderr
    assert len(cdn_gets(hf)) == 1


# -- #24: zero and negative sizes -----------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "-300000"])
def test_a_zero_or_negative_linked_size_is_a_protocol_error_not_a_hash_mismatch(
    hf: HFTestServer, xtask: Xtask, served: bytes, value: str
) -> None:
    hf.set_faults(REPO, NAME, Faults(hub_headers={"X-Linked-Size": value}))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert_clean_failure(run, 14, "protocol error")
    assert "SHA-256 mismatch" not in run.stderr


@pytest.mark.parametrize("direct", [False, True], ids=["lfs-empty-sha", "plain-content-length-0"])
def test_a_genuinely_empty_file_still_downloads(
    hf: HFTestServer, xtask: Xtask, direct: bool
) -> None:
    """Size 0 is refused only when the advertised sha256 is some other content's."""
    hf.add_file(REPO, NAME, b"")
    hf.set_faults(REPO, NAME, Faults(no_linked_headers=direct))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == b""
    assert run.events()[-1]["bytes"] == 0


# -- #9: bad URLs, from the server (exit 14) or the user (exit 2) -----------------------------


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:99999/cdn/x", "Port out of range"),
        ("http://127.0.0.1:abc/cdn/x", "Port could not be cast"),
        ("https://:443/cdn/x", "no host name"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),  # #19: was retried as InvalidSchema
        ("gopher://127.0.0.1/x", "unsupported scheme 'gopher'"),
        # siblings: these reached http.client (an AssertionError) or urllib3 (an unwrapped
        # LocationParseError), both tracebacks
        ("http://a b/cdn/x", "invalid host name 'a b'"),
        ("http://\x01/cdn/x", "invalid host name"),
        (f"http://{'a' * 64}.example/cdn/x", "invalid host name"),
        ("http://a..b/cdn/x", "invalid host name 'a..b'"),
    ],
)
def test_a_redirect_that_cannot_be_followed_is_a_protocol_error_at_once(
    hf: HFTestServer, xtask: Xtask, served: bytes, location: str, problem: str
) -> None:
    hf.set_faults(REPO, NAME, Faults(redirect_to=location))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert_clean_failure(run, 14, "protocol error", "can't be followed", problem)
    assert "retry" not in run.phases()
    assert hub_resolves(hf) == 1


@pytest.mark.parametrize(
    ("base_url", "problem"),
    [
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://127.0.0.1:abc", "Port could not be cast"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:0", "port 0"),
        ("ftp://127.0.0.1", "unsupported scheme 'ftp'"),
        ("http://127.0.0.1:8080/?mirror=1", "a query or fragment"),
        ("127.0.0.1:8080", "unsupported scheme"),
        ("", "unsupported scheme ''"),  # was huggingface.co: an empty string is falsy
        ("http://a b", "invalid host name 'a b'"),
        ("http://a..b", "invalid host name 'a..b'"),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["download", "dry-run"])
def test_a_bad_base_url_is_a_usage_error(
    xtask: Xtask, base_url: str, problem: str, dry_run: bool
) -> None:
    # Whatever slips through goes to a dead proxy on 127.0.0.1, never to the internet.
    env = xtask.env(HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY)
    extra = ["--dry-run"] if dry_run else []
    run = xtask.download(base_url, "--file", NAME, "--retries", "0", *extra, env=env)
    assert_clean_failure(run, 2, "invalid --base-url", problem)


@pytest.mark.parametrize("url", ["http://[::1/x.tar.gz", "http://h:99999/x.tar.gz", "file:///x"])
def test_download_url_refuses_a_bad_url_with_a_usage_error(tmp_path: Path, url: str) -> None:
    """fetch-cpp's entry point: `urlsplit` raised ValueError on `http://[::1`."""
    with pytest.raises(UsageError, match="invalid URL"):
        download_url(url, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_bad_hf_endpoint_is_named_as_such(xtask: Xtask) -> None:
    run = xtask.run(
        "download-model", "--out", str(xtask.out), env=xtask.env(HF_ENDPOINT="http://h:99999")
    )
    assert run.code == 2, run.stderr
    assert "invalid $HF_ENDPOINT 'http://h:99999'" in run.stderr
    assert "Traceback" not in run.stderr


# -- #19: a host name that does not exist ---------------------------------------------------

NO_SUCH_HOST = "no-such-host.invalid"  # RFC 6761: .invalid never resolves


def files_only_resolver(tmp_path: Path, argv: Sequence[str]) -> list[str]:
    """`argv` in a private mount namespace where the resolver consults /etc/hosts only.

    The real glibc resolver then answers "Name or service not known" (EAI_NONAME) for a
    name not in /etc/hosts, and no DNS query leaves the machine.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give the CLI a files-only resolver")
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("hosts: files\n")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not permitted here: {probe.stderr.decode().strip()}")
    script = 'mount --bind "$0" /etc/nsswitch.conf && exec "$@"'
    return ["unshare", "-m", "--", "sh", "-c", script, str(nsswitch), *argv]


def test_a_redirect_to_a_name_that_does_not_resolve_says_so_and_is_not_retried(
    hf: HFTestServer, xtask: Xtask, served: bytes, tmp_path: Path
) -> None:
    hf.set_faults(REPO, NAME, Faults(redirect_to=f"http://{NO_SUCH_HOST}:8080/cdn/x"))
    argv = files_only_resolver(
        tmp_path, xtask.argv(xtask.download_args(hf.hub_url, "--file", NAME))
    )
    run = run_cli(argv, xtask.env())
    assert_clean_failure(
        run, 14, f"host name '{NO_SUCH_HOST}' does not resolve", "redirected from", "operator"
    )
    assert "connection failed or dropped" not in run.stderr
    assert "retry" not in run.phases()
    assert hub_resolves(hf) == 1


def test_a_base_url_whose_name_does_not_resolve_says_so_and_is_not_retried(
    xtask: Xtask, tmp_path: Path
) -> None:
    args = xtask.download_args(f"http://{NO_SUCH_HOST}", "--file", NAME, "--retries", "5")
    argv = files_only_resolver(tmp_path, xtask.argv(args))
    run = run_cli(argv, xtask.env())
    assert_clean_failure(run, 14, "does not resolve", "check --base-url")
    assert "retry" not in run.phases()


@contextlib.contextmanager
def untrusted_https(tmp_path: Path) -> Iterator[str]:
    """A real TLS server on 127.0.0.1 whose certificate no CA vouches for."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl(1) is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_an_untrusted_certificate_says_so_and_is_not_retried(xtask: Xtask, tmp_path: Path) -> None:
    """A sibling of #19: certificate verification fails the same way every time."""
    with untrusted_https(tmp_path) as base_url:
        run = xtask.download(base_url, "--file", NAME, "--retries", "5")
    assert_clean_failure(run, 14, "TLS certificate of 127.0.0.1 not trusted", "REQUESTS_CA_BUNDLE")
    assert "retry" not in run.phases()


# -- #16: credentials in --base-url never reach output or disk ------------------------------

USER, PASSWORD = "alice", "s3cret-pw"


def with_userinfo(url: str) -> str:
    return url.replace("://", f"://{USER}:{PASSWORD}@", 1)


def assert_no_credentials(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and f"{USER}:" not in text, text


def test_credentials_in_the_base_url_are_used_but_never_shown(
    hf: HFTestServer, xtask: Xtask, served: bytes
) -> None:
    base = with_userinfo(hf.hub_url)
    run = xtask.download(base, "--file", NAME, "--verbose")
    assert run.code == 0, run.stderr
    assert_no_credentials(run.stdout, run.stderr)
    assert run.events()[0]["url"] == f"http://***@{hf.hub_url[7:]}/{REPO}/resolve/main/{NAME}"
    hub = [r for r in hf.requests if r.server == "hub"]
    cdn = [r for r in hf.requests if r.server == "cdn"]
    assert all(r.headers.get("authorization", "").startswith("Basic ") for r in hub)
    assert cdn and all("authorization" not in r.headers for r in cdn)  # never to the CDN
    plan = xtask.download(base, "--file", NAME, "--dry-run")
    assert plan.code == 0, plan.stderr
    assert_no_credentials(plan.stdout, plan.stderr)


@pytest.mark.parametrize(
    "scenario", ["404", "connection-refused", "bad-port", "retries-exhausted", "dns"]
)
def test_credentials_never_appear_in_errors_retries_or_the_json_error_event(
    hf: HFTestServer, xtask: Xtask, served: bytes, scenario: str, tmp_path: Path
) -> None:
    if scenario == "404":
        run = xtask.download(with_userinfo(hf.hub_url), "--file", "missing.gguf")
        expected = 14
    elif scenario == "connection-refused":
        run = xtask.download(with_userinfo("http://127.0.0.1:1"), "--file", NAME, "--retries", "1")
        expected = 14
        assert "retry" in run.phases()
    elif scenario == "bad-port":
        run = xtask.download(with_userinfo("http://127.0.0.1:99999"), "--file", NAME)
        expected = 2
    elif scenario == "retries-exhausted":
        hf.set_faults(REPO, NAME, Faults(status_sequence=[(503, {})] * 3))
        run = xtask.download(with_userinfo(hf.hub_url), "--file", NAME, "--retries", "1")
        expected = 14
    else:
        args = xtask.download_args(with_userinfo(f"http://{NO_SUCH_HOST}"), "--file", NAME)
        argv = files_only_resolver(tmp_path, xtask.argv(args))
        run, expected = run_cli(argv, xtask.env()), 14
    assert_clean_failure(run, expected, "***@")
    assert_no_credentials(run.stdout, run.stderr)


def test_credentials_never_appear_in_warnings_or_the_resume_state(
    hf: HFTestServer, xtask: Xtask, served: bytes
) -> None:
    hf.set_faults(REPO, NAME, Faults(drop_at=[100_000]))
    failed = xtask.download(with_userinfo(hf.hub_url), "--file", NAME, "--retries", "0")
    assert failed.code == 14, failed.stderr
    assert_no_credentials(failed.stdout, failed.stderr)
    state = xtask.target(NAME + ".part.json").read_text()
    assert_no_credentials(state)
    resumed = xtask.download(with_userinfo(hf.hub_url), "--file", NAME)  # the state still fits
    assert resumed.code == 0, resumed.stderr
    assert resumed.events()[0]["resume"] is True
    # The hub is gone: the file on disk is used, with a warning that names the URL.
    offline = xtask.download(with_userinfo("http://127.0.0.1:1"), "--file", NAME, "--retries", "0")
    assert offline.code == 0, offline.stderr
    assert "warning: could not check for a newer version" in offline.stderr
    assert "***@127.0.0.1:1" in offline.stderr
    assert_no_credentials(offline.stdout, offline.stderr)


# -- #17: a server that mangles every ranged answer ----------------------------------------


@pytest.mark.parametrize("mangle", ["misaligned", "no-content-range"])
def test_mangled_ranged_answers_fall_back_to_one_stream(
    hf: HFTestServer, xtask: Xtask, mangle: str
) -> None:
    data = payload(24 * MIB, seed=17)
    hf.add_file(REPO, NAME, data)
    hf.set_faults(REPO, NAME, Faults(mangle_ranges=mangle))  # type: ignore[arg-type]
    run = xtask.download(hf.hub_url, "--file", NAME, "--connections", "4")
    assert run.code == 0, run.stderr
    assert xtask.target(NAME).read_bytes() == data
    restarts = [e for e in run.events() if e["phase"] == "restart"]
    assert len(restarts) == 1, run.stderr
    assert restarts[0]["connections"] == 1
    assert "falling back to one stream" in restarts[0]["msg"]
    assert "falling back to one stream" in run.stderr
    assert cdn_gets(hf)[-1] == ""  # one stream, one unranged GET
    starts = [e for e in run.events() if e["phase"] == "start"]
    assert [s["connections"] for s in starts] == [3, 1]  # 24 MiB: three 8 MiB pieces


# -- #21: --rev -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rev",
    [
        *("", " ", "a..b", "/main", "main/", "a//b", "a b", "x.lock", "@", "a@{1}", "v1."),
        *(".hidden", "a~1", "a^", "a:b", "a?", "a*", "a[0", "a\\b", "main\n"),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["download", "dry-run"])
def test_a_revision_that_is_no_git_ref_is_a_usage_error_before_any_request(
    hf: HFTestServer, xtask: Xtask, served: bytes, rev: str, dry_run: bool
) -> None:
    extra = ["--dry-run"] if dry_run else []
    run = xtask.download(hf.hub_url, "--file", NAME, "--rev", rev, *extra)
    assert_clean_failure(run, 2, "invalid --rev")
    assert hf.requests == []


def test_revisions_hugging_face_allows_still_reach_the_server(
    hf: HFTestServer, xtask: Xtask, served: bytes
) -> None:
    pr = xtask.download(hf.hub_url, "--file", NAME, "--rev", "refs/pr/1")
    assert_clean_failure(pr, 14, "404: revision not found", "check --rev")
    assert any("/resolve/refs%2Fpr%2F1/" in r.path for r in hf.requests)
    commit = xtask.download(hf.hub_url, "--file", NAME, "--rev", hf.commit)
    assert commit.code == 0, commit.stderr


# -- siblings: other numbers a server sends --------------------------------------------------


def test_a_retry_after_in_non_ascii_digits_is_ignored_not_a_traceback(
    hf: HFTestServer, xtask: Xtask, served: bytes
) -> None:
    """`"²".isdigit()` is True and `float("²")` raises: the header was a traceback."""
    hf.set_faults(REPO, NAME, Faults(status_sequence=[(429, {"Retry-After": "\u00b2"})]))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert "retry" in run.phases()


def test_a_content_range_with_a_5000_digit_total_restarts_instead_of_crashing(
    hf: HFTestServer, xtask: Xtask, served: bytes
) -> None:
    """int() refuses strings over 4,300 digits: a ValueError inside a stream thread."""
    header = f"bytes 100000-299999/{'9' * 5000}"
    hf.set_faults(REPO, NAME, Faults(drop_at=[100_000], body_headers={"Content-Range": header}))
    run = xtask.download(hf.hub_url, "--file", NAME)
    assert run.code == 0, run.stderr
    assert "206 without a valid Content-Range" in run.stderr
    assert xtask.target(NAME).read_bytes() == served
    assert sha256(served) == run.events()[-1]["sha256"]
