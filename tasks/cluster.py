"""Tasks every flow shares to look at a cluster: endpoint health, the member list, what each node holds.

No `timeout_seconds` here: flows `.submit()` these to worker threads, where Prefect cannot
interrupt a call (it only warns); every gRPC and SSH call inside has its own timeout.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from etcd_backup import etcd
from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import EtcdBackupError
from etcd_backup.facts import NodeFacts
from etcd_backup.restore import facts as restore_facts


@task(name="endpoint-health", cache_policy=NO_CACHE)
def endpoint_health(access: etcd.EtcdAccess) -> dict[str, str]:
    """Per client endpoint 'ok' or why it is unhealthy (`etcdctl endpoint health`, failures asked again)."""
    try:
        health = etcd.health(access)
    except EtcdBackupError as exc:
        health = {endpoint: str(exc) for endpoint in access.endpoints}
    logger = get_run_logger()
    for endpoint, state in health.items():
        logger.info("step endpoint health on %s: %s", endpoint, state)
    return health


@task(name="member-list", cache_policy=NO_CACHE)
def member_list(access: etcd.EtcdAccess) -> list[etcd.MemberInfo] | None:
    """The etcd member list (`etcdctl member list`), or None when no endpoint answers."""
    logger = get_run_logger()
    try:
        members = etcd.members(access)
    except EtcdBackupError as exc:
        logger.warning("step member list: %s", exc)
        return None
    for m in members:
        learner = " (learner)" if m.is_learner else ""
        logger.info("member %s, %s, %s%s", m.hex_id, m.name or "unstarted", ",".join(m.peer_urls), learner)
    return members


@task(name="node-facts", cache_policy=NO_CACHE)  # submitted: SSH connect and commands time out
def node_facts(spec: ClusterSpec) -> list[restore_facts.RestoreFacts]:
    """What every master node holds and runs (etcd files, service, data dir, etcd.conf, kube services), one SSH each."""
    found = restore_facts.gather(spec)
    log_facts([f.node for f in found])
    for f in found:
        if f.kube_active:
            get_run_logger().info("step facts on %s: running %s", f.name, ", ".join(f.kube_active))
    return found


def log_facts(found: list[NodeFacts]) -> None:
    """One line per node in the run's log: reachable or why not, etcd version and state, what is missing."""
    logger = get_run_logger()
    for f in found:
        if not f.reachable:
            logger.warning("step facts on %s (%s): unreachable: %s", f.name, f.ip, f.error)
            continue
        etcd_state = f"etcd {f.etcd_version or '-'} {'active' if f.etcd_active else 'inactive'}"
        data = f"data dir {'present' if f.data_dir_present else 'absent'}, {f.free_bytes} bytes free"
        missing = ", ".join(f.missing) or "nothing"
        logger.info("step facts on %s (%s): %s, %s, missing: %s", f.name, f.ip, etcd_state, data, missing)
