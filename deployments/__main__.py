"""`python -m deployments check|serve|deploy|yaml [--config F]`: one schedule file drives every way to run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployments.config import BackupsFile, load_config
from etcd_backup.errors import ConfigError

COMMANDS = {
    "check": "check the file and every block it names; change nothing",
    "serve": "run every deployment in this process (one machine)",
    "deploy": "create or update every deployment on a work pool, for workers on any machine",
    "yaml": "print the prefect.yaml of the same deployments (for `prefect deploy --all`)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployments",
        description=__doc__,
        epilog="; ".join(f"{c}: {what}" for c, what in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), help="what to do")
    parser.add_argument("--config", type=Path, default=Path("backups.toml"), help="schedule file (TOML)")
    parser.add_argument("--pool", default="etcd-backup", help="work pool for deploy and yaml (created if missing)")
    parser.add_argument(
        "--replace", action="store_true", help="take over deployments of the same name with other parameters"
    )
    parser.add_argument(
        "--remove-stale", action="store_true", help="deploy: delete deployments this file made that it no longer has"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 when anything is wrong, with every problem listed)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "yaml":
            from deployments.prefect_yaml import render

            print(render(load_config(args.config), args.pool, str(args.config)), end="")
            return 0
        file = load_config(args.config, blocks=True)
        _summary(file)
        if args.command == "check":
            print(f"{args.config}: {len(file.backups)} backup(s), every block found; nothing deployed (check only)")
        elif args.command == "deploy":
            _deploy(file, args)
        else:
            _serve(file, args)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _summary(file: BackupsFile) -> None:
    for s in file.backups:
        print(
            f"etcd-backup/{s.deployment}: {s.cluster} -> {s.storage}, cron '{s.cron}' {s.timezone}, "
            f"keep {s.keep}, {s.compression}; verify " + (f"'{s.verify_schedule}'" if s.verify_schedule else "by hand"),
            flush=True,
        )
    print(f"at most {file.limits.backups_at_once} backup(s) at once across every cluster", flush=True)


def _deploy(file: BackupsFile, args: argparse.Namespace) -> None:
    from deployments.build import BY_HAND_QUEUE
    from deployments.deploy import deploy

    done = deploy(file, pool=args.pool, config=str(args.config), replace=args.replace, remove_stale=args.remove_stale)
    if done.pool_created:
        print(f"work pool {done.pool} created (type process)")
    print(f"{len(done.deployments)} deployment(s) created or updated on work pool {done.pool}")
    print(f"runs started by hand (restores, diagnose, list, prune) go to work queue {BY_HAND_QUEUE}: taken first")
    for name in done.removed:
        print(f"removed {name}: no longer in {args.config}")
    for name in sorted(set(done.stale) - set(done.removed)):
        print(f"stale: {name} is no longer in {args.config}; delete it with --remove-stale")
    print(f"start workers on each machine: prefect worker start --pool {done.pool}")


def _serve(file: BackupsFile, args: argparse.Namespace) -> None:
    from prefect.settings import PREFECT_API_URL

    from deployments.serve import serve

    print(
        f"from another shell: export PREFECT_API_URL={PREFECT_API_URL.value()} "
        "(and PREFECT_API_AUTH_STRING if the server has one), then e.g. "
        f"prefect deployment run etcd-backup/{file.backups[0].deployment}",
        flush=True,
    )
    serve(file.backups, replace=args.replace, config=str(args.config), backups_at_once=file.limits.backups_at_once)


if __name__ == "__main__":
    sys.exit(main())
