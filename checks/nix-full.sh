#!/usr/bin/env bash
# Everything the flake offers, for machines that can fetch nixpkgs: `nix flake check`
# (lint, tests, receipts in the sandbox), `nix build` of every package and dev shell,
# the shape of every app and `--help` through each, and `nix fmt -- --ci` (the
# formatter, treefmt with nixfmt, in check mode).
# Needs network (github.com, cache.nixos.org) and Nix >= 2.18 (the pinned nixpkgs
# 25.11's minimum). Where either is missing it says so and stops: it is skipped, not passed.
# Logs in reports/nix-full/.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  echo "nix-full: SKIPPED: $*" >&2
  exit 0
}

command -v nix >/dev/null 2>&1 || skip "Nix is not installed"
# The flake names its one input directly: no global flake registry is needed.
registry=$(mktemp)
trap 'rm -f "$registry"' EXIT
echo '{"flakes": [], "version": 2}' >"$registry"
export NIX_CONFIG="experimental-features = nix-command flakes
flake-registry = $registry
connect-timeout = 15${NIX_CONFIG:+
$NIX_CONFIG}"
rev=$(python3 -c 'import json; print(json.load(open("flake.lock"))["nodes"]["nixpkgs"]["locked"]["rev"])')
locked=$(python3 -c 'import json; print(json.load(open("flake.lock"))["nodes"]["nixpkgs"]["locked"]["narHash"])')

# Fetching the pinned nixpkgs is the probe for network, and checks the lock's narHash.
if ! fetched=$(timeout 600 nix flake prefetch --json "github:NixOS/nixpkgs/$rev" 2>&1); then
  skip "the pinned nixpkgs ($rev) cannot be fetched from this machine:" \
    "$(echo "$fetched" | grep '^error' | tail -n1 || true)"
fi
got=$(echo "$fetched" | python3 -c 'import json, sys; print(json.load(sys.stdin)["hash"])')
if [ "$got" != "$locked" ]; then
  echo "nix-full: flake.lock's narHash for nixpkgs $rev is $locked, the fetched tree's is $got" >&2
  exit 1
fi

version=$(nix --version | awk '{print $NF}')
oldest=$(printf '%s\n%s\n' 2.18 "$version" | sort -V | head -n1)
[ "$oldest" = 2.18 ] || skip "Nix $version cannot evaluate nixpkgs 25.11 (it needs Nix >= 2.18)"

log=reports/nix-full
mkdir -p "$log"
system=$(nix eval --impure --raw --expr builtins.currentSystem)
run() {
  echo "nix-full: $*"
  "$@" 2>&1 | tee -a "$log/nix-full.log"
}

run nix flake check -L --keep-going --no-update-lock-file
for output in packages devShells; do
  for name in $(nix eval --json ".#$output.$system" --apply builtins.attrNames | python3 -c 'import json, sys; print(*json.load(sys.stdin))'); do
    run nix build -L --no-link --no-update-lock-file ".#$output.$system.$name"
  done
done

# Nix before 2.25 does not check apps at all: check their shape here, then run each.
bad=$(nix eval --json ".#apps.$system" --apply 'apps: builtins.filter (name:
  let app = apps.${name}; in !(app.type or null == "app" && builtins.isString (app.program or null)))
  (builtins.attrNames apps)')
[ "$bad" = "[]" ] || { echo "nix-full: apps that are not {type = \"app\"; program = <path>;}: $bad" >&2; exit 1; }
for name in $(nix eval --json ".#apps.$system" --apply builtins.attrNames | python3 -c 'import json, sys; print(*json.load(sys.stdin))'); do
  run nix run --no-update-lock-file ".#$name" -- --help >/dev/null
done

run nix fmt -- --ci
echo "nix-full: ok"
