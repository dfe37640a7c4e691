"""Tasks of the whole-cluster restore flow before any node changes; each wraps one core call."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import AgeIdentity
from etcd_backup import catalog, etcd, pipeline
from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import EtcdUnavailable
from etcd_backup.restore import source
from etcd_backup.restore.cluster import plan_cluster_restore, refuse_if_quorum
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.plan import Plan, RestoreOptions
from etcd_backup.storage.base import Storage
from tasks.retry import RETRY


@task(name="check-quorum", cache_policy=NO_CACHE)  # submitted: every gRPC call has a deadline
def check_quorum(access: etcd.EtcdAccess, spec: ClusterSpec, force: bool) -> dict[str, str]:
    """Ask every member for a linearizable read; refuse a whole-cluster restore while quorum holds (unless forced)."""
    logger = get_run_logger()
    health = etcd.health(access)
    for endpoint, state in health.items():
        logger.info("member %s: %s", endpoint, state)
    try:
        count: int | None = len(etcd.members(access))
    except EtcdUnavailable:
        count = None
    refuse_if_quorum(spec, health, force, count)
    return health


@task(name="choose-backup", task_run_name="choose-backup-{backup}", cache_policy=NO_CACHE, **RETRY)
def choose_backup(store: Storage, cluster_id: str, backup: str, allow_older: bool) -> source.Choice:
    """The backup to restore ('latest': the newest complete one, naming newer objects it skips), or the named key."""
    choice = source.choose_backup(catalog.list_backups(store, cluster_id), cluster_id, backup, allow_older)
    log_choice(choice)
    return choice


@task(name="fetch-backup", cache_policy=NO_CACHE, timeout_seconds=6 * 3600, **RETRY)
def fetch_backup(
    store: Storage, choice: source.Choice, identity: AgeIdentity | None, dest: str, allow_older: bool
) -> tuple[pipeline.VerifyResult, source.Choice]:
    """Stream the backup to the flow's work dir, verifying its sha256 and the snapshot's own trailer."""
    ids = [identity.identity.get_secret_value()] if identity else []
    info, restored = source.fetch(store, choice, dest, ids, allow_older)
    if restored is not choice:
        log_choice(restored)
    get_run_logger().info("verified %s: %d raw bytes, sha256 %s", info.key, info.raw_size, info.raw_sha256)
    return info, restored


def log_choice(choice: source.Choice) -> None:
    """Say in the run's log which backup is restored and every newer object skipped, with why."""
    logger = get_run_logger()
    logger.info("restoring %s", choice.backup.key)
    for key, why in choice.skipped:
        logger.warning("skipped the newer object %s: %s", key, why)


@task(name="plan-restore", cache_policy=NO_CACHE)
def plan_restore(
    spec: ClusterSpec,
    facts: list[RestoreFacts],
    snapshot: pipeline.VerifyResult,
    retained: str | None,
    token: str,
    options: RestoreOptions,
) -> Plan:
    """The ordered per-node steps of the whole-cluster restore (pure; refuses when a check fails)."""
    plan = plan_cluster_restore(spec, facts, snapshot, retained, token, options)
    get_run_logger().info("plan: %d steps, retained node %s", len(plan.steps), plan.info["retained"])
    return plan
