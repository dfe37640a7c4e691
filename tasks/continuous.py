"""Tasks of continuous backup and point-in-time restore; each wraps one core call on the blocks the flow loaded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import AgeIdentity
from etcd_backup import etcd, retention
from etcd_backup.continuous import prune, rebuild
from etcd_backup.continuous.catalog import Catalog
from etcd_backup.continuous.chain import RestorePoint
from etcd_backup.continuous.coverage import Coverage
from etcd_backup.continuous.errors import HistoryBroken, StartCompacted
from etcd_backup.continuous.names import lineage_of
from etcd_backup.continuous.runner import ContinuousBackup, RunSummary, StartPoint, start_point
from etcd_backup.storage.base import Storage
from tasks.retry import RETRY


@task(name="etcd-cluster-id", cache_policy=NO_CACHE, timeout_seconds=120, **RETRY)
def etcd_lineage(access: etcd.EtcdAccess) -> str:
    """etcd's own cluster id now (the lineage of the segments: a whole-cluster restore gives a new one)."""
    status = etcd.status(access, etcd.pick_sources(access)[0])
    return lineage_of(status.cluster_id)


@task(name="start-point", task_run_name="start-point-{cluster_id}", cache_policy=NO_CACHE, **RETRY)
def find_start_point(store: Storage, cluster_id: str, lineage: str) -> StartPoint:
    """Where to follow from: after the last uploaded segment, after the newest full backup, or from now."""
    point = start_point(store, cluster_id, lineage)
    get_run_logger().info("continuous backup of %s (etcd cluster %s): %s", cluster_id, lineage, point.reason)
    return point


@dataclass(frozen=True)
class FollowEnd:
    """How following ended: the run's summary, and why a new chain must start ('' when it was stopped)."""

    summary: RunSummary
    restart: str = ""


@task(name="follow", task_run_name="follow-from-{backup.start_revision}", cache_policy=NO_CACHE)
def follow(backup: ContinuousBackup) -> FollowEnd:
    """Follow the cluster and upload segments until stopped; a compacted start or a broken history ends it too."""
    try:
        return FollowEnd(backup.run())
    except (StartCompacted, HistoryBroken) as exc:
        return FollowEnd(backup.summary(), str(exc))


@task(name="prune-segments", task_run_name="prune-segments-{cluster_id}", cache_policy=NO_CACHE, **RETRY)
def prune_segments(
    store: Storage, cluster_id: str, plan: retention.RetentionPlan, dry_run: bool
) -> tuple[prune.SegmentRetention, list[str]]:
    """Delete the segments older than the oldest full backup the retention plan keeps (or say which, on a dry run)."""
    decided, removed = prune.prune_with(store, cluster_id, plan.keep, dry_run=dry_run)
    get_run_logger().info(
        "segments: %s %d, keep %d", "would delete" if dry_run else "deleted", len(removed), len(decided.keep)
    )
    return decided, removed


@task(name="continuous-coverage", task_run_name="coverage-{cluster_id}", cache_policy=NO_CACHE, **RETRY)
def coverage(store: Storage, cluster_id: str) -> tuple[Coverage, Catalog]:
    """Which revisions a point-in-time restore reaches, and every gap (names only; two manifests per interval)."""
    catalog = Catalog(store, cluster_id)
    return catalog.coverage(), catalog


@task(name="plan-point-in-time", cache_policy=NO_CACHE, **RETRY)
def plan_point_in_time(
    store: Storage, cluster_id: str, to_revision: int | None, to_time: datetime | None, identity: AgeIdentity | None
) -> RestorePoint:
    """The full backup and the segments that reach the target revision (or the last one received by to_time)."""
    ids = [identity.identity.get_secret_value()] if identity else []
    point = Catalog(store, cluster_id, identities=ids).plan(to_revision=to_revision, to_time=to_time)
    get_run_logger().info("point in time: %s", point.describe())
    return point


@task(name="rebuild-snapshot", task_run_name="rebuild-revision-{point.target_revision}", cache_policy=NO_CACHE)
def rebuild_snapshot(store: Storage, point: RestorePoint, identity: AgeIdentity | None, dest: str) -> rebuild.Rebuilt:
    """Replay the segments on the full backup in a scratch etcd, check it, snapshot it to dest; nodes untouched."""
    ids = [identity.identity.get_secret_value()] if identity else []
    logger = get_run_logger()

    def progress(revision: int, target: int) -> None:
        logger.info("replayed up to revision %d of %d", revision, target)

    rebuilt = rebuild.rebuild(store, point, dest, identities=ids, workdir=Path(dest).parent, on_progress=progress)
    logger.info(
        "rebuilt %s in %.1f s (%d revisions, %d events replayed)",
        rebuilt.describe(),
        rebuilt.replay.seconds,
        rebuilt.replay.revisions_applied,
        rebuilt.replay.events_applied,
    )
    return rebuilt


@task(name="check-point-in-time", cache_policy=NO_CACHE, **RETRY)
def check_restored(access: etcd.EtcdAccess, rebuilt: rebuild.Rebuilt) -> list[str]:
    """Compare the restored cluster at the target revision with the rebuilt copy (etcd HashKV and key count)."""
    differences = rebuild.check_restored(access, rebuilt)
    logger = get_run_logger()
    for difference in differences:
        logger.error("restored cluster differs from the rebuilt copy: %s", difference)
    if not differences:
        logger.info("restored cluster at revision %d matches the rebuilt copy", rebuilt.revision)
    return differences
