"""pins.json: what is pinned, and that a bad pin is refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bitnet_xtask.cpp.pins import GithubPin, SdistPin, load_pins, parse_pins
from bitnet_xtask.errors import UsageError

PINS = Path(__file__).parents[1] / "src" / "bitnet_xtask" / "cpp" / "pins.json"


def test_packaged_pins() -> None:
    pins = load_pins()
    llama = pins["llama.cpp"]
    assert isinstance(llama, SdistPin)
    assert llama.package == "llama-cpp-python" and llama.subdir == "vendor/llama.cpp"
    assert llama.url.endswith(f"llama_cpp_python-{llama.version}.tar.gz")
    bitnet = pins["bitnet.cpp"]
    assert isinstance(bitnet, GithubPin) and bitnet.hash and bitnet.hash.startswith("sha256-")
    fork = bitnet.submodules["3rdparty/llama.cpp"]
    assert fork.owner == "Eddie-Wang1120" and len(fork.rev) == 40
    assert fork.rev == "406a5036f9a8aaee9ec5e96e652f61691340fe95"
    assert fork.hash == "sha256-XgnckPJt2C6OdbcOkt34grpGzfUNea874ElOIW/Fupk="
    assert bitnet.tarball_url().endswith(f"/microsoft/BitNet/archive/{bitnet.rev}.tar.gz")


def _mutated(change: Any) -> str:
    document = json.loads(PINS.read_text())
    change(document["references"])
    return json.dumps(document)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["bitnet.cpp"].update(rev="c82b5e66"), "full 40-hex commit"),
        (lambda r: r["bitnet.cpp"].update(hash="sha256-short"), "SRI sha256"),
        (lambda r: r["bitnet.cpp"]["submodules"]["3rdparty/llama.cpp"].update(hash=None),
         "SRI sha256"),
        (lambda r: r["llama.cpp"].update(sha256="XYZ"), "64 lowercase hex"),
        (lambda r: r["llama.cpp"].update(url="http://x/y.tar.gz"), "https"),
        (lambda r: r["llama.cpp"].update(kind="svn"), "unknown kind"),
        (lambda r: r["llama.cpp"].pop("subdir"), "missing field"),
    ],
)  # fmt: skip
def test_bad_pins_are_refused(change: Any, message: str) -> None:
    with pytest.raises(UsageError, match=r"pins\.json") as err:
        parse_pins(_mutated(change))
    assert message in err.value.message


def test_unsupported_versions_and_broken_json() -> None:
    with pytest.raises(UsageError, match="version 2"):
        parse_pins(json.dumps({"version": 2, "references": {}}))
    with pytest.raises(UsageError, match="not valid"):
        parse_pins("{")
