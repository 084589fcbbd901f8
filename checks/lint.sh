#!/usr/bin/env bash
# Static checks; every one must be clean at every commit.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check .
mypy --strict
echo "lint: ok"
