"""Tasks of the member replacement flow; each wraps one core call on the blocks the flow loaded once."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import EtcdCluster
from etcd_backup import etcd
from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import EtcdUnavailable
from etcd_backup.nodes import nodes_of
from etcd_backup.restore import checks
from etcd_backup.restore import facts as restore_facts
from etcd_backup.restore.executor import ExecutionReport, Executor
from etcd_backup.restore.member import MemberPlan, plan_member_replacement
from etcd_backup.restore.plan import RestoreOptions


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
    facts: list[restore_facts.RestoreFacts],
    state: Membership,
    failed: str,
    healthy: str | None,
    options: RestoreOptions,
) -> MemberPlan:
    """The ordered steps that replace the failed member (pure; refuses when a check fails)."""
    plan = plan_member_replacement(spec, facts, state.members, state.health, failed, healthy, options)
    get_run_logger().info(
        "plan: %d steps, %s from healthy node %s, %s",
        len(plan.steps),
        plan.failed,
        plan.healthy,
        f"member remove {plan.remove_id}" if plan.remove_id else "no member to remove",
    )
    return plan


@task(name="execute-member-replacement", cache_policy=NO_CACHE, timeout_seconds=3600)
def execute_member(cluster: EtcdCluster, plan: MemberPlan, health_timeout: float = 180.0) -> ExecutionReport:
    """Run the plan; on failure undo every completed step in reverse order (`member remove` cannot be undone)."""
    spec, access = cluster.spec(), cluster.access(timeout=5)
    nodes = {n.name: n for n in nodes_of(spec)}
    run_checks = {
        "healthy": lambda timeout: checks.wait_healthy(access, max(timeout, health_timeout)),
        "member": lambda timeout: checks.check_member(access, spec, plan.failed),
        "data": lambda timeout: checks.count_data(access),
    }
    try:
        return Executor(nodes, None, run_checks, logger=get_run_logger()).run(plan.phases())
    finally:
        for node in nodes.values():
            node.close()
