"""The member replacement flow (quorum kept; runbook 3.1.1 and 3.2.1), with dry run, confirmation and rollback."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import load_cluster
from etcd_backup import flow_names
from etcd_backup.errors import EtcdBackupError
from etcd_backup.restore.plan import RestoreOptions
from etcd_backup.restore.render import not_undone, outcome
from flows import locks
from flows.execute import run_plan
from flows.failures import readable_failures
from flows.notify import notify_on_failure
from flows.restore_report import plan_artifact, publish_report
from flows.safety import confirm_or_refuse
from tasks import member as steps
from tasks.cluster import node_facts

HEALTH_TIMEOUT = 3.0
STEP_THREADS = 32


@flow(
    name=flow_names.RESTORE_MEMBER,
    on_failure=[notify_on_failure],
    task_runner=ThreadPoolTaskRunner(max_workers=STEP_THREADS),
)
@readable_failures
@locks.restore_lock
def restore_member(
    cluster: str,
    failed_node: str,
    healthy_node: str | None = None,
    restore_control_plane: bool = False,
    confirm: bool = False,
    dry_run: bool = False,
    confirm_timeout: int = 900,
    notify: str | None = None,
) -> dict:
    """Replace the member of a repaired or recreated node while quorum holds; undo the node's changes on failure.

    Args:
        cluster: name of the EtcdCluster block
        failed_node: etcd member name (or IP) of the repaired or recreated node
        healthy_node: the node to copy files from and run etcdctl on (default: a healthy one)
        restore_control_plane: also bring back kube-apiserver, controller-manager and scheduler on the node
        confirm: skip the typed confirmation (for automation); without it the run pauses and asks
        dry_run: only publish the plan; change nothing
        confirm_timeout: seconds to wait for the confirmation
        notify: notification block as '<block-type-slug>/<name>' to alert on failure
    """
    target = load_cluster(cluster)
    spec, cluster_id = target.spec(), target.cluster_id
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # 1-2: every check before anything changes: nodes (host keys verified), health, member list
    facts = node_facts.submit(spec)
    state = steps.read_membership(target.access(timeout=HEALTH_TIMEOUT))
    options = RestoreOptions(run_id=run_id, restore_control_plane=restore_control_plane)
    plan = steps.plan_member(spec, facts.result(), state, failed_node, healthy_node, options)
    info = plan.info
    plan_key = plan_artifact(plan, dry_run)
    if dry_run:
        get_run_logger().info("dry run: nothing changed; the plan is in artifact %s", plan_key)
        return {"dry_run": True, "plan": plan_key, **{k: info[k] for k in ("failed", "healthy", "remove_id")}}
    if not confirm:
        what = f"Replacing member {info['failed']} (member remove/add, data dir set aside)"
        confirm_or_refuse(cluster_id, what, timeout=confirm_timeout)
    # 3-7: copy files, rewrite etcd.conf, set data aside, member remove, member add, start, check, control plane
    report = run_plan(target, plan)
    report_key = publish_report(plan, report)
    if not report.ok:
        left = "".join(f"; {note}" for note in not_undone(plan, report))
        raise EtcdBackupError(
            f"member replacement {outcome(report)}{left} (see {report_key}): {report.error}",
            step="restore member",
            node=info["failed"],
        )
    get_run_logger().info("%s replaced in %s in %.1f s", info["failed"], cluster_id, report.seconds)
    return {
        "failed": info["failed"],
        "healthy": info["healthy"],
        "removed": info["remove_id"],
        "report": report_key,
        "seconds": report.seconds,
        "members": report.checks.get("member"),
        "data": report.checks.get("data"),
    }
