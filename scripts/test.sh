#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite against real servers.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m fleet`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
PYTEST=(.venv/bin/python -m pytest --durations=40 -n 3 --dist loadgroup)
# Most tests wait on servers, so three workers share the two cores; an xdist_group (the demo, the point-in-time
# history, the scale timeline) stays on one worker, in file order.
exec "${PYTEST[@]}" "$@"
