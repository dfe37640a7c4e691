"""Pure retention of segments: those wholly older than the oldest kept full backup of their lineage go with it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from etcd_backup.catalog import Backup
from etcd_backup.continuous.chain import Base, Segment, bases, list_segments
from etcd_backup.storage.base import Storage


@dataclass
class SegmentRetention:
    """Segments to keep and to remove, with one reason per key."""

    keep: list[Segment] = field(default_factory=list)
    remove: list[Segment] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


def plan_segments(segments: Sequence[Segment], kept_backups: Iterable[Backup], cluster_id: str) -> SegmentRetention:
    """Remove segments no kept full backup can start a replay before; never the newest, never another cluster's.

    `kept_backups` is what the backup retention plan keeps (retention.RetentionPlan.keep). In a lineage
    with a kept backup, a segment whose last revision is at or before that lineage's oldest kept backup is
    removed. A lineage with no kept backup (the history before a whole-cluster restore) loses the segments
    stored before the oldest kept backup of all. With no kept backup at all, nothing is removed.
    """
    anchors = [b for b in bases(kept_backups) if b.backup.cluster_id == cluster_id]
    ours = [s for s in segments if s.cluster_id == cluster_id]
    newest = max(ours, key=lambda s: (s.modified is not None, s.modified, s.last_revision), default=None)
    result = SegmentRetention()
    for segment in segments:
        reason = _reason(segment, cluster_id, anchors, newest)
        (result.keep if reason.startswith("keep") else result.remove).append(segment)
        result.reasons[segment.key] = reason
    return result


def _reason(segment: Segment, cluster_id: str, anchors: list[Base], newest: Segment | None) -> str:
    if segment.cluster_id != cluster_id:
        return f"keep: belongs to cluster {segment.cluster_id}, never pruned"
    if segment is newest:
        return "keep: newest segment (restarts resume from it)"
    if not anchors:
        return "keep: no complete full backup is kept"
    state = "" if segment.complete else " (incomplete: no manifest)"
    same = [b for b in anchors if b.lineage == segment.lineage]
    if same:
        cut = min(b.low for b in same)
        if segment.last_revision > cut:
            return f"keep: holds revisions after the oldest kept full backup (revision {cut})"
        return f"remove: every revision is in the oldest kept full backup (revision {cut}){state}"
    oldest = _oldest_time(anchors)
    if segment.modified is None or oldest is None or segment.modified >= oldest:
        return "keep: of an earlier etcd cluster (before a whole-cluster restore), newer than the oldest kept backup"
    return f"remove: of an earlier etcd cluster and older than the oldest kept full backup{state}"


def _oldest_time(anchors: list[Base]) -> datetime | None:
    times = [b.backup.manifest.created for b in anchors if b.backup.manifest is not None]
    return min(times) if times else None


def prune_segments(storage: Storage, plan: SegmentRetention, dry_run: bool = True) -> list[str]:
    """Delete the planned segments, manifest first (a half-deleted one is merely incomplete); return their keys."""
    removed = []
    for segment in plan.remove:
        if not dry_run:
            storage.delete([segment.manifest_key])
            storage.delete([segment.key])
        removed.append(segment.key)
    return removed


def prune_with(
    storage: Storage, cluster_id: str, kept_backups: Iterable[Backup], dry_run: bool = True, prefix: str = ""
) -> tuple[SegmentRetention, list[str]]:
    """List the cluster's segments, plan their retention against the kept backups, prune; (plan, removed keys)."""
    listing = list_segments(storage, cluster_id, prefix)
    plan = plan_segments(listing.complete + listing.incomplete, kept_backups, cluster_id)
    return plan, prune_segments(storage, plan, dry_run)
