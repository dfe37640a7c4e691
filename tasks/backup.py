"""Tasks of the backup flows; each wraps one core call on the blocks the flow loaded once."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import EtcdCluster
from etcd_backup import catalog, etcd, pipeline, retention
from etcd_backup.compression import Compression
from etcd_backup.storage.base import Storage
from tasks.artifacts import Progress, artifact_key
from tasks.retry import RETRY


@task(name="choose-source", cache_policy=NO_CACHE, timeout_seconds=120, **RETRY)
def choose_sources(access: etcd.EtcdAccess) -> list[str]:
    """Reachable voting members to snapshot from, leader first, then by raft index."""
    sources = etcd.pick_sources(access)
    get_run_logger().info("snapshot source order: %s", ", ".join(sources))
    return sources


@task(
    name="snapshot-to-storage",
    task_run_name="snapshot-{cluster.cluster_id}",
    cache_policy=NO_CACHE,
    timeout_seconds=int(catalog.LONGEST_BACKUP.total_seconds()),
    **RETRY,
)
def snapshot_to_storage(
    cluster: EtcdCluster, store: Storage, compression: Compression, encrypt_to: list[str], sources: list[str]
) -> catalog.BackupRecord:
    """Stream one verified snapshot into storage from the first source that works, manifest last."""
    logger = get_run_logger()
    logger.info("streaming a %s snapshot of %s to %s", compression, cluster.cluster_id, store.describe())
    progress = Progress(key=artifact_key("backup-progress", cluster.cluster_id))
    record = pipeline.backup(
        cluster.access(),
        store,
        cluster_id=cluster.cluster_id,
        compression=compression,
        recipients=encrypt_to,
        on_progress=progress,
        sources=sources,
    )
    progress(1, 1)
    logger.info(
        "stored %s (%d bytes, sha256 %s) from %s at revision %d, %d keys",
        record.key,
        record.size,
        record.sha256,
        record.source_member,
        record.revision,
        record.key_count,
    )
    if record.certificate is None:
        why = f"{record.source_member} did not give HashKV at the snapshot's revision"
        logger.warning("no restorability certificate: %s; etcd-verify-backup can still prove it restores", why)
    return record


@task(name="plan-retention", task_run_name="plan-retention-{cluster_id}", cache_policy=NO_CACHE, **RETRY)
def plan_retention(store: Storage, cluster_id: str, keep: int | str | retention.Tiers) -> retention.RetentionPlan:
    """List this cluster's backups and decide which to keep (pure policy, no deletion)."""
    policy = retention.Policy.parse(keep)
    plan = retention.plan(catalog.list_backups(store, cluster_id), policy, datetime.now(UTC), cluster_id)
    logger = get_run_logger()
    logger.info("retention '%s': keep %d, remove %d", policy, len(plan.keep), len(plan.remove))
    for warning in plan.warnings:
        logger.warning("retention: %s", warning)
    return plan


@task(name="prune", cache_policy=NO_CACHE, **RETRY)
def prune(store: Storage, plan: retention.RetentionPlan, dry_run: bool) -> list[str]:
    """Delete the backups the plan removes (or only say which, on a dry run)."""
    removed = retention.prune(store, plan, dry_run=dry_run)
    logger = get_run_logger()
    for key in removed:
        logger.info("%s %s (%s)", "would delete" if dry_run else "deleted", key, plan.reasons.get(key, ""))
    return removed


@task(name="list-backups", task_run_name="list-backups-{cluster_id}", cache_policy=NO_CACHE, **RETRY)
def list_backups(store: Storage, cluster_id: str) -> list[catalog.Backup]:
    """Every backup of the cluster in storage, oldest first."""
    return catalog.list_backups(store, cluster_id)
