"""Every deployment of a schedule file, built in one place for `serve`, `deploy` and the generated prefect.yaml."""

from __future__ import annotations

import json

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from deployments.config import CONTINUOUS_CRON, BackupSchedule
from flows.backup import backup_etcd, list_backups, prune_backups
from flows.continuous import continuous_backup
from flows.diagnose import diagnose_cluster
from flows.restore_cluster import restore_cluster
from flows.restore_member import restore_member
from flows.verify import verify_backup

# Scheduled flows run one at a time per deployment; a run that finds one running waits (ENQUEUE).
# Restores have none: the flow engine would cancel a restore whose deployment lease it failed to renew.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
FILE, MODULE = EntrypointType.FILE_PATH, EntrypointType.MODULE_PATH


def tags(cluster: str) -> list[str]:
    """The tags of every deployment of a cluster (filter by `cluster:<name>` in the UI)."""
    return ["etcd-backup", f"cluster:{cluster}"]


def backup_deployment(schedule: BackupSchedule, about: str = "", entrypoint: EntrypointType = FILE):
    """The scheduled etcd-backup deployment of one entry, named after it (one run at a time)."""
    what = f"Back up {schedule.cluster} to {schedule.storage} at '{schedule.cron}' ({schedule.timezone}), "
    what += f"keep {schedule.keep}."
    return _one_at_a_time(backup_etcd, schedule, schedule.cron, schedule.parameters(), what + about, entrypoint)


def verify_deployment(schedule: BackupSchedule, about: str = "", entrypoint: EntrypointType = FILE):
    """The etcd-verify-backup deployment of one entry: the latest backup restored in a scratch etcd, weekly."""
    when = schedule.verify_schedule
    what = f"Restore the latest backup of {schedule.cluster} in {schedule.storage} into a scratch etcd and check "
    what += "it against its certificate" + (f" at '{when}' ({schedule.timezone})." if when else " (by hand).")
    return _one_at_a_time(verify_backup, schedule, when, schedule.verify_parameters(), what + about, entrypoint)


def continuous_deployment(schedule: BackupSchedule, about: str = "", entrypoint: EntrypointType = FILE):
    """The etcd-continuous-backup deployment of one entry: scheduled when `continuous = true`, else by hand."""
    parameters = schedule.continuous_parameters()
    what = f"Follow every change of {schedule.cluster} into segments in {schedule.storage} for point-in-time restore: "
    if schedule.continuous:
        when = CONTINUOUS_CRON
        what += f"runs of {parameters['run_minutes']} min started '{when}', each resuming after the last segment."
    else:
        when, what = None, what + "by hand (continuous = true in backups.toml schedules it); runs until cancelled."
    return _one_at_a_time(continuous_backup, schedule, when, parameters, what + about, entrypoint)


def _one_at_a_time(flow, schedule: BackupSchedule, cron: str | None, parameters: dict, description: str, entrypoint):
    """A deployment of the entry on cron (none: by hand) whose runs wait for each other."""
    return flow.to_deployment(
        name=schedule.deployment,
        schedule=Cron(cron, timezone=schedule.timezone) if cron else None,
        parameters=parameters,
        concurrency_limit=ONE_AT_A_TIME,
        tags=tags(schedule.cluster),
        entrypoint_type=entrypoint,
        description=description,
    )


MANUAL = {  # what each manual deployment is for, as its description says
    list_backups: "List the backups of {cluster} in {storage}.",
    prune_backups: "Apply retention to the backups of {cluster} in {storage} by hand (dry run by default).",
    restore_cluster: "Restore every member of {cluster} from a backup in {storage} (quorum lost); pauses for "
    "confirmation; waits for a running backup of {cluster}.",
    diagnose_cluster: "Say which outage case {cluster} is in and which restore to run.",
    restore_member: "Replace one failed member of {cluster} (quorum kept); set failed_node; pauses for "
    "confirmation; waits for a running backup of {cluster}.",
}


BY_HAND_QUEUE = "by-hand"  # the work queue (priority 1) of the runs an operator starts: restores before backups


def manual_deployments(
    schedules: list[BackupSchedule], about: str = "", entrypoint: EntrypointType = FILE, queue: str | None = None
) -> list:
    """Deployments for runs started by hand: those that need storage per entry, the others once per cluster."""
    made = []
    for s in schedules:
        both = {"cluster": s.cluster, "storage": s.storage}
        restore = both | ({"identity": s.identity} if s.identity else {})
        for f, params in ((list_backups, both), (prune_backups, {**both, "keep": s.parameters()["keep"]})):
            made.append(_manual(f, s.deployment, params, about, entrypoint, queue))
        made.append(_manual(restore_cluster, s.deployment, restore, about, entrypoint, queue))
    for cluster in dict.fromkeys(s.cluster for s in schedules):
        for f in (diagnose_cluster, restore_member):
            made.append(_manual(f, cluster, {"cluster": cluster}, about, entrypoint, queue))
    return made


def _manual(flow, name: str, parameters: dict, about: str, entrypoint: EntrypointType, queue: str | None):
    """A deployment for runs by hand, on the work queue `queue` when it goes to a work pool."""
    return flow.to_deployment(
        name=name,
        parameters=parameters,
        tags=tags(parameters["cluster"]),
        description=MANUAL[flow].format(**{"storage": "", **parameters}) + about,
        entrypoint_type=entrypoint,
        work_queue_name=queue,
    )


def all_deployments(
    schedules: list[BackupSchedule], about: str = "", entrypoint: EntrypointType = FILE, by_hand: str | None = None
) -> list:
    """Every deployment of the entries: backups, verifications and followers, then the manual flows (queue by_hand)."""
    scheduled = [backup_deployment(s, about, entrypoint) for s in schedules]
    scheduled += [verify_deployment(s, about, entrypoint) for s in schedules]
    scheduled += [continuous_deployment(s, about, entrypoint) for s in schedules]
    return scheduled + manual_deployments(schedules, about, entrypoint, by_hand)


def plain(parameters: dict) -> dict:
    """Parameters as the server stores them (JSON)."""
    return json.loads(json.dumps(parameters, default=lambda o: o.model_dump()))
