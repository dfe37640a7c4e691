"""Build the deployments from the schedule file and serve them from this process."""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from deployments.config import BackupSchedule
from flows.backup import backup_etcd, list_backups, prune_backups
from flows.diagnose import diagnose_cluster
from flows.restore_cluster import restore_cluster
from flows.restore_member import restore_member

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def backup_deployment(schedule: BackupSchedule):
    """The scheduled etcd-backup deployment of one cluster (one run at a time)."""
    return backup_etcd.to_deployment(
        name=f"{schedule.cluster}",
        schedule=Cron(schedule.cron, timezone=schedule.timezone),
        parameters=schedule.parameters(),
        concurrency_limit=ONE_AT_A_TIME,
        tags=["etcd-backup", f"cluster:{schedule.cluster}"],
        description=f"Back up {schedule.cluster} to {schedule.storage} at '{schedule.cron}' ({schedule.timezone}), "
        f"keep {schedule.keep}.",
    )


def manual_deployments(schedule: BackupSchedule) -> list:
    """Unscheduled deployments of one cluster for runs started by hand from the UI (`<flow>/<cluster>`)."""
    both = {"cluster": schedule.cluster, "storage": schedule.storage}
    tags = ["etcd-backup", f"cluster:{schedule.cluster}"]
    return [
        f.to_deployment(name=schedule.cluster, parameters=params, tags=tags)
        for f, params in (
            (list_backups, both),
            (prune_backups, {**both, "keep": schedule.keep}),
            (diagnose_cluster, {"cluster": schedule.cluster}),
            (restore_cluster, both),
            (restore_member, {"cluster": schedule.cluster}),
        )
    ]


def all_deployments(schedules: list[BackupSchedule]) -> list:
    """Every deployment this project serves: per cluster the scheduled backup, then the manual flows."""
    return [d for s in schedules for d in (backup_deployment(s), *manual_deployments(s))]


def serve(schedules: list[BackupSchedule]) -> None:
    """Serve the deployments until interrupted; schedules stay active when this process stops."""
    from prefect import serve as prefect_serve

    prefect_serve(*all_deployments(schedules), pause_on_shutdown=False)
