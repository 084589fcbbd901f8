#!/usr/bin/env bash
# The Nix checks this machine can make honestly (nixpkgs cannot be fetched here, so no
# output that depends on it is evaluated or built; `nix-full` does that where it can):
# Debian's nix-bin parses every .nix file, checks that flake.lock is well-formed, matches
# flake.nix and holds SRI hashes, evaluates the parts of nix/ that need no nixpkgs (the
# pins, the project facts) and compares them with Python's reading of the same files,
# evaluates flake.nix and nix/ with the real nixpkgs lib of the pinned release and a
# recording stand-in for the package set (nix/recording-nixpkgs.nix), and checks the
# formatter's style where a Nix formatter is installed. The checks themselves are
# tests/test_nix.py, so `tests` runs them too; JUnit XML in reports/.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nix-instantiate >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nix: installing Debian's nix-bin"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nix-bin >/dev/null
  else
    echo "nix: SKIPPED: Nix is not installed and this user cannot install it" \
      "(as root: apt-get install nix-bin)" >&2
    exit 0
  fi
fi
echo "nix: $(nix --version)"
command -v nixfmt >/dev/null 2>&1 \
  || echo "nix: no nixfmt here (none is installable from PyPI, npm or Debian): the" \
    "formatting test is skipped; \`nix fmt\` formats the tree where nixpkgs can be fetched"
mkdir -p reports
python3 -m pytest tests/test_nix.py -rs --junitxml=reports/nix-junit.xml "$@"
