"""Cut revisions into segments and upload them on a thread, behind a bounded buffer, reporting the lag.

The watch thread calls `add` for each revision: it appends the encoded record to the open segment and
returns at once, unless more than `buffer_mb` of revisions wait for upload (storage slower than etcd
for long): then `add` blocks until the uploader catches up. Blocking the watch is the only safe
back-pressure: etcd keeps the history and resends it, so nothing is lost unless etcd compacts it first
(then the follower raises StartCompacted). The open segment is closed after `segment_seconds` (its
first revision's age) or at `segment_mb` of raw records, whichever comes first. The uploader stores
the oldest closed segments in order (several small ones that waited are merged into one object, up
to `segment_mb`), retries transient storage errors with backoff, and stops on a permanent one, which
`add` and `close` then raise.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from etcd_backup.continuous.manifest import SegmentManifest
from etcd_backup.continuous.records import Revision
from etcd_backup.continuous.segment import RawSegment, store_segment
from etcd_backup.encryption import parse_recipients
from etcd_backup.errors import ConfigError, EtcdBackupError, StorageError, TransientStorageError, is_transient
from etcd_backup.storage.base import Storage

MiB = 1 << 20


@dataclass(frozen=True)
class Lag:
    """How far storage is behind: revisions and seconds not yet uploaded, what waits, upload counts."""

    uploaded_revision: int
    received_revision: int
    cluster_revision: int
    revisions: int
    seconds: float
    pending_segments: int
    pending_bytes: int
    uploads: int
    upload_errors: int
    last_error: str
    endpoint: str = ""
    failovers: int = 0
    upload_seconds: float = 0.0  # the longest upload of a segment and its manifest so far


class SegmentWriter:
    """Gather revisions into segments and upload them (zstd, age to recipients) on a background thread."""

    def __init__(
        self,
        storage: Storage,
        cluster_id: str,
        *,
        prefix: str = "",
        recipients: Iterable[str] = (),
        segment_seconds: float = 2.0,
        segment_mb: float = 8.0,
        buffer_mb: float = 64.0,
        uploaded_revision: int = 0,
        level: int | None = None,
        on_upload: Callable[[SegmentManifest], None] | None = None,
    ):
        if segment_seconds <= 0 or segment_mb <= 0 or buffer_mb < segment_mb:
            raise ConfigError("segment_seconds and segment_mb must be > 0 and buffer_mb >= segment_mb")
        self.storage, self.cluster_id, self.prefix, self.level = storage, cluster_id, prefix, level
        self.recipient_keys = [r.strip() for r in recipients]
        self._recipients = parse_recipients(self.recipient_keys)
        self.segment_seconds, self.on_upload = segment_seconds, on_upload
        self._segment_bytes, self._buffer_bytes = int(segment_mb * MiB), int(buffer_mb * MiB)
        self._cond = threading.Condition()
        self._open = RawSegment()
        self._opened_at = 0.0
        self._closed: collections.deque[RawSegment] = collections.deque()
        self._closed_bytes = 0
        self._uploaded = self._received = uploaded_revision
        self._uploads = self._upload_errors = 0
        self._upload_seconds = 0.0
        self._last_error = ""
        self._error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="segment-uploader", daemon=True)

    def start(self) -> SegmentWriter:
        """Start the uploader thread."""
        self._thread.start()
        return self

    @property
    def uploaded_revision(self) -> int:
        """The last revision stored with its manifest (the start revision - 1 before the first upload)."""
        return self._uploaded

    def add(self, revision: Revision, endpoint: str = "", etcd_cluster_id: str = "") -> None:
        """Append the next revision; blocks only while the buffer is full; raises the uploader's error."""
        with self._cond:
            self._raise_error()
            if not self._open.chunks:
                self._opened_at = time.monotonic()
                self._cond.notify_all()  # the uploader times the new segment's close
            self._open.add(revision, endpoint, etcd_cluster_id)
            self._received = revision.revision
            if self._open.size >= self._segment_bytes or time.monotonic() - self._opened_at >= self.segment_seconds:
                self._close_open()
            while self._closed_bytes + self._open.size > self._buffer_bytes and self._error is None:
                self._cond.wait(1.0)
            self._raise_error()

    def lag(self, cluster_revision: int | None = None) -> Lag:
        """The lag now; cluster_revision (the follower's newest seen) adds what the watch has not delivered yet."""
        with self._cond:
            oldest = self._closed[0].first_received_ns if self._closed else self._open.first_received_ns
            waiting = bool(self._closed) or bool(self._open.chunks)
            newest = max(cluster_revision or 0, self._received)
            return Lag(
                uploaded_revision=self._uploaded,
                received_revision=self._received,
                cluster_revision=newest,
                revisions=newest - self._uploaded,
                seconds=round(max(0.0, time.time() - oldest / 1e9), 3) if waiting else 0.0,
                pending_segments=len(self._closed) + (1 if self._open.chunks else 0),
                pending_bytes=self._closed_bytes + self._open.size,
                uploads=self._uploads,
                upload_errors=self._upload_errors,
                last_error=self._last_error,
                upload_seconds=round(self._upload_seconds, 3),
            )

    def close(self, timeout: float | None = 60.0) -> None:
        """Close the open segment, upload everything (waiting up to timeout), stop; raise what went wrong."""
        with self._cond:
            self._closing = True
            self._close_open()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            self._raise_error()
            if self._closed:
                self._error = TransientStorageError(
                    f"revisions {self._uploaded + 1}..{self._received} not uploaded within {timeout} s",
                    step="upload segment",
                )
                self._cond.notify_all()
                raise self._error

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _close_open(self) -> None:
        """Move the open segment to the upload queue (caller holds the lock)."""
        if self._open.chunks:
            self._closed.append(self._open)
            self._closed_bytes += self._open.size
            self._open = RawSegment()
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._upload(batch)
        except BaseException as exc:  # noqa: BLE001 - raised in the watch thread by add() and by close()
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _next_batch(self) -> list[RawSegment] | None:
        """Wait for closed segments (closing the open one when it is old enough); None when closed and done."""
        with self._cond:
            while not self._closed:
                if self._closing or self._error is not None:
                    return None
                age = time.monotonic() - self._opened_at
                if self._open.chunks and age >= self.segment_seconds:
                    self._close_open()
                    break
                self._cond.wait(self.segment_seconds - age if self._open.chunks else self.segment_seconds)
            batch, size = [self._closed[0]], self._closed[0].size
            for raw in list(self._closed)[1:]:
                if size + raw.size > self._segment_bytes:
                    break
                batch.append(raw)
                size += raw.size
            return batch

    def _upload(self, batch: list[RawSegment]) -> None:
        """Store the batch as one segment, retrying transient errors; then drop it from the queue."""
        merged = RawSegment()
        for raw in batch:
            merged.extend(raw)
        delay = 0.5
        while True:
            began = time.monotonic()
            try:
                manifest = store_segment(
                    self.storage,
                    merged,
                    cluster_id=self.cluster_id,
                    prefix=self.prefix,
                    recipient_keys=self.recipient_keys,
                    recipients=self._recipients,
                    level=self.level,
                )
                break
            except (StorageError, EtcdBackupError, OSError) as exc:
                if not (is_transient(exc) or isinstance(exc, OSError)):
                    raise
                self._note_error(exc)
                if self._wait_retry(delay):
                    raise
                delay = min(delay * 2, 10.0)
        with self._cond:
            for _ in batch:
                self._closed_bytes -= self._closed.popleft().size
            self._uploaded = merged.last_revision
            self._uploads += 1
            self._upload_seconds = max(self._upload_seconds, time.monotonic() - began)
            self._cond.notify_all()
        if self.on_upload:
            self.on_upload(manifest)

    def _note_error(self, exc: BaseException) -> None:
        with self._cond:
            self._upload_errors += 1
            self._last_error = str(exc)

    def _wait_retry(self, delay: float) -> bool:
        """Sleep before a retry; True when the writer was told to stop meanwhile (close timed out)."""
        with self._cond:
            self._cond.wait(delay)
            return self._error is not None
