#!/usr/bin/env bash
# Install, then run the demo: local Prefect server + three etcd master nodes + every flow served (Ctrl-C stops it).
# Extra arguments go to the demo: --s3, --port N, --fresh (delete earlier demo data first),
# --break quorum|member (break the running demo's cluster, to restore it from the UI).
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *" --break "*) ;;               # talks to the running demo: nothing to install
  *) bash scripts/setup.sh test ;;
esac
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
exec .venv/bin/python -m deployments.demo "$@"
