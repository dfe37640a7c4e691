"""The backup flows: take a verified snapshot into storage, then apply retention; list and prune on demand."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks import EtcdCluster
from etcd_backup.codecs import COMPRESSIONS
from etcd_backup.errors import ConfigError
from etcd_backup.retention import Policy
from flows.notify import notify_on_failure
from flows.report import backup_report, backups_table, retention_report
from tasks import backup as steps


@flow(name="etcd-backup", on_failure=[notify_on_failure], log_prints=False)
def backup_etcd(
    cluster: str,
    storage: str,
    keep: int = 7,
    compression: str = "zstd",
    encrypt_to: list[str] = [],
    notify: str | None = None,
) -> dict:  # noqa: B006 - Prefect shows the default
    """Back up one etcd cluster to a storage block and keep the newest `keep` backups."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}", step="parameters")
    Policy.parse(keep)
    cluster_id = EtcdCluster.load(cluster).cluster_id
    sources = steps.choose_sources(cluster)
    record = steps.snapshot_to_storage(cluster, storage, compression, list(encrypt_to), sources)
    plan = steps.plan_retention(cluster, storage, keep)
    removed = steps.prune(storage, plan, dry_run=False)
    backup_report(cluster_id, record, plan, removed, dry_run=False)
    get_run_logger().info("backup %s done; %d old backup(s) pruned", record["key"], len(removed))
    return record


@flow(name="etcd-list-backups")
def list_backups(cluster: str, storage: str) -> list[dict]:
    """Show every backup of the cluster in storage as a table."""
    cluster_id = EtcdCluster.load(cluster).cluster_id
    return backups_table(cluster_id, steps.list_backups(cluster, storage))


@flow(name="etcd-prune-backups")
def prune_backups(cluster: str, storage: str, keep: int = 7, dry_run: bool = True) -> list[str]:
    """Apply retention to the cluster's backups; by default only say what would be deleted."""
    cluster_id = EtcdCluster.load(cluster).cluster_id
    plan = steps.plan_retention(cluster, storage, keep)
    removed = steps.prune(storage, plan, dry_run=dry_run)
    retention_report(cluster_id, plan, removed, dry_run)
    return removed
