"""Pure retention of segments: those wholly older than the oldest kept full backup go with it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from etcd_backup.catalog import Backup
from etcd_backup.continuous.chain import Segment, backup_revision
from etcd_backup.storage.base import Storage


@dataclass
class SegmentRetention:
    """Segments to keep and to remove, with one reason per key."""

    keep: list[Segment] = field(default_factory=list)
    remove: list[Segment] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


def plan_segments(segments: Sequence[Segment], kept_backups: Iterable[Backup], cluster_id: str) -> SegmentRetention:
    """Remove segments whose last revision is at or before the oldest kept full backup's; never the newest.

    `kept_backups` is what the backup retention plan keeps (retention.RetentionPlan.keep); only complete
    backups of cluster_id count. With none, nothing is removed. Segments of other clusters are never removed.
    """
    cuts = [r for b in kept_backups if b.cluster_id == cluster_id and (r := backup_revision(b)) is not None]
    ours = [s for s in segments if s.cluster_id == cluster_id]
    newest = max((s.last_revision for s in ours), default=None)
    result = SegmentRetention()
    for segment in segments:
        reason = _reason_to_keep(segment, cluster_id, min(cuts) if cuts else None, newest)
        (result.keep if reason.startswith("keep") else result.remove).append(segment)
        result.reasons[segment.key] = reason
    return result


def _reason_to_keep(segment: Segment, cluster_id: str, cut: int | None, newest: int | None) -> str:
    if segment.cluster_id != cluster_id:
        return f"keep: belongs to cluster {segment.cluster_id}, never pruned"
    if segment.last_revision == newest:
        return "keep: newest segment (restarts resume from it)"
    if cut is None:
        return "keep: no complete full backup is kept"
    if segment.last_revision > cut:
        return f"keep: holds revisions after the oldest kept full backup (revision {cut})"
    state = "" if segment.complete else " (incomplete: no manifest)"
    return f"remove: every revision is in the oldest kept full backup (revision {cut}){state}"


def prune_segments(storage: Storage, plan: SegmentRetention, dry_run: bool = True) -> list[str]:
    """Delete the planned segments, manifest first (a half-deleted one is merely incomplete); return their keys."""
    removed = []
    for segment in plan.remove:
        if not dry_run:
            storage.delete([segment.manifest_key])
            storage.delete([segment.key])
        removed.append(segment.key)
    return removed
