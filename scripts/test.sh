#!/bin/bash
# Set up (scripts/setup.sh) and run the whole test suite: lint, types, tests.
# Prints how long each part took (CI reads it from .ci/run's output).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
part() { echo "== $1 ($(( SECONDS - t0 )) s so far)"; }
part setup
bash scripts/setup.sh
part ruff
.venv/bin/ruff check src tests bench ansible
part mypy
.venv/bin/mypy
part pytest
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
echo "== done in $(( SECONDS - t0 )) s"
