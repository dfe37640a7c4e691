"""`python -m deployments serve [--config backups.toml]`: check the schedule file, then serve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployments.config import load_schedules
from etcd_backup.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m deployments", description=__doc__)
    parser.add_argument("command", choices=["serve", "check"], help="serve the deployments, or only check the file")
    parser.add_argument("--config", type=Path, default=Path("backups.toml"), help="schedule file (TOML)")
    args = parser.parse_args(argv)
    try:
        schedules = load_schedules(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for s in schedules:
        print(f"backup {s.cluster} -> {s.storage}: cron '{s.cron}' {s.timezone}, keep {s.keep}, {s.compression}")
    if args.command == "serve":
        from deployments.serve import serve

        serve(schedules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
