"""Tasks of the diagnose flow: endpoint health, member list and node facts; none of them fails on a broken cluster."""

from __future__ import annotations

import time
from dataclasses import replace

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import EtcdCluster
from etcd_backup import etcd, facts
from etcd_backup.errors import EtcdBackupError

ETCD_TIMEOUT = 5.0
SSH_TIMEOUT = 20.0
HEALTH_ROUNDS = 3  # an election right after a failure can fail one check of a good member
HEALTH_PAUSE = 2.0


@task(name="endpoint-health", task_run_name="endpoint-health-{cluster}", cache_policy=NO_CACHE, timeout_seconds=120)
def endpoint_health(cluster: str) -> dict[str, str]:
    """Per client endpoint and node, 'ok' or why it is unhealthy (like `etcdctl endpoint health`, re-checked twice)."""
    block = EtcdCluster.load(cluster)
    access = block.access(timeout=ETCD_TIMEOUT)
    spec = block.spec()
    node_urls = tuple(spec.client_url(n) for n in spec.nodes)
    access = replace(access, endpoints=tuple(dict.fromkeys(access.endpoints + node_urls)))
    logger = get_run_logger()
    health = _health(access)
    for _ in range(HEALTH_ROUNDS - 1):
        bad = tuple(e for e, s in health.items() if s != "ok")
        if not bad:
            break
        logger.info("unhealthy: %s; checking again in %.0f s", ", ".join(bad), HEALTH_PAUSE)
        time.sleep(HEALTH_PAUSE)
        health.update(_health(replace(access, endpoints=bad)))
    for endpoint, state in health.items():
        logger.info("step endpoint health on %s: %s", endpoint, state)
    return health


def _health(access: etcd.EtcdAccess) -> dict[str, str]:
    """One round of endpoint health; an error becomes every endpoint's state."""
    try:
        return etcd.health(access)
    except EtcdBackupError as exc:
        return {endpoint: str(exc) for endpoint in access.endpoints}


@task(name="member-list", task_run_name="member-list-{cluster}", cache_policy=NO_CACHE, timeout_seconds=120)
def member_list(cluster: str) -> list[etcd.MemberInfo] | None:
    """The etcd member list, or None when no endpoint answers."""
    access = EtcdCluster.load(cluster).access(timeout=ETCD_TIMEOUT)
    logger = get_run_logger()
    try:
        members = etcd.members(access)
    except EtcdBackupError as exc:
        logger.warning("member list: %s", exc)
        return None
    for m in members:
        logger.info(
            "member %s %s peer %s%s",
            m.hex_id,
            m.name or "(unstarted)",
            ",".join(m.peer_urls),
            " (learner)" if m.is_learner else "",
        )
    return members


@task(name="node-facts", task_run_name="node-facts-{cluster}", cache_policy=NO_CACHE, timeout_seconds=300)
def node_facts(cluster: str) -> list[facts.NodeFacts]:
    """What every master node holds and runs, checked over SSH in one command per node."""
    spec = EtcdCluster.load(cluster).spec()
    logger = get_run_logger()
    found = facts.gather(spec, timeout=SSH_TIMEOUT)
    for f in found:
        if not f.reachable:
            logger.warning("step facts on %s (%s): unreachable: %s", f.name, f.ip, f.error)
            continue
        logger.info(
            "step facts on %s (%s): etcd %s %s, data dir %s, missing: %s",
            f.name,
            f.ip,
            f.etcd_version or "-",
            "active" if f.etcd_active else "inactive",
            "present" if f.data_dir_present else "absent",
            ", ".join(f.missing) or "nothing",
        )
    return found
