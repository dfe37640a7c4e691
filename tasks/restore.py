"""Tasks of the restore flows; each wraps one core call on the blocks the flow loaded once."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import AgeIdentity, EtcdCluster
from etcd_backup import catalog, etcd, pipeline
from etcd_backup.cluster import ClusterSpec
from etcd_backup.nodes import nodes_of
from etcd_backup.restore import checks, source
from etcd_backup.restore import facts as restore_facts
from etcd_backup.restore.executor import ExecutionReport, Executor
from etcd_backup.restore.plan import RestoreOptions, RestorePlan, plan_cluster_restore, refuse_if_quorum
from etcd_backup.storage.base import Storage
from tasks.cluster import log_facts
from tasks.retry import RETRY


@task(name="gather-node-facts", cache_policy=NO_CACHE, timeout_seconds=300)
def gather_facts(spec: ClusterSpec) -> list[restore_facts.RestoreFacts]:
    """Log in to every node (host keys verified) and read what it holds and runs."""
    found = restore_facts.gather(spec)
    log_facts([f.node for f in found])
    for f in found:
        if f.kube_active:
            get_run_logger().info("step facts on %s: running %s", f.name, ", ".join(f.kube_active))
    return found


@task(name="check-quorum", cache_policy=NO_CACHE, timeout_seconds=120)
def check_quorum(access: etcd.EtcdAccess, members: int, force: bool) -> dict[str, str]:
    """Ask every member for a linearizable read; refuse a whole-cluster restore while quorum holds (unless forced)."""
    health = etcd.health(access)
    for endpoint, state in health.items():
        get_run_logger().info("member %s: %s", endpoint, state)
    refuse_if_quorum(health, members, force)
    return health


@task(name="choose-backup", task_run_name="choose-backup-{backup}", cache_policy=NO_CACHE, **RETRY)
def choose_backup(store: Storage, cluster_id: str, backup: str) -> catalog.Backup:
    """The backup to restore: the newest complete one for 'latest', else the named key (checked to be usable)."""
    chosen = source.choose_backup(catalog.list_backups(store, cluster_id), cluster_id, backup)
    get_run_logger().info("restoring %s (%s)", chosen.key, "complete" if chosen.complete else "no manifest")
    return chosen


@task(name="fetch-backup", cache_policy=NO_CACHE, timeout_seconds=6 * 3600, **RETRY)
def fetch_backup(
    store: Storage, backup: str | catalog.Backup, identity: AgeIdentity | None, dest: str
) -> pipeline.VerifyResult:
    """Stream the backup to the flow's work dir, verifying its sha256 and the snapshot's own trailer."""
    ids = [identity.identity.get_secret_value()] if identity else []
    info = pipeline.fetch_snapshot(store, backup, dest, ids)
    get_run_logger().info("verified %s: %d raw bytes, sha256 %s", info.key, info.raw_size, info.raw_sha256)
    return info


@task(name="plan-restore", cache_policy=NO_CACHE)
def plan_restore(
    spec: ClusterSpec,
    facts: list[restore_facts.RestoreFacts],
    snapshot: pipeline.VerifyResult,
    retained: str | None,
    token: str,
    options: RestoreOptions,
) -> RestorePlan:
    """The ordered per-node steps of the whole-cluster restore (pure; refuses when a check fails)."""
    plan = plan_cluster_restore(spec, facts, snapshot, retained, token, options)
    logger = get_run_logger()
    logger.info("plan: %d steps on %s, retained node %s", len(plan.steps), ", ".join(plan.nodes), plan.retained)
    return plan


@task(name="execute-restore", cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def execute_plan(
    cluster: EtcdCluster, plan: RestorePlan, snapshot_path: str | None, health_timeout: float = 180.0
) -> ExecutionReport:
    """Run the plan on the nodes (parallel per phase); on failure undo every completed step in reverse order."""
    spec, access = cluster.spec(), cluster.access(timeout=5)
    nodes = {n.name: n for n in nodes_of(spec)}
    run_checks = {
        "healthy": lambda timeout: checks.wait_healthy(access, max(timeout, health_timeout)),
        "members": lambda timeout: checks.check_members(access, spec),
        "data": lambda timeout: checks.count_data(access),
    }
    try:
        return Executor(nodes, snapshot_path, run_checks, logger=get_run_logger()).run(plan.phases())
    finally:
        for node in nodes.values():
            node.close()
