#!/usr/bin/env bash
# The whole test suite against real local servers; JUnit XML in reports/junit.xml.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p reports
python3 -m pytest --timeout=300 --junitxml=reports/junit.xml "$@"
