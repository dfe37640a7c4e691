"""The whole-cluster restore flow (quorum lost; runbook 3.1.2 and 3.2.2), with dry run, confirmation and rollback."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from datetime import UTC, datetime

from prefect import flow, get_run_logger

from blocks import AgeIdentity, EtcdCluster, load_storage
from etcd_backup.errors import EtcdBackupError
from etcd_backup.restore.plan import RestoreOptions
from flows.notify import notify_on_failure
from flows.safety import confirm_or_refuse, plan_artifact, report_artifact
from tasks import restore as steps

HEALTH_TIMEOUT = 3.0
WORK_DIR = os.environ.get("ETCD_BACKUP_WORK_DIR")  # where the flow keeps the fetched snapshot during a run


@flow(name="etcd-restore-cluster", on_failure=[notify_on_failure])
def restore_cluster(
    cluster: str,
    storage: str,
    backup: str = "latest",
    retained_node: str | None = None,
    restore_control_plane: bool = False,
    confirm: bool = False,
    dry_run: bool = False,
    identity: str | None = None,
    force: bool = False,
    confirm_timeout: int = 900,
    notify: str | None = None,
) -> dict:
    """Restore every member of a cluster that lost quorum from one verified backup; undo everything on failure.

    Args:
        cluster: name of the EtcdCluster block
        storage: storage block holding the backups, as '<block-type-slug>/<name>'
        backup: "latest" (the newest complete backup) or the key of one backup
        retained_node: the node to copy etcd files from (default: the best reachable one)
        restore_control_plane: also bring back kube-apiserver, controller-manager and scheduler on rebuilt nodes
        confirm: skip the typed confirmation (for automation); without it the run pauses and asks
        dry_run: only publish the plan; change nothing
        identity: AgeIdentity block name, for encrypted backups
        force: restore even though quorum is healthy
        confirm_timeout: seconds to wait for the confirmation
        notify: notification block as '<block-type-slug>/<name>' to alert on failure
    """
    target = EtcdCluster.load(cluster)
    spec, cluster_id = target.spec(), target.cluster_id
    age = AgeIdentity.load(identity) if identity else None
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = tempfile.mkdtemp(prefix=f"etcd-restore-{run_id}-", dir=WORK_DIR)
    try:
        # 1-2: every check, and the backup fetched and verified, before anything changes
        facts = steps.gather_facts(spec)
        steps.check_quorum(target.access(timeout=HEALTH_TIMEOUT), len(spec.nodes), force)
        with load_storage(storage).build() as store:
            chosen = steps.choose_backup(store, cluster_id, backup)
            snapshot = steps.fetch_backup(store, chosen, age, os.path.join(work, "snapshot.db"))
        token = f"{cluster_id}-{run_id}-{secrets.token_hex(3)}".lower()
        options = RestoreOptions(run_id=run_id, restore_control_plane=restore_control_plane)
        plan = steps.plan_restore(spec, facts, snapshot, retained_node, token, options)
        plan_key = plan_artifact(plan, dry_run)
        if dry_run:
            get_run_logger().info("dry run: nothing changed; the plan is in artifact %s", plan_key)
            return {"dry_run": True, "plan": plan_key, "backup": snapshot.key, "retained": plan.retained}
        if not confirm:
            confirm_or_refuse(cluster_id, f"Restoring backup {snapshot.key}", timeout=confirm_timeout)
        # 3-8: refill, reconfigure, stop, set aside, restore everywhere, start together, control plane
        report = steps.execute_plan(target, plan, os.path.join(work, "snapshot.db"))
        report_key = report_artifact(plan, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not report.ok:
        state = "rolled back" if report.rolled_back and not report.rollback_errors else "NOT fully rolled back"
        raise EtcdBackupError(
            f"restore failed and was {state} (see artifact {report_key}): {report.error}", step="restore"
        )
    get_run_logger().info("cluster %s restored from %s in %.1f s", cluster_id, snapshot.key, report.seconds)
    return {
        "backup": snapshot.key,
        "retained": plan.retained,
        "token": token,
        "report": report_key,
        "seconds": report.seconds,
        "data": report.checks.get("data"),
    }
