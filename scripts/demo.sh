#!/usr/bin/env bash
# Install, then run the demo: local Prefect server + 3-member etcd + scheduled backups (Ctrl-C stops it).
# Extra arguments go to the demo (e.g. `scripts/demo.sh --s3`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
exec .venv/bin/python -m deployments.demo "$@"
