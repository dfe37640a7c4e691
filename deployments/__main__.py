"""`python -m deployments check|serve [--config backups.toml] [--replace]`: check file and blocks, then serve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployments.config import load_schedules
from etcd_backup.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 when anything is wrong, with every problem listed)."""
    parser = argparse.ArgumentParser(prog="python -m deployments", description=__doc__)
    parser.add_argument("command", choices=["serve", "check"], help="serve the deployments, or only check")
    parser.add_argument("--config", type=Path, default=Path("backups.toml"), help="schedule file (TOML)")
    parser.add_argument(
        "--replace", action="store_true", help="take over deployments of the same name with other parameters"
    )
    args = parser.parse_args(argv)
    try:
        schedules = load_schedules(args.config, blocks=True)
        for s in schedules:
            print(
                f"etcd-backup/{s.deployment}: {s.cluster} -> {s.storage}, cron '{s.cron}' {s.timezone}, "
                f"keep {s.keep}, {s.compression}",
                flush=True,
            )
        if args.command == "check":
            print(f"{args.config}: {len(schedules)} backup(s), every block found; nothing deployed (check only)")
            return 0
        from prefect.settings import PREFECT_API_URL

        from deployments.serve import serve

        print(
            f"from another shell: export PREFECT_API_URL={PREFECT_API_URL.value()} "
            "(and PREFECT_API_AUTH_STRING if the server has one), then e.g. "
            f"prefect deployment run etcd-backup/{schedules[0].deployment}",
            flush=True,
        )
        serve(schedules, replace=args.replace, config=str(args.config))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
