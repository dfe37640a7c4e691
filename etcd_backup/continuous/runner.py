"""Continuous backup as one blocking call: where to start, then follow and upload until stopped."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from etcd_backup import etcd
from etcd_backup.catalog import list_backups
from etcd_backup.continuous.chain import backup_revision, list_segments
from etcd_backup.continuous.manifest import SegmentManifest
from etcd_backup.continuous.watch import Follower
from etcd_backup.continuous.writer import Lag, SegmentWriter
from etcd_backup.storage.base import Storage


@dataclass(frozen=True)
class StartPoint:
    """Where following starts: a revision, or None for a new chain (follow from now, then take a full backup)."""

    revision: int | None
    reason: str


def start_point(storage: Storage, cluster_id: str, prefix: str = "") -> StartPoint:
    """Resume after the last complete segment if it is not older than the newest full backup; else after that backup.

    A new chain (revision None) when there is no complete full backup, or when the newest one's revision
    is not exact (its snapshot may hold an earlier revision than its manifest says, so following from
    manifest revision + 1 could leave a hole): then follow from the cluster's current revision and take
    a full backup once the watch runs (ContinuousBackup.started).
    """
    backups = [b for b in list_backups(storage, cluster_id, prefix) if backup_revision(b) is not None]
    newest = max(backups, key=lambda b: (backup_revision(b) or 0, b.time), default=None)
    segments = list_segments(storage, cluster_id, prefix).complete
    last = max((s.last_revision for s in segments), default=0)
    newest_revision = backup_revision(newest) if newest else None
    if last and (newest_revision is None or last >= newest_revision):
        return StartPoint(last + 1, f"resume after the last uploaded segment (revision {last})")
    if newest is None or newest.manifest is None or newest_revision is None:
        return StartPoint(None, "no complete full backup: start a new chain")
    if not newest.manifest.revision_exact:
        return StartPoint(None, f"newest full backup {newest.key} has an inexact revision: start a new chain")
    return StartPoint(newest_revision + 1, f"follow from full backup {newest.key} (revision {newest_revision})")


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
            access, start_revision, progress_interval=progress_interval, give_up_after=give_up_after
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
