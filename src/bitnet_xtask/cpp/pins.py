"""The pinned C++ references: one JSON file that Python and Nix both read.

`pins.json` names where each reference's exact bytes come from: a PyPI sdist (URL and
the index's sha256) or a GitHub revision (full commit and the NAR hash of its tree,
the `hash` that nixpkgs' fetchFromGitHub checks). Every pin carries its hash: there is
no way to fetch unverified bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bitnet_xtask.errors import UsageError
from bitnet_xtask.inputs import parse_json, read_text

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REV = re.compile(r"^[0-9a-f]{40}$")
_SRI = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
#: Where GitHub pins are fetched from (tests point fetch-cpp and update_pins elsewhere).
GITHUB = "https://github.com"


def github_tarball(owner: str, repo: str, rev: str, github: str = GITHUB) -> str:
    """GitHub's archive of a commit or tag: what fetchFromGitHub downloads, and so what
    fetch-cpp and update_pins download and check by the NAR hash of its tree."""
    return f"{github.rstrip('/')}/{owner}/{repo}/archive/{rev}.tar.gz"


@dataclass(frozen=True)
class SdistPin:
    """llama.cpp as vendored inside a pinned PyPI sdist."""

    name: str
    package: str
    version: str
    url: str
    sha256: str
    subdir: str
    upstream: dict[str, str]


@dataclass(frozen=True)
class GithubPin:
    """A GitHub repository at a full commit, with the NAR hash of its tree."""

    name: str
    owner: str
    repo: str
    rev: str  # a full commit in pins.json; a tag or commit given with --rev/--tag
    hash: str
    submodules: dict[str, GithubPin] = field(default_factory=dict)

    def tarball_url(self, github: str = GITHUB) -> str:
        """GitHub's archive of the commit (`github_tarball`)."""
        return github_tarball(self.owner, self.repo, self.rev, github)


Pin = SdistPin | GithubPin


def is_sri(value: object) -> bool:
    """Whether `value` is a SRI sha256 hash as Nix writes it (`sha256-<base64>=`)."""
    return isinstance(value, str) and bool(_SRI.match(value))


def _bad(name: str, what: str) -> UsageError:
    return UsageError(f"pins.json: {name}: {what}", "fix the pin (or regenerate it)")


def _github(name: str, data: dict[str, Any]) -> GithubPin:
    rev, sri = data.get("rev", ""), data.get("hash")
    if not _REV.match(rev):
        raise _bad(name, f"rev must be a full 40-hex commit, got {rev!r}")
    if not is_sri(sri):
        raise _bad(name, f"hash must be an SRI sha256 (sha256-...=), got {sri!r}")
    submodules = {
        path: _github(f"{name}/{path}", sub) for path, sub in data.get("submodules", {}).items()
    }
    return GithubPin(name, data["owner"], data["repo"], rev, str(sri), submodules)


def _sdist(name: str, data: dict[str, Any]) -> SdistPin:
    if not _HEX64.match(data.get("sha256", "")):
        raise _bad(name, "sha256 must be 64 lowercase hex digits")
    if not str(data.get("url", "")).startswith("https://"):
        raise _bad(name, "url must be https")
    return SdistPin(
        name,
        data["package"],
        data["version"],
        data["url"],
        data["sha256"],
        data["subdir"],
        dict(data.get("upstream", {})),
    )


def parse_pins(text: str) -> dict[str, Pin]:
    """Validate and load the pins; every problem names the pin and the field."""
    document = parse_json(text, what="pins.json")
    references = document.get("references") if isinstance(document, dict) else None
    if not isinstance(references, dict):
        raise UsageError('pins.json is not valid: no "references" object')
    if document.get("version") != 1:
        raise UsageError(f"pins.json version {document.get('version')!r} is not supported")
    pins: dict[str, Pin] = {}
    for name, data in references.items():
        if not isinstance(data, dict):
            raise _bad(name, "not a JSON object")
        try:
            kind = data["kind"]
            if kind == "github":
                pins[name] = _github(name, data)
            elif kind == "pypi-sdist":
                pins[name] = _sdist(name, data)
            else:
                raise _bad(name, f"unknown kind {kind!r}")
        except KeyError as exc:
            raise _bad(name, f"missing field {exc}") from None
        except (TypeError, AttributeError) as exc:  # a field of the wrong JSON type
            raise _bad(name, f"a field has the wrong type ({exc})") from None
    return pins


def load_pins(path: Path | None = None) -> dict[str, Pin]:
    """The packaged pins.json, or another file."""
    if path is not None:
        return parse_pins(read_text(path, what="pins file"))
    return parse_pins(resources.files(__package__).joinpath("pins.json").read_text("utf-8"))
