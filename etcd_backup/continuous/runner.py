"""Continuous backup as one blocking call: where to start, then follow and upload until stopped."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from etcd_backup import etcd
from etcd_backup.catalog import list_backups
from etcd_backup.continuous.chain import bases, in_lineage, list_segments
from etcd_backup.continuous.manifest import SegmentManifest
from etcd_backup.continuous.names import lineage_of
from etcd_backup.continuous.watch import Follower
from etcd_backup.continuous.writer import Lag, SegmentWriter
from etcd_backup.storage.base import Storage


@dataclass(frozen=True)
class StartPoint:
    """Where following starts (None: from the cluster's revision now), and whether a full backup must follow."""

    revision: int | None
    reason: str
    needs_backup: bool = False


def start_point(storage: Storage, cluster_id: str, lineage: str, prefix: str = "") -> StartPoint:
    """Resume after the last complete segment of lineage unless the newest full backup is newer; else after that backup.

    `lineage` is etcd's cluster id now (etcd.status().cluster_id): segments and backups of an earlier etcd
    cluster (before a whole-cluster restore) are not resumed. Following from a backup starts after the lowest
    revision its snapshot may hold (revision_low), so no revision is missed when writes raced the snapshot.
    Without a full backup of lineage, needs_backup: follow (after the last segment, else from the cluster's
    current revision), then take a full backup once the watch runs (ContinuousBackup.started).
    """
    ours = lineage_of(lineage)
    anchors = [b for b in bases(list_backups(storage, cluster_id, prefix)) if b.lineage == ours]
    newest = anchors[-1] if anchors else None
    last = max(
        (s.last_revision for s in in_lineage(list_segments(storage, cluster_id, prefix).complete, ours)), default=0
    )
    if newest is None:
        why = f"no complete full backup of etcd cluster {ours}: follow, then take one"
        return StartPoint(last + 1 if last else None, why, needs_backup=True)
    if last >= newest.low:
        return StartPoint(last + 1, f"resume after the last uploaded segment (revision {last})")
    return StartPoint(newest.low + 1, f"follow from full backup {newest.backup.key} (revision {newest.low})")


@dataclass(frozen=True)
class RunSummary:
    """How a run of continuous backup ended."""

    start_revision: int
    uploaded_revision: int
    uploads: int
    failovers: int
    seconds: float


class ContinuousBackup:
    """Follow one cluster and upload its changes as segments until stop() (blocking run(), thread-safe stop/lag)."""

    def __init__(
        self,
        access: etcd.EtcdAccess,
        storage: Storage,
        cluster_id: str,
        *,
        start_revision: int | None,
        etcd_cluster_id: str = "",
        prefix: str = "",
        recipients: Iterable[str] = (),
        segment_seconds: float = 2.0,
        segment_mb: float = 8.0,
        buffer_mb: float = 64.0,
        progress_interval: float = 1.0,
        give_up_after: float | None = 300.0,
        on_upload: Callable[[SegmentManifest], None] | None = None,
    ):
        if start_revision is None:
            start_revision = etcd.status(access, etcd.pick_sources(access)[0]).revision + 1
        self.start_revision = start_revision
        self.follower = Follower(
            access,
            start_revision,
            progress_interval=progress_interval,
            give_up_after=give_up_after,
            etcd_cluster_id=etcd_cluster_id,
        )
        self.writer = SegmentWriter(
            storage,
            cluster_id,
            prefix=prefix,
            recipients=recipients,
            segment_seconds=segment_seconds,
            segment_mb=segment_mb,
            buffer_mb=buffer_mb,
            uploaded_revision=start_revision - 1,
            on_upload=on_upload,
        )
        self.started = self.follower.created  # set once a watch stream is open on a member
        self._began = time.monotonic()

    def run(self, on_lag: Callable[[Lag], None] | None = None, lag_every: float = 60.0) -> RunSummary:
        """Follow and upload until stop(); then flush what was received. Raises StartCompacted, HistoryBroken, ..."""
        self._began = time.monotonic()
        self.writer.start()
        done = threading.Event()
        reporter = threading.Thread(target=self._report, args=(on_lag, lag_every, done), daemon=True)
        if on_lag:
            reporter.start()
        failure: BaseException | None = None
        try:
            for revision in self.follower:
                self.writer.add(revision, self.follower.endpoint, self.follower.etcd_cluster_id)
        except BaseException as exc:  # noqa: BLE001 - raised below, after what was received is uploaded
            failure = exc
            self.follower.stop()
        finally:
            done.set()
        try:
            self.writer.close()
        except BaseException:
            if failure is None:
                raise
        if failure is not None:
            raise failure
        return self.summary()

    def stop(self) -> None:
        """End run() soon, from any thread; what was received is still uploaded."""
        self.follower.stop()

    def lag(self) -> Lag:
        """Revisions and seconds not yet in storage, counting what etcd has and the watch has not delivered."""
        state = self.follower.state()
        lag = self.writer.lag(state.cluster_revision)
        seconds = lag.seconds
        if state.cluster_revision > state.next_revision - 1:  # the watch itself is behind
            since = state.current_at or (time.time() - (time.monotonic() - self._began))
            seconds = max(seconds, round(time.time() - since, 3))
        return dataclasses.replace(lag, seconds=seconds, endpoint=state.endpoint, failovers=state.failovers)

    def summary(self) -> RunSummary:
        """Where the run stands."""
        lag = self.writer.lag()
        return RunSummary(
            self.start_revision,
            lag.uploaded_revision,
            lag.uploads,
            self.follower.state().failovers,
            round(time.monotonic() - self._began, 3),
        )

    def _report(self, on_lag: Callable[[Lag], None], every: float, done: threading.Event) -> None:
        while not done.wait(every):
            try:
                on_lag(self.lag())
            except Exception:  # noqa: BLE001 - a failing report must not stop the backup
                pass
