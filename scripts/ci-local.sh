#!/usr/bin/env bash
# One entry point for every check, locally and in CI: `scripts/ci-local.sh <mode>`.
# Each mode runs scripts from checks/; `nix flake check` will run the same scripts.
#   deps   install what the checks need (system packages when root, the package + dev tools)
#   lint   ruff check, ruff format --check, mypy --strict
#   tests  pytest with a per-test timeout and a JUnit XML report in reports/
#   all    deps, lint, tests (the default; what .ci/run runs)
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-all}"
case "$mode" in
  deps)  bash checks/deps.sh ;;
  lint)  bash checks/lint.sh ;;
  tests) bash checks/tests.sh ;;
  all)   bash checks/deps.sh && bash checks/lint.sh && bash checks/tests.sh ;;
  -h|--help|help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "ci-local.sh: unknown mode '$mode' (deps, lint, tests, all)" >&2
    exit 2
    ;;
esac
