"""Tasks of the restore flows; each loads its blocks by name and wraps one core call."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import AgeIdentity, EtcdCluster, load_storage
from etcd_backup import catalog, etcd
from etcd_backup.nodes import nodes_of
from etcd_backup.restore import checks, source
from etcd_backup.restore import facts as restore_facts
from etcd_backup.restore.executor import ExecutionReport, Executor
from etcd_backup.restore.plan import RestoreOptions, RestorePlan, SnapshotInfo, plan_cluster_restore, refuse_if_quorum
from tasks.retry import RETRY

HEALTH_TIMEOUT = 3.0


@task(name="gather-node-facts", task_run_name="node-facts-{cluster}", cache_policy=NO_CACHE, timeout_seconds=300)
def gather_facts(cluster: str) -> list[restore_facts.RestoreFacts]:
    """Log in to every node (host keys verified) and read what it holds and runs."""
    found = restore_facts.gather(EtcdCluster.load(cluster).spec())
    logger = get_run_logger()
    for f in found:
        n = f.node
        if not n.reachable:
            logger.warning("%s (%s): NOT reachable: %s", n.name, n.ip, n.error)
            continue
        logger.info(
            "%s (%s): etcd %s, %s, missing: %s, data dir %s, %s bytes free, kube active: %s",
            n.name,
            n.ip,
            n.etcd_version or "?",
            "running" if n.etcd_active else "stopped",
            ", ".join(f.missing) or "none",
            "present" if n.data_dir_present else "absent",
            n.free_bytes,
            ", ".join(f.kube_active) or "none",
        )
    return found


@task(name="check-quorum", task_run_name="check-quorum-{cluster}", cache_policy=NO_CACHE, timeout_seconds=120)
def check_quorum(cluster: str, force: bool) -> dict[str, str]:
    """Ask every member for a linearizable read; refuse a whole-cluster restore while quorum holds (unless forced)."""
    block = EtcdCluster.load(cluster)
    health = etcd.health(block.access(timeout=HEALTH_TIMEOUT))
    for endpoint, state in health.items():
        get_run_logger().info("member %s: %s", endpoint, state)
    refuse_if_quorum(health, len(block.nodes), force)
    return health


@task(name="choose-backup", task_run_name="choose-backup-{backup}", cache_policy=NO_CACHE, **RETRY)
def choose_backup(cluster: str, storage: str, backup: str) -> catalog.Backup:
    """The backup to restore: the newest complete one for 'latest', else the named key (checked to be usable)."""
    cluster_id = EtcdCluster.load(cluster).cluster_id
    store = load_storage(storage).build()
    try:
        chosen = source.choose_backup(catalog.list_backups(store, cluster_id), cluster_id, backup)
    finally:
        store.close()
    get_run_logger().info("restoring %s (%s)", chosen.key, "complete" if chosen.complete else "no manifest")
    return chosen


@task(name="fetch-backup", task_run_name="fetch-{storage}", cache_policy=NO_CACHE, timeout_seconds=6 * 3600, **RETRY)
def fetch_backup(storage: str, backup: catalog.Backup, identity: str | None, dest: str) -> SnapshotInfo:
    """Stream the backup to the flow's work dir, verifying its sha256 and the snapshot's own trailer."""
    ids = [AgeIdentity.load(identity).identity.get_secret_value()] if identity else []
    store = load_storage(storage).build()
    try:
        info = source.fetch(store, backup, dest, ids)
    finally:
        store.close()
    get_run_logger().info("verified %s: %d raw bytes, sha256 %s", info.key, info.raw_size, info.raw_sha256)
    return info


@task(name="plan-restore", task_run_name="plan-restore-{cluster}", cache_policy=NO_CACHE)
def plan_restore(
    cluster: str,
    facts: list[restore_facts.RestoreFacts],
    snapshot: SnapshotInfo,
    retained: str | None,
    token: str,
    options: RestoreOptions,
) -> RestorePlan:
    """The ordered per-node steps of the whole-cluster restore (pure; refuses when a check fails)."""
    plan = plan_cluster_restore(EtcdCluster.load(cluster).spec(), facts, snapshot, retained, token, options)
    get_run_logger().info(
        "plan: %d steps on %s, retained node %s", len(plan.steps), ", ".join(plan.nodes), plan.retained
    )
    return plan


@task(
    name="execute-restore", task_run_name="execute-restore-{cluster}", cache_policy=NO_CACHE, timeout_seconds=6 * 3600
)
def execute_plan(
    cluster: str, plan: RestorePlan, snapshot_path: str | None, health_timeout: float = 180.0
) -> ExecutionReport:
    """Run the plan on the nodes (parallel per phase); on failure undo every completed step in reverse order."""
    block = EtcdCluster.load(cluster)
    spec, access = block.spec(), block.access(timeout=5)
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
