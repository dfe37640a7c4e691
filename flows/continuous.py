"""The continuous backup flow: follow every change of a cluster into segments, reporting the lag, until stopped.

Runbook: find where to follow from (after the last uploaded segment, else after the newest full backup of
this etcd cluster); follow on a task run; when there is no full backup yet, take one as soon as the watch
runs; every `report_seconds` log the lag, and alert once when it passes `lag_alert_seconds`; when etcd has
compacted the start revision (or the cluster was restored and is a new etcd cluster), take a full backup at
once and follow on from it, saying so.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from prefect.futures import PrefectFuture

from blocks import EtcdCluster, load_cluster, load_storage
from blocks.loading import load_block
from etcd_backup import flow_names
from etcd_backup.compression import Compression
from etcd_backup.continuous.runner import ContinuousBackup, StartPoint
from etcd_backup.continuous.writer import Lag
from etcd_backup.errors import ConfigError, EtcdUnavailable
from etcd_backup.storage.base import Storage
from flows.failures import readable_failures
from flows.notify import notify_on_failure
from flows.report import human_size
from tasks import backup as backup_steps
from tasks import continuous as steps
from tasks.artifacts import artifact_key

START_TIMEOUT = 120.0  # seconds for the first watch stream to open before the full backup of a new chain


@flow(name=flow_names.CONTINUOUS_BACKUP, on_failure=[notify_on_failure])
@readable_failures
def continuous_backup(
    cluster: str,
    storage: str,
    encrypt_to: list[str] = [],  # noqa: B006 - Prefect shows the default in the run form
    compression: Compression = "zstd",
    segment_seconds: float = 2.0,
    segment_mb: float = 8.0,
    buffer_mb: float = 64.0,
    lag_alert_seconds: float = 60.0,
    report_seconds: float = 60.0,
    run_minutes: float | None = None,
    notify: str | None = None,
) -> dict:
    """Follow every change of one etcd cluster into segments in storage, until stopped (or for run_minutes).

    Args:
        cluster: name of the EtcdCluster block
        storage: storage block as '<block-type-slug>/<name>', the same as the cluster's backups
        encrypt_to: age public keys (age1...) or SSH public keys, as for the backups
        compression: of the full backups this flow takes (segments are always zstd)
        segment_seconds: close and upload a segment at the latest this long after its first change
        segment_mb: ... or once it holds this many MB of changes
        buffer_mb: changes waiting for upload at most (the watch waits beyond it; etcd keeps the history)
        lag_alert_seconds: alert through `notify` when changes wait longer than this for storage
        report_seconds: log the lag this often
        run_minutes: stop after this long (a schedule then starts the next run, which resumes); none: run on
        notify: notification block as '<block-type-slug>/<name>' for lag alerts and failures
    """
    if segment_seconds <= 0 or segment_mb <= 0 or buffer_mb < segment_mb:
        raise ConfigError("segment_seconds and segment_mb must be > 0 and buffer_mb >= segment_mb", step="parameters")
    target = load_cluster(cluster)
    alert = load_block(notify, what="notify block") if notify else None
    deadline = time.monotonic() + run_minutes * 60 if run_minutes else None
    lag = LagWatch(target.cluster_id, lag_alert_seconds, report_seconds, alert)
    done: dict = {"runs": [], "full_backups": [], "restarts": []}
    with load_storage(storage).build() as store:
        access = target.access()
        lineage = steps.etcd_lineage(access)
        point = steps.find_start_point(store, target.cluster_id, lineage)
        while True:
            backup = ContinuousBackup(
                access,
                store,
                target.cluster_id,
                start_revision=point.revision,
                etcd_cluster_id=lineage,
                recipients=list(encrypt_to),
                segment_seconds=segment_seconds,
                segment_mb=segment_mb,
                buffer_mb=buffer_mb,
            )
            running = steps.follow.submit(backup)
            if point.needs_backup:
                key = full_backup(target, store, backup, running, compression, list(encrypt_to))
                done["full_backups"] += [key] if key else []
            end = lag.watch(running, backup, deadline)
            done["runs"].append(end.summary)
            done["max_lag_seconds"] = lag.worst
            if not end.restart:
                break
            get_run_logger().warning("%s: taking a full backup now and following on from it", end.restart)
            done["restarts"].append(end.restart)
            lineage = steps.etcd_lineage(access)
            point = StartPoint(None, end.restart, needs_backup=True)
    return report(target.cluster_id, done)


def full_backup(
    target: EtcdCluster,
    store: Storage,
    backup: ContinuousBackup,
    running: PrefectFuture,
    compression: Compression,
    encrypt_to: list[str],
) -> str | None:
    """Once the watch runs, take the full backup a new chain starts from (the backup flow's own task).

    None when following ended before a watch opened (its end says why; the caller starts again).
    """
    deadline = time.monotonic() + START_TIMEOUT
    while not backup.started.wait(0.5):
        if running.state.is_final():
            return None
        if time.monotonic() > deadline:
            backup.stop()
            raise EtcdUnavailable(f"no watch opened within {START_TIMEOUT:.0f} s", step="follow")
    sources = backup_steps.choose_sources(target.access())
    record = backup_steps.snapshot_to_storage(target, store, compression, encrypt_to, sources)
    get_run_logger().info(
        "new chain: following from revision %d; full backup %s at revision %d",
        backup.start_revision,
        record.key,
        record.revision,
    )
    return record.key


class LagWatch:
    """Report the lag every report_seconds and alert once each time it passes the threshold (in the flow's thread)."""

    def __init__(self, cluster_id: str, threshold: float, every: float, alert: Block | None):
        self.cluster_id, self.threshold, self.every, self.alert = cluster_id, threshold, every, alert
        self.alerting = False
        self.worst = 0.0

    def watch(self, running: PrefectFuture, backup: ContinuousBackup, deadline: float | None) -> steps.FollowEnd:
        """Until the follow task ends (or the deadline stops it): lag lines, alerts; the task's result."""
        logger = get_run_logger()
        last = time.monotonic()
        while not running.state.is_final():
            running.wait(1.0)
            now = time.monotonic()
            if deadline is not None and now >= deadline and not backup.follower.stopped:
                logger.info("run time is up: stopping after the last changes are uploaded")
                backup.stop()
            current = backup.lag()
            self.worst = max(self.worst, current.seconds)
            self.check(current)
            if now - last >= self.every:
                last = now
                logger.info("lag: %s", describe(current))
        return running.result()

    def check(self, lag: Lag) -> None:
        """Alert when the lag passes the threshold, once until it is back under half of it."""
        logger = get_run_logger()
        if lag.seconds > self.threshold and not self.alerting:
            self.alerting = True
            text = f"changes of {self.cluster_id} wait {lag.seconds:.0f} s for storage: {describe(lag)}"
            logger.warning("lag alert: %s", text)
            self.send(text, f"{flow_names.CONTINUOUS_BACKUP}: {self.cluster_id} lags {lag.seconds:.0f} s")
        elif self.alerting and lag.seconds < self.threshold / 2:
            self.alerting = False
            logger.info("lag back to %.1f s", lag.seconds)
            self.send(f"changes of {self.cluster_id} are stored again within {lag.seconds:.0f} s", "lag recovered")

    def send(self, body: str, subject: str) -> None:
        """Notify through the block, if any; a failing alert is logged, never fatal."""
        if self.alert is None:
            return
        try:
            self.alert.notify(body, subject=subject)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - an alert that fails must not stop the backup
            get_run_logger().error("could not send the lag alert: %s", exc.__class__.__name__)


def describe(lag: Lag) -> str:
    """The lag on one line."""
    return (
        f"{lag.revisions} revisions, {lag.seconds:.1f} s behind (uploaded {lag.uploaded_revision}, "
        f"cluster at {lag.cluster_revision}); {lag.pending_segments} segment(s), {human_size(lag.pending_bytes)} "
        f"waiting; {lag.uploads} uploads, {lag.upload_errors} upload errors"
        + (f" (last: {lag.last_error})" if lag.last_error else "")
        + f"; member {lag.endpoint or '(none)'}, {lag.failovers} failover(s)"
    )


def report(cluster_id: str, done: dict) -> dict:
    """A markdown artifact of the runs, full backups and restarts; the flow's result."""
    runs = done["runs"]
    lines = [
        f"# Continuous backup of {cluster_id}",
        "",
        f"Ended {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC.",
        "",
        "| from revision | uploaded up to | uploads | failovers | seconds |",
        "|---|---|---|---|---|",
        *(
            f"| {r.start_revision} | {r.uploaded_revision} | {r.uploads} | {r.failovers} | {r.seconds:.0f} |"
            for r in runs
        ),
        "",
        *(f"- full backup `{key}`" for key in done["full_backups"]),
        *(f"- restarted: {why}" for why in done["restarts"]),
    ]
    create_markdown_artifact("\n".join(lines), key=artifact_key("continuous", cluster_id))
    return {
        "runs": [[r.start_revision, r.uploaded_revision] for r in runs],
        "start_revision": runs[0].start_revision,
        "uploaded_revision": runs[-1].uploaded_revision,
        "uploads": sum(r.uploads for r in runs),
        "failovers": sum(r.failovers for r in runs),
        "full_backups": done["full_backups"],
        "restarts": done["restarts"],
        "max_lag_seconds": done.get("max_lag_seconds", 0.0),
    }
