#!/usr/bin/env bash
# The fast gates run before every commit and by CI before the tests: lint, format, types of the core.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy etcd_backup
