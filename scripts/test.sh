#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite against real servers.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m fleet`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
PYTEST=(.venv/bin/python -m pytest --durations=40)
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" -n 3 --dist loadgroup "$@"
fi
# Most tests wait on servers, so three workers share the two cores. The scale tests (cron ticks on a
# PostgreSQL-backed Prefect server with two workers, issue 13) are not yet steady on a 2-core machine:
# run them on their own with `scripts/test.sh -m scale`.
exec "${PYTEST[@]}" -n 3 --dist loadgroup -m "not scale"
