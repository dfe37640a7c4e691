"""Build the deployments from the schedule file and serve them, refusing to silently replace someone else's."""

from __future__ import annotations

import json
import os
import re
import socket

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from deployments.config import BackupSchedule
from etcd_backup.errors import ConfigError
from flows.backup import backup_etcd, list_backups, prune_backups
from flows.diagnose import diagnose_cluster
from flows.restore_cluster import restore_cluster
from flows.restore_member import restore_member

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
OWNER = re.compile(r"Served by (.*?)\.?$")


def owner(config: str = "") -> str:
    """Who serves the deployments of this process: host, PID and schedule file."""
    where = f" from {os.path.abspath(config)}" if config else ""
    return f"`python -m deployments serve` on {socket.gethostname()} (pid {os.getpid()}){where}"


def backup_deployment(schedule: BackupSchedule, served_by: str = ""):
    """The scheduled etcd-backup deployment of one entry, named after it (one run at a time)."""
    return backup_etcd.to_deployment(
        name=schedule.deployment,
        schedule=Cron(schedule.cron, timezone=schedule.timezone),
        parameters=schedule.parameters(),
        concurrency_limit=ONE_AT_A_TIME,
        tags=["etcd-backup", f"cluster:{schedule.cluster}"],
        description=f"Back up {schedule.cluster} to {schedule.storage} at '{schedule.cron}' ({schedule.timezone}), "
        f"keep {schedule.keep}." + _served(served_by),
    )


def manual_deployments(schedules: list[BackupSchedule], served_by: str = "") -> list:
    """Deployments for runs started by hand: those that need storage per entry, the others once per cluster."""
    made, about = [], _served(served_by)
    for s in schedules:
        both, tags = {"cluster": s.cluster, "storage": s.storage}, ["etcd-backup", f"cluster:{s.cluster}"]
        restore = both | ({"identity": s.identity} if s.identity else {})
        for f, params in ((list_backups, both), (prune_backups, {**both, "keep": s.parameters()["keep"]})):
            made.append(f.to_deployment(name=s.deployment, parameters=params, tags=tags, description=about))
        made.append(restore_cluster.to_deployment(name=s.deployment, parameters=restore, tags=tags, description=about))
    for cluster in dict.fromkeys(s.cluster for s in schedules):
        tags = ["etcd-backup", f"cluster:{cluster}"]
        for f in (diagnose_cluster, restore_member):
            made.append(f.to_deployment(name=cluster, parameters={"cluster": cluster}, tags=tags, description=about))
    return made


def all_deployments(schedules: list[BackupSchedule], served_by: str = "") -> list:
    """Every deployment this project serves: the scheduled backups, then the manual flows."""
    return [backup_deployment(s, served_by) for s in schedules] + manual_deployments(schedules, served_by)


def conflicts(deployments: list, replace: bool = False) -> list[str]:
    """Deployments on the server with the same name but other parameters or schedule (none when replace)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    problems = []
    with get_client(sync_client=True) as client:
        for d in deployments:
            try:
                existing = client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
            except ObjectNotFound:
                continue
            changes = _changes(existing, d)
            if changes and not replace:
                match = OWNER.search(existing.description or "")
                who = match.group(1) if match else "someone else (no 'Served by' in its description)"
                problems.append(
                    f"deployment {d.flow_name}/{d.name} already exists, served by {who}; serving this file "
                    f"would change {'; '.join(changes)}"
                )
    return problems


def _changes(existing, new) -> list[str]:
    """What replacing existing with new would change: parameters and schedules."""
    old_params, new_params = existing.parameters or {}, _plain(new.parameters or {})
    changes = [
        f"{key} {old_params.get(key)!r} -> {new_params.get(key)!r}"
        for key in sorted(set(old_params) | set(new_params))
        if old_params.get(key) != new_params.get(key)
    ]
    old_when = sorted((s.schedule.cron, s.schedule.timezone) for s in existing.schedules if hasattr(s.schedule, "cron"))
    new_when = sorted((s.schedule.cron, s.schedule.timezone) for s in new.schedules if hasattr(s.schedule, "cron"))
    if old_when != new_when:
        changes.append(f"schedule {_when(old_when)} -> {_when(new_when)}")
    return changes


def _when(schedules: list[tuple[str, str]]) -> str:
    return ", ".join(f"'{cron}' {tz or 'UTC'}" for cron, tz in schedules) or "none"


def _plain(parameters: dict) -> dict:
    """Parameters as the server stores them (JSON)."""
    return json.loads(json.dumps(parameters, default=lambda o: o.model_dump()))


def _served(served_by: str) -> str:
    return f" Served by {served_by}." if served_by else ""


def serve(schedules: list[BackupSchedule], *, replace: bool = False, config: str = "") -> None:
    """Serve the deployments until interrupted (schedules stay active when this stops); refuse silent replacements."""
    from prefect import serve as prefect_serve

    deployments = all_deployments(schedules, owner(config))
    problems = conflicts(deployments, replace)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"{len(problems)} deployment(s) would be replaced, nothing served:\n{listed}\n"
            "Give the [[backup]] entry its own `name`, stop the other `serve`, or pass --replace to take them over.",
            step="serve",
        )
    prefect_serve(*deployments, pause_on_shutdown=False)
