"""`python -m bitnet_xtask.cpp.update_pins`: move a pin in pins.json and recompute its hash.

pins.json is the one list of pins that Python (cpp/pins.py) and Nix (nix/pins.nix) read,
so a pin changes here and nowhere else, and its hash is computed, never typed:

- `sdist [REF] --version V`: the version's sdist from the package index's simple page
  (PEP 503: the link to `<name>-<V>.tar.gz` and its `#sha256=` fragment, which is the
  index's own hash of the file). The file is then downloaded and checked against that
  sha256 (the download fetch-cpp makes), its `subdir` must be in it, and the llama.cpp
  commit it vendors is read from its CHANGELOG.md unless `--upstream-rev` says it.
- `github REF --rev COMMIT`: GitHub's tarball of the commit, unpacked safely, and the NAR
  hash of the tree (what nixpkgs' fetchFromGitHub checks). A submodule is addressed by its
  path, e.g. `bitnet.cpp/3rdparty/llama.cpp`; a GitHub tarball does not record which
  commit a submodule is at, so moving a repository with submodules means moving each
  submodule too, to the commit `git ls-tree <rev> <path>` shows.

The new file is validated with `parse_pins` and replaces the old one atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urldefrag, urljoin

import requests

from bitnet_xtask.cpp.nar import nar_hash
from bitnet_xtask.cpp.pins import GITHUB, github_tarball, parse_pins
from bitnet_xtask.cpp.source import safe_extract
from bitnet_xtask.download import download_url
from bitnet_xtask.errors import ExitCode, NetworkError, UsageError, XtaskError
from bitnet_xtask.events import ConsoleReporter, Reporter
from bitnet_xtask.fs import atomic_write_text

PYPI_SIMPLE = "https://pypi.org/simple"
PINS_FILE = Path(__file__).with_name("pins.json")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256_FRAGMENT = re.compile(r"^sha256=([0-9a-f]{64})$")
_UPSTREAM = re.compile(r"([A-Za-z0-9][\w.-]*)/(llama\.cpp)@([0-9a-f]{7,40})\b")


def normalize(name: str) -> str:
    """A project name as PEP 503 compares it (`llama_cpp.Python` -> `llama-cpp-python`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class _Links(HTMLParser):
    """The `<a href>` targets of a simple-index page, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def find_sdist(index_url: str, package: str, version: str) -> tuple[str, str]:
    """The URL and the index's sha256 of `package`'s sdist of `version`."""
    page = f"{index_url.rstrip('/')}/{normalize(package)}/"
    try:
        response = requests.get(page, headers={"Accept": "text/html"}, timeout=60)
    except requests.RequestException as exc:
        raise NetworkError(
            f"cannot read {page}: {exc}", "check the network or --index-url"
        ) from None
    if response.status_code == 404:
        raise UsageError(f"{package} is not on the index {index_url}")
    if response.status_code != 200:
        raise NetworkError(f"{page} answered HTTP {response.status_code}")
    links = _Links()
    links.feed(response.text)
    for href in links.hrefs:
        url, fragment = urldefrag(urljoin(page, href))
        filename = PurePosixPath(url).name
        if not filename.endswith(".tar.gz"):
            continue
        name, _, file_version = filename.removesuffix(".tar.gz").rpartition("-")
        if normalize(name) != normalize(package) or file_version != version:
            continue
        if not (match := _SHA256_FRAGMENT.match(fragment)):
            raise UsageError(f"the index gives no sha256 for {filename}", f"its link is {href}")
        if not url.startswith("https://"):
            raise UsageError(f"the index links {filename} over plain http: {url}")
        return url, match.group(1)
    raise UsageError(
        f"{package} {version} has no sdist (.tar.gz) on {index_url}",
        f"the versions are listed at {page}",
    )


def upstream_from_changelog(text: str, version: str) -> tuple[str, str, str] | None:
    """(owner, repo, short commit) of the llama.cpp a llama-cpp-python release vendors:
    the first `owner/llama.cpp@commit` at or below the release's `## [version]` heading
    (a release that did not move llama.cpp vendors the one an older entry names)."""
    heading = re.search(rf"^##\s*\[{re.escape(version)}\]", text, flags=re.MULTILINE)
    if heading is None:
        return None
    match = _UPSTREAM.search(text, heading.end())
    return None if match is None else (match.group(1), match.group(2), match.group(3))


def _read_sdist(archive: Path, subdir: str, version: str) -> tuple[str, str, str] | None:
    """Check `subdir` is in the sdist and read the upstream commit from its changelog."""
    try:
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            top = PurePosixPath(names[0]).parts[0] if names else ""
            if not any(n == f"{top}/{subdir}" or n.startswith(f"{top}/{subdir}/") for n in names):
                raise UsageError(f"{archive.name} has no {subdir}/ directory")
            changelog_name = f"{top}/CHANGELOG.md"
            member = tar.extractfile(changelog_name) if changelog_name in names else None
            changelog = member.read().decode("utf-8", "replace") if member else ""
    except tarfile.TarError as exc:
        raise UsageError(f"{archive} is not a readable tar archive: {exc}") from None
    return upstream_from_changelog(changelog, version)


def update_sdist(
    document: dict[str, Any],
    ref: str,
    version: str,
    *,
    index_url: str = PYPI_SIMPLE,
    upstream_rev: str | None = None,
    reporter: Reporter | None = None,
) -> str:
    """Move the pypi-sdist pin `ref` to `version`; returns a one-line summary."""
    entry = _entry(document, ref)
    if entry.get("kind") != "pypi-sdist":
        raise UsageError(
            f"{ref} is a {entry.get('kind')} pin, not a pypi-sdist one", "use `github`"
        )
    url, sha256 = find_sdist(index_url, entry["package"], version)
    with tempfile.TemporaryDirectory(prefix="update-pins-") as tmp:
        archive = download_url(url, Path(tmp), sha256=sha256, reporter=reporter).path
        found = _read_sdist(archive, entry["subdir"], version)
    upstream = dict(entry.get("upstream", {}))
    if upstream_rev is not None:
        upstream["rev"] = upstream_rev
    elif found is not None:
        upstream.update(owner=found[0], repo=found[1], rev=found[2])
    else:
        raise UsageError(
            f"{entry['package']} {version}'s CHANGELOG.md names no llama.cpp commit",
            "give the commit it vendors with --upstream-rev",
        )
    old = entry.get("version")
    entry.update(version=version, url=url, sha256=sha256, upstream=upstream)
    moved = f"{upstream.get('owner')}/{upstream.get('repo')}@{upstream['rev']}"
    return f"{ref}: {entry['package']} {old} -> {version} (sha256 {sha256}, vendors {moved})"


def update_github(
    document: dict[str, Any],
    ref: str,
    rev: str,
    *,
    owner: str | None = None,
    repo: str | None = None,
    github_url: str = GITHUB,
    reporter: Reporter | None = None,
) -> str:
    """Move the github pin `ref` (or `ref/<submodule path>`) to commit `rev`, with the NAR
    hash of its tree; returns a one-line summary."""
    entry = _entry(document, ref)
    if entry.get("kind") != "github":
        raise UsageError(f"{ref} is a {entry.get('kind')} pin, not a github one", "use `sdist`")
    if not _COMMIT.match(rev):
        raise UsageError(
            f"--rev must be a full 40-hex commit, got {rev!r}",
            "pins name commits, not tags or branches: `git ls-remote <repo> <tag>` shows one",
        )
    owner, repo = owner or entry["owner"], repo or entry["repo"]
    url = github_tarball(owner, repo, rev, github_url)
    with tempfile.TemporaryDirectory(prefix="update-pins-") as tmp:
        archive = download_url(url, Path(tmp), filename=f"{repo}-{rev}.tar.gz", reporter=reporter)
        tree_hash = nar_hash(safe_extract(archive.path, Path(tmp) / "tree"))
    old = entry["rev"]
    entry.update(owner=owner, repo=repo, rev=rev, hash=tree_hash)
    summary = f"{ref}: {owner}/{repo} {old[:12]} -> {rev[:12]} (hash {tree_hash})"
    if entry.get("submodules"):
        paths = ", ".join(entry["submodules"])
        summary += (
            f"\nnote: {ref} has submodules ({paths}); move each to the commit {rev[:12]} "
            f"records (`git ls-tree {rev[:12]} <path>`) with `github {ref}/<path> --rev ...`"
        )
    return summary


def _entry(document: dict[str, Any], ref: str) -> dict[str, Any]:
    """The pin named `ref`: a reference, or `<reference>/<submodule path>`."""
    entries: dict[str, Any] = document.get("references", {})
    rest = ref
    while True:
        if rest in entries:
            found: dict[str, Any] = entries[rest]
            return found
        parent = next((k for k in entries if rest.startswith(f"{k}/")), None)
        if parent is None:
            known = ", ".join(_names(document.get("references", {})))
            raise UsageError(f"pins.json has no pin {ref!r}", f"the pins are: {known}")
        entries, rest = entries[parent].get("submodules", {}), rest[len(parent) + 1 :]


def _names(entries: dict[str, Any], prefix: str = "") -> list[str]:
    names = []
    for name, entry in entries.items():
        names.append(prefix + name)
        names += _names(entry.get("submodules", {}), f"{prefix}{name}/")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bitnet_xtask.cpp.update_pins",
        description="Move a pin in pins.json and recompute its hash (see the module docstring).",
    )
    parser.add_argument("--pins", type=Path, default=PINS_FILE, help="default: %(default)s")
    parser.add_argument("--dry-run", action="store_true", help="print the new file, change nothing")
    commands = parser.add_subparsers(dest="command", required=True)
    sdist = commands.add_parser("sdist", help="a new version of a pypi-sdist pin")
    sdist.add_argument("ref", nargs="?", default="llama.cpp")
    sdist.add_argument("--version", required=True)
    sdist.add_argument("--index-url", default=PYPI_SIMPLE, help="a PEP 503 simple index")
    sdist.add_argument(
        "--upstream-rev", help="the llama.cpp commit it vendors (default: CHANGELOG.md's)"
    )
    github = commands.add_parser("github", help="a new commit of a github pin or submodule")
    github.add_argument("ref", help="e.g. bitnet.cpp or bitnet.cpp/3rdparty/llama.cpp")
    github.add_argument("--rev", required=True, help="a full 40-hex commit")
    github.add_argument("--owner", help="move to a fork: its owner")
    github.add_argument("--repo", help="move to a fork: its repository name")
    github.add_argument("--github-url", default=GITHUB, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; expected failures become a message and their exit code."""
    args = _parser().parse_args(argv)
    try:
        document = json.loads(args.pins.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.pins}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    reporter = ConsoleReporter(progress=False)
    try:
        parse_pins(json.dumps(document))  # refuse to start from a broken file
        if args.command == "sdist":
            summary = update_sdist(
                document,
                args.ref,
                args.version,
                index_url=args.index_url,
                upstream_rev=args.upstream_rev,
                reporter=reporter,
            )
        else:
            summary = update_github(
                document,
                args.ref,
                args.rev,
                owner=args.owner,
                repo=args.repo,
                github_url=args.github_url,
                reporter=reporter,
            )
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        parse_pins(text)
    except XtaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    if args.dry_run:
        sys.stdout.write(text)
    else:
        try:
            atomic_write_text(args.pins, text)
        except XtaskError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    print(summary, file=sys.stderr)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
