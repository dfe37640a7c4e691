"""The backup flows: take a verified snapshot into storage, then apply retention; list and prune on demand."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks import AgeIdentity, load_cluster, load_storage
from blocks.loading import load_block
from etcd_backup import flow_names
from etcd_backup.catalog import BackupRecord
from etcd_backup.compression import Compression
from etcd_backup.errors import ConfigError
from etcd_backup.retention import Retention
from flows import locks
from flows.continuous_report import coverage_report
from flows.failures import readable_failures
from flows.notify import notify_on_failure
from flows.report import backup_report, backups_table, retention_report
from flows.verify import verify_steps
from tasks import backup as steps
from tasks import continuous
from tasks.cluster import endpoint_health


@flow(name=flow_names.BACKUP, on_failure=[notify_on_failure])
@readable_failures
@locks.backup_locks
def backup_etcd(
    cluster: str,
    storage: str,
    keep: Retention = 7,
    compression: Compression = "zstd",
    encrypt_to: list[str] = [],  # noqa: B006 - Prefect shows the default in the run form
    notify: str | None = None,
    verify: bool = False,
    identity: str | None = None,
) -> BackupRecord:
    """Back up one etcd cluster to a storage block, then apply the retention policy.

    Args:
        cluster: name of the EtcdCluster block
        storage: storage block as '<block-type-slug>/<name>', e.g. 'ufile-storage/prod'
        keep: the newest N backups to keep, a policy such as "keep 7, daily 7, weekly 4, monthly 6",
            or the tiers as fields (last, hourly, daily, weekly, monthly)
        compression: zstd, gzip, tar.gz (the old plugin's format) or none
        encrypt_to: age public keys (age1...) or SSH public keys to encrypt the backup to
        notify: notification block as '<block-type-slug>/<name>' to alert on failure
        verify: restore the new backup into a scratch etcd and check it before pruning anything
        identity: AgeIdentity block name that decrypts the backup, needed to verify an encrypted one
    """
    if verify and encrypt_to and not identity:
        raise ConfigError("verify=True with encrypt_to needs identity (an AgeIdentity block)", step="parameters")
    target = load_cluster(cluster)
    access = target.access()
    age = load_block(identity, AgeIdentity, "identity block") if verify and identity else None
    with load_storage(storage).build() as store:
        endpoint_health(access)
        sources = steps.choose_sources(access)
        record = steps.snapshot_to_storage(target, store, compression, list(encrypt_to), sources)
        if verify:
            verify_steps(store, target.cluster_id, record.key, age, None)
        plan = steps.plan_retention(store, target.cluster_id, keep)
        removed = steps.prune(store, plan, dry_run=False)
        segments, removed_segments = continuous.prune_segments(store, target.cluster_id, plan, dry_run=False)
    backup_report(record, plan, removed, segments, removed_segments)
    get_run_logger().info(
        "backup %s done; %d old backup(s) and %d segment(s) pruned", record.key, len(removed), len(removed_segments)
    )
    return record


@flow(name=flow_names.LIST_BACKUPS)
@readable_failures
def list_backups(cluster: str, storage: str) -> list[dict]:
    """Show every backup of the cluster in storage as a table, and what continuous backup lets a restore reach.

    Args:
        cluster: name of the EtcdCluster block
        storage: storage block as '<block-type-slug>/<name>'
    """
    cluster_id = load_cluster(cluster).cluster_id
    with load_storage(storage).build() as store:
        backups = steps.list_backups(store, cluster_id)
        found, catalog = continuous.coverage(store, cluster_id)
        coverage_report(cluster_id, found, catalog)
    return backups_table(cluster_id, backups)


@flow(name=flow_names.PRUNE_BACKUPS)
@readable_failures
def prune_backups(cluster: str, storage: str, keep: Retention = 7, dry_run: bool = True) -> list[str]:
    """Apply retention to the cluster's backups and their segments; by default only say what would be deleted.

    Args:
        cluster: name of the EtcdCluster block
        storage: storage block as '<block-type-slug>/<name>'
        keep: the newest N backups to keep, a policy such as "keep 7, daily 7, weekly 4, monthly 6",
            or the tiers as fields (last, hourly, daily, weekly, monthly)
        dry_run: only list what would be deleted (the default); set false to delete
    """
    cluster_id = load_cluster(cluster).cluster_id
    with load_storage(storage).build() as store:
        plan = steps.plan_retention(store, cluster_id, keep)
        removed = steps.prune(store, plan, dry_run=dry_run)
        segments, removed_segments = continuous.prune_segments(store, cluster_id, plan, dry_run=dry_run)
    retention_report(cluster_id, plan, removed, dry_run, segments, removed_segments)
    return removed + removed_segments
