"""Segments as listed, full backups as chain bases, and choosing the backup and segments that reach a revision.

Listing reads names only (a day of 2-second segments is ~43,000 objects): cluster, revisions and lineage
(etcd's cluster id) are in the name, completeness is "its manifest object is listed". A chain never mixes
lineages: after a whole-cluster restore etcd has a new cluster id and reuses revision numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from etcd_backup.catalog import MANIFEST_SUFFIX, Backup, manifest_key
from etcd_backup.continuous.errors import SegmentCorrupt
from etcd_backup.continuous.names import lineage_of, parse_segment_key, segment_list_prefix
from etcd_backup.errors import ConfigError
from etcd_backup.storage.base import Storage


@dataclass(frozen=True)
class Segment:
    """One segment object of a cluster as listed (complete when its manifest object exists)."""

    key: str
    cluster_id: str
    first_revision: int
    last_revision: int
    lineage: str
    encrypted: bool
    size: int
    complete: bool
    modified: datetime | None = None

    @property
    def manifest_key(self) -> str:
        """Where this segment's manifest lives (or would live)."""
        return manifest_key(self.key)


@dataclass(frozen=True)
class SegmentListing:
    """A cluster's segments: complete ones sorted by revision, and incomplete ones (no manifest), ignored."""

    complete: list[Segment]
    incomplete: list[Segment]

    def lineages(self) -> list[str]:
        """Every lineage that has a complete segment."""
        return sorted({s.lineage for s in self.complete})


def list_segments(storage: Storage, cluster_id: str, prefix: str = "") -> SegmentListing:
    """The segments of cluster_id under prefix, by (first, last) revision; foreign objects are skipped."""
    prefix = prefix.strip("/")
    objects = {o.key: o for o in storage.list(segment_list_prefix(cluster_id, prefix))}
    complete: list[Segment] = []
    incomplete: list[Segment] = []
    for key, info in objects.items():
        if key.endswith(MANIFEST_SUFFIX):
            continue
        name = parse_segment_key(key)
        if name is None or name.cluster_id != cluster_id or name.prefix != prefix:
            continue
        done = manifest_key(key) in objects
        segment = Segment(
            key, cluster_id, name.first_revision, name.last_revision, name.lineage, name.encrypted, info.size, done,
            info.modified,
        )  # fmt: skip
        (complete if done else incomplete).append(segment)
    return SegmentListing(sorted(complete, key=_order), sorted(incomplete, key=_order))


def _order(segment: Segment) -> tuple[int, int, str]:
    return segment.first_revision, segment.last_revision, segment.key


def in_lineage(segments: Iterable[Segment], lineage: str) -> list[Segment]:
    """The segments of one lineage, by revision."""
    return sorted((s for s in segments if s.lineage == lineage), key=_order)


@dataclass(frozen=True)
class Base:
    """A complete full backup as the start of a chain: its snapshot holds a revision in low..high, of lineage."""

    backup: Backup
    low: int
    high: int
    lineage: str  # "" when the manifest does not say (written before lineages were recorded)

    @property
    def exact(self) -> bool:
        """True when the snapshot's revision is known exactly."""
        return self.low == self.high


def base_of(backup: Backup) -> Base | None:
    """The backup as a chain base, or None (incomplete, legacy, or its revision's lower bound was not recorded)."""
    m = backup.manifest
    if not backup.complete or m is None:
        return None
    low = m.revision if m.revision_exact else m.revision_low
    if low is None and m.certificate is not None:
        low = m.certificate.revision_low
    if low is None or low > m.revision:
        return None
    return Base(backup, low, m.revision, lineage_of(m.etcd_cluster_id) if m.etcd_cluster_id else "")


def bases(backups: Iterable[Backup]) -> list[Base]:
    """The backups usable as chain bases, oldest revision first."""
    found = [b for b in map(base_of, backups) if b is not None]
    return sorted(found, key=lambda b: (b.high, b.backup.time, b.backup.key))


def chain_for(segments: Sequence[Segment], base: int, target: int, incomplete: Sequence[Segment] = ()) -> list[Segment]:
    """The segments (of one lineage) that carry revisions base+1..target in order; SegmentCorrupt naming the gap.

    `incomplete` (segments without manifest) are never used, but named when they lie in the gap.
    """
    chosen: list[Segment] = []
    need = base + 1
    while need <= target:
        usable = [s for s in segments if s.first_revision <= need <= s.last_revision]
        if not usable:
            after = [s for s in segments if s.first_revision > need]
            upto = min(after[0].first_revision - 1 if after else target, target)
            partial = [s.key for s in incomplete if s.first_revision <= upto and s.last_revision >= need]
            raise SegmentCorrupt(
                f"no complete segment holds revisions {need}..{upto} "
                f"(previous: {chosen[-1].key if chosen else f'full backup at {base}'}; "
                f"next: {after[0].key if after else 'none'})"
                + (f"; without manifest there (incomplete or damaged): {', '.join(partial)}" if partial else ""),
                step="choose segments",
            )
        best = max(usable, key=lambda s: s.last_revision)
        chosen.append(best)
        need = best.last_revision + 1
    return chosen


def run_end(segments: Sequence[Segment], base: int) -> int:
    """The last revision reachable from base through consecutive segments (of one lineage, sorted)."""
    end = base
    for segment in segments:  # sorted by first revision: the first one that starts too late ends the run
        if segment.first_revision > end + 1:
            break
        end = max(end, segment.last_revision)
    return end


@dataclass(frozen=True)
class RestorePoint:
    """What a point-in-time restore uses: a full backup, then these segments in order, up to target_revision."""

    backup: Backup
    base_low: int
    base_high: int
    lineage: str
    segments: list[Segment]
    target_revision: int
    target_time: datetime | None = None

    def describe(self) -> str:
        """One line for logs and the dry run."""
        when = f" (received {self.target_time.isoformat()})" if self.target_time else ""
        at = (
            f"revision {self.base_high}"
            if self.base_low == self.base_high
            else f"revisions {self.base_low}..{self.base_high}"
        )
        return (
            f"full backup {self.backup.key} at {at}, then {len(self.segments)} segment(s) "
            f"up to revision {self.target_revision}{when}"
        )


def choose(
    backups: Iterable[Backup],
    segments: Sequence[Segment],
    to_revision: int,
    lineage: str,
    incomplete: Sequence[Segment] = (),
) -> RestorePoint:
    """The newest full backup of lineage at or before to_revision whose segments reach it, and those segments."""
    ours, partial = in_lineage(segments, lineage), in_lineage(incomplete, lineage)
    candidates = [b for b in reversed(bases(backups)) if b.lineage == lineage and b.high <= to_revision]
    if not candidates:
        raise ConfigError(
            f"no complete full backup of etcd cluster {lineage} at or before revision {to_revision}",
            step="choose backup",
        )
    first_error: SegmentCorrupt | None = None
    for base in candidates:
        try:
            chosen = chain_for(ours, base.low, to_revision, partial)
            return RestorePoint(base.backup, base.low, base.high, lineage, chosen, to_revision)
        except SegmentCorrupt as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error
