"""Tasks of the backup flow; each wraps one core call and loads its blocks by name."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from blocks import EtcdCluster, load_storage
from etcd_backup import catalog, etcd, pipeline, retention
from tasks.retry import RETRY

PROGRESS_EVERY_SECONDS = 2.0


@task(
    name="choose-source", task_run_name="choose-source-{cluster}", cache_policy=NO_CACHE, timeout_seconds=120, **RETRY
)
def choose_sources(cluster: str) -> list[str]:
    """Healthy voting members of the cluster, leader first."""
    access = EtcdCluster.load(cluster).access()
    health = etcd.health(access)
    logger = get_run_logger()
    for endpoint, state in health.items():
        logger.info("member %s: %s", endpoint, state)
    sources = etcd.pick_sources(access)
    logger.info("snapshot source order: %s", ", ".join(sources))
    return sources


@task(
    name="snapshot-to-storage",
    task_run_name="snapshot-{cluster}-to-{storage}",
    cache_policy=NO_CACHE,
    timeout_seconds=6 * 3600,
    **RETRY,
)
def snapshot_to_storage(
    cluster: str, storage: str, compression: str, encrypt_to: list[str], sources: list[str]
) -> dict:
    """Stream one verified snapshot into storage from the first source that works, manifest last."""
    block = EtcdCluster.load(cluster)
    store = load_storage(storage).build()
    logger = get_run_logger()
    logger.info("streaming a %s snapshot of %s to %s", compression, block.cluster_id, store.describe())
    progress = _Progress(key=f"backup-progress-{_slug(block.cluster_id)}")
    try:
        record = pipeline.backup(
            block.access(),
            store,
            cluster_id=block.cluster_id,
            compression=compression,
            recipients=encrypt_to,
            on_progress=progress,
            sources=sources,
        )
    finally:
        store.close()
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
    return record.to_dict()


@task(name="plan-retention", task_run_name="plan-retention-{cluster}", cache_policy=NO_CACHE, **RETRY)
def plan_retention(cluster: str, storage: str, keep: int | str) -> retention.RetentionPlan:
    """List this cluster's backups and decide which to keep (pure policy, no deletion)."""
    cluster_id = EtcdCluster.load(cluster).cluster_id
    store = load_storage(storage).build()
    try:
        backups = catalog.list_backups(store, cluster_id)
    finally:
        store.close()
    plan = retention.plan(backups, retention.Policy.parse(keep), datetime.now(UTC), cluster_id)
    get_run_logger().info(
        "retention '%s': keep %d, remove %d", retention.Policy.parse(keep), len(plan.keep), len(plan.remove)
    )
    return plan


@task(name="prune", task_run_name="prune-{storage}", cache_policy=NO_CACHE, **RETRY)
def prune(storage: str, plan: retention.RetentionPlan, dry_run: bool) -> list[str]:
    """Delete the backups the plan removes (or only say which, on a dry run)."""
    store = load_storage(storage).build()
    try:
        removed = retention.prune(store, plan, dry_run=dry_run)
    finally:
        store.close()
    logger = get_run_logger()
    for key in removed:
        logger.info("%s %s (%s)", "would delete" if dry_run else "deleted", key, plan.reasons.get(key, ""))
    return removed


@task(name="list-backups", task_run_name="list-backups-{cluster}", cache_policy=NO_CACHE, **RETRY)
def list_backups(cluster: str, storage: str) -> list[catalog.Backup]:
    """Every backup of the cluster in storage, oldest first."""
    cluster_id = EtcdCluster.load(cluster).cluster_id
    store = load_storage(storage).build()
    try:
        return catalog.list_backups(store, cluster_id)
    finally:
        store.close()


class _Progress:
    """Upload progress as a Prefect progress artifact, updated at most every few seconds."""

    def __init__(self, key: str):
        self.artifact = create_progress_artifact(0.0, key=key, description="snapshot streamed to storage")
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        update_progress_artifact(self.artifact, progress=min(100.0, 100.0 * done / max(total, 1)))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
