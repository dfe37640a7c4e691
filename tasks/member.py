"""Tasks of the member replacement flow before any node changes; each wraps one core call."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from etcd_backup import etcd
from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import EtcdUnavailable
from etcd_backup.restore.facts import RestoreFacts
from etcd_backup.restore.member import plan_member_replacement
from etcd_backup.restore.plan import Plan, RestoreOptions


@dataclass(frozen=True)
class Membership:
    """Each endpoint's health and the member list (None when no member answered)."""

    health: dict[str, str]
    members: list[etcd.MemberInfo] | None


@task(name="read-membership", cache_policy=NO_CACHE, timeout_seconds=120)
def read_membership(access: etcd.EtcdAccess) -> Membership:
    """Runbook step 2: `etcdctl endpoint health` and `etcdctl member list`, over gRPC from the flow."""
    logger = get_run_logger()
    health = etcd.health(access)
    for endpoint, state in health.items():
        logger.info("member %s: %s", endpoint, state)
    try:
        members = etcd.members(access)
    except EtcdUnavailable as exc:
        logger.warning("member list: %s", exc)
        return Membership(health, None)
    for m in members:
        logger.info("member %s, %s, %s", m.hex_id, m.name or "unstarted", ",".join(m.peer_urls))
    return Membership(health, members)


@task(name="plan-member-replacement", task_run_name="plan-member-{failed}", cache_policy=NO_CACHE)
def plan_member(
    spec: ClusterSpec,
    facts: list[RestoreFacts],
    state: Membership,
    failed: str,
    healthy: str | None,
    options: RestoreOptions,
) -> Plan:
    """The ordered steps that replace the failed member (pure; refuses when a check fails)."""
    plan = plan_member_replacement(spec, facts, state.members, state.health, failed, healthy, options)
    info = plan.info
    removal = f"member remove {info['remove_id']}" if info["remove_id"] else "no member to remove"
    get_run_logger().info(
        "plan: %d steps, %s from healthy node %s, %s", len(plan.steps), info["failed"], info["healthy"], removal
    )
    return plan
