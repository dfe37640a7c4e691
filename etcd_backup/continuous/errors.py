"""Errors of continuous backup and replay, in the project's one hierarchy (etcd_backup.errors)."""

from __future__ import annotations

from etcd_backup.errors import BackupCorrupt, EtcdBackupError


class StartCompacted(EtcdBackupError):
    """etcd no longer has the watch's start revision: take a full backup now and follow from it."""

    def __init__(self, start_revision: int, compact_revision: int, *, node: str | None = None):
        self.start_revision = start_revision
        self.compact_revision = compact_revision
        super().__init__(
            f"revision {start_revision} is compacted (etcd keeps revisions from {compact_revision} on): "
            "a full backup is needed before following again",
            step="watch",
            node=node,
        )


class WatchBroken(EtcdBackupError):
    """A member's watch stream ended, stalled or was canceled by etcd: the follower moves to another member."""

    transient = True


class HistoryBroken(EtcdBackupError):
    """The watch skipped a revision or another etcd cluster answered: the chain must restart from a full backup."""


class SegmentCorrupt(BackupCorrupt):
    """A segment is missing, fails its sha256, does not decode, or its revisions are not contiguous."""


class ReplayMismatch(EtcdBackupError):
    """The target etcd's revision is not the one replay expects (something else wrote to it)."""
