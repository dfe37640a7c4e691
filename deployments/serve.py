"""Build the deployments from the schedule file and serve them from this process."""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from deployments.config import BackupSchedule
from flows.backup import backup_etcd, list_backups, prune_backups

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


def manual_deployments() -> list:
    """Unscheduled deployments for runs started by hand from the UI."""
    return [
        list_backups.to_deployment(name="manual", tags=["etcd-backup"]),
        prune_backups.to_deployment(name="manual", tags=["etcd-backup"]),
    ]


def all_deployments(schedules: list[BackupSchedule]) -> list:
    """Every deployment this project serves, scheduled ones first."""
    return [backup_deployment(s) for s in schedules] + manual_deployments()


def serve(schedules: list[BackupSchedule]) -> None:
    """Serve the deployments until interrupted; schedules stay active when this process stops."""
    from prefect import serve as prefect_serve

    prefect_serve(*all_deployments(schedules), pause_on_shutdown=False)
