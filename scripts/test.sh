#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite against real servers.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m fleet`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
exec .venv/bin/python -m pytest -n 3 --dist loadgroup --durations=40 "$@"
