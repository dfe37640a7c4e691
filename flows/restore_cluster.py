"""The whole-cluster restore flow (quorum lost; runbook 3.1.2 and 3.2.2), with dry run, confirmation and rollback."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import AgeIdentity, load_cluster, load_storage
from blocks.loading import load_block
from etcd_backup import flow_names
from etcd_backup.errors import EtcdBackupError
from etcd_backup.restore.plan import RestoreOptions
from etcd_backup.restore.render import outcome
from flows import locks
from flows.execute import run_plan
from flows.failures import readable_failures
from flows.notify import notify_on_failure
from flows.point_in_time import rebuild_point, refuse_if_different, result_fields
from flows.restore_report import plan_artifact, publish_report
from flows.safety import confirm_or_refuse
from tasks import restore as steps
from tasks.cluster import node_facts
from tasks.continuous import check_restored

HEALTH_TIMEOUT = 3.0
WORK_DIR = os.environ.get("ETCD_BACKUP_WORK_DIR")  # where the flow keeps the fetched snapshot during a run
WIRE = os.environ.get("ETCD_BACKUP_WIRE", "zstd")  # "raw": send the snapshot to the nodes uncompressed
STEP_THREADS = 64  # task runs waiting on their node's previous step hold a thread each


@flow(
    name=flow_names.RESTORE_CLUSTER,
    on_failure=[notify_on_failure],
    task_runner=ThreadPoolTaskRunner(max_workers=STEP_THREADS),
)
@readable_failures
@locks.restore_lock
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
    allow_older: bool = False,
    confirm_timeout: int = 900,
    notify: str | None = None,
    to_revision: int | None = None,
    to_time: datetime | None = None,
) -> dict:
    """Restore every member of a cluster that lost quorum from one verified backup; undo everything on failure.

    With to_revision or to_time (point in time), the newest full backup before the target is restored into a
    scratch etcd, the continuous backup segments are replayed on it up to the target, and that snapshot is
    restored: the cluster's revision is then exactly the target (no --bump-revision).

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
        allow_older: with "latest", restore the newest good backup even when a newer one is damaged
        confirm_timeout: seconds to wait for the confirmation
        notify: notification block as '<block-type-slug>/<name>' to alert on failure
        to_revision: restore the cluster as it was at this revision (point in time; keep backup "latest")
        to_time: restore the last revision received at or before this time (UTC unless it says otherwise)
    """
    target = load_cluster(cluster)
    spec, cluster_id = target.spec(), target.cluster_id
    age = load_block(identity, AgeIdentity, "identity block") if identity else None
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = tempfile.mkdtemp(prefix=f"etcd-restore-{run_id}-", dir=WORK_DIR)
    snapshot_path = os.path.join(work, "snapshot.db")
    try:
        # 1-2: every check, and the backup fetched and verified, before anything changes (side by side)
        facts = node_facts.submit(spec)
        quorum = steps.check_quorum.submit(target.access(timeout=HEALTH_TIMEOUT), spec, force)
        rebuilt = None
        with load_storage(storage).build() as store:
            if to_revision is None and to_time is None:
                choice = steps.choose_backup(store, cluster_id, backup, allow_older)
                snapshot, choice = steps.fetch_backup(store, choice, age, snapshot_path, allow_older)
            else:
                snapshot, choice, rebuilt = rebuild_point(
                    store, cluster_id, backup, to_revision, to_time, age, snapshot_path
                )
        token = f"{cluster_id}-{run_id}-{secrets.token_hex(3)}".lower()
        what = rebuilt.describe() if rebuilt else ""
        options = RestoreOptions(run_id, restore_control_plane, WIRE, point_in_time=what)
        plan = steps.plan_restore(spec, facts.result(), snapshot, retained_node, token, options)
        if dry_run or not confirm:
            quorum.result()  # refuses while quorum holds; else checked again below, before any node changes
        plan_key = plan_artifact(plan, dry_run, choice)
        if dry_run:
            get_run_logger().info("dry run: nothing changed; the plan is in artifact %s", plan_key)
            found = {"dry_run": True, "plan": plan_key, "backup": snapshot.key, "retained": plan.info["retained"]}
            return found | result_fields(rebuilt)
        if not confirm:
            confirm_or_refuse(cluster_id, f"Restoring {what or choice.describe()}", timeout=confirm_timeout)
        # 3-8: upload, then (quorum checked) stop, refill, rewrite etcd.conf, set aside, restore, start together
        report = run_plan(target, plan, snapshot_path, gate=quorum.result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report_key = publish_report(plan, report)
    if not report.ok:
        raise EtcdBackupError(f"restore {outcome(report)} (see {report_key}): {report.error}", step="restore")
    if rebuilt is not None:
        refuse_if_different(check_restored(target.access(), rebuilt), rebuilt)
    get_run_logger().info("cluster %s restored from %s in %.1f s", cluster_id, snapshot.key, report.seconds)
    return {
        "backup": snapshot.key,
        "skipped": [key for key, _ in choice.skipped],
        "retained": plan.info["retained"],
        "token": token,
        "report": report_key,
        "seconds": report.seconds,
        "data": report.checks.get("data"),
    } | result_fields(rebuilt)
