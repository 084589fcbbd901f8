#!/usr/bin/env bash
# One entry point for every check, locally and in CI: `scripts/ci-local.sh <mode>`.
# Each mode runs scripts from checks/; `nix flake check` runs the same scripts (nix/checks.nix).
#   deps      install what the checks need (system packages when root, the package + dev tools)
#   lint      ruff check, ruff format --check, mypy --strict
#   tests     pytest with a per-test timeout and a JUnit XML report in reports/
#   nix       the Nix checks possible without nixpkgs: parse, flake.lock, pins (installs nix-bin)
#   nix-full  nix flake check + nix build of every output (needs network; else says skipped)
#   receipts  gen-fixtures -> crossval against llama.cpp, receipts in reports/receipts/
#   all       deps, lint, tests, nix (the default; what .ci/run runs)
# lint, tests, nix and receipts run Python with this package and its dev tools, so each
# runs deps first (quick when all is there): every mode works alone on a fresh checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-all}"
case "$mode" in
  deps)     bash checks/deps.sh ;;
  lint|tests|nix|receipts) bash checks/deps.sh && bash "checks/$mode.sh" ;;
  nix-full) bash checks/nix-full.sh ;;
  all)      bash checks/deps.sh && bash checks/lint.sh && bash checks/tests.sh && bash checks/nix.sh ;;
  -h|--help|help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "ci-local.sh: unknown mode '$mode' (deps, lint, tests, nix, nix-full, receipts, all)" >&2
    exit 2
    ;;
esac
