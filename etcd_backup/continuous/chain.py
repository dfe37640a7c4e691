"""The catalog of segments: listing, coverage and gaps against the full backups, and choosing a restore point.

Listing reads names only (a day of 2-second segments is ~43,000 objects): cluster and revisions are in
the name, completeness is "its manifest object is listed". Manifests are read only where needed: for
the segments a restore uses, and O(log n) of them to turn a time into a revision.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from etcd_backup.catalog import MANIFEST_SUFFIX, Backup, list_backups, manifest_key
from etcd_backup.continuous import records
from etcd_backup.continuous.errors import SegmentCorrupt
from etcd_backup.continuous.manifest import SegmentManifest, read_segment_manifest
from etcd_backup.continuous.names import parse_segment_key, segment_list_prefix
from etcd_backup.continuous.segment import load_segment
from etcd_backup.encryption import parse_identities
from etcd_backup.errors import ConfigError, NotFound
from etcd_backup.storage.base import Storage


@dataclass(frozen=True)
class Segment:
    """One segment object of a cluster as listed (complete when its manifest object exists)."""

    key: str
    cluster_id: str
    first_revision: int
    last_revision: int
    encrypted: bool
    size: int
    complete: bool

    @property
    def manifest_key(self) -> str:
        """Where this segment's manifest lives (or would live)."""
        return manifest_key(self.key)


@dataclass(frozen=True)
class SegmentListing:
    """A cluster's segments: complete ones sorted by revision, and incomplete ones (no manifest), ignored."""

    complete: list[Segment]
    incomplete: list[Segment]


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
        segment = Segment(key, cluster_id, name.first_revision, name.last_revision, name.encrypted, info.size, done)
        (complete if done else incomplete).append(segment)
    order = lambda s: (s.first_revision, s.last_revision, s.key)  # noqa: E731
    return SegmentListing(sorted(complete, key=order), sorted(incomplete, key=order))


@dataclass(frozen=True)
class Gap:
    """Revisions first..last that no complete segment or full backup holds; targets up to unreachable_last are lost."""

    first: int
    last: int
    unreachable_last: int
    after: str
    before: str
    incomplete: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (
            f"revisions {self.first}..{self.last} are in no complete segment (after {self.after}, "
            f"before {self.before}): restore targets {self.first}..{self.unreachable_last} are unreachable"
        )
        if self.incomplete:
            text += "; segments without manifest there: " + ", ".join(self.incomplete)
        return text


@dataclass(frozen=True)
class Coverage:
    """Revision intervals a restore can reach (each starts at a full backup's revision) and every gap."""

    reachable: list[tuple[int, int]]
    gaps: list[Gap]
    incomplete: list[str] = field(default_factory=list)
    before_oldest_backup: list[str] = field(default_factory=list)


def backup_revision(backup: Backup) -> int | None:
    """The revision a complete backup's manifest records (None for legacy or incomplete backups)."""
    return backup.manifest.revision if backup.complete and backup.manifest is not None else None


def coverage(segments: Sequence[Segment], backups: Iterable[Backup], incomplete: Sequence[Segment] = ()) -> Coverage:
    """Which targets are reachable: from each full backup's revision on, as far as complete segments run unbroken."""
    bases = sorted({r for b in backups if (r := backup_revision(b)) is not None})
    if not bases:
        return Coverage([], [], [s.key for s in incomplete], [s.key for s in segments])
    intervals: list[tuple[int, int]] = []
    for base in bases:
        end = _run_end(segments, base)
        if intervals and base <= intervals[-1][1] + 1:
            intervals[-1] = (intervals[-1][0], max(intervals[-1][1], end))
        else:
            intervals.append((base, end))
    newest = max([intervals[-1][1], *(s.last_revision for s in segments)])
    gaps = []
    for first, last in _holes(segments, bases):
        resumes = [start for start, _ in intervals if start > last]
        gaps.append(_gap(first, last, resumes[0] - 1 if resumes else newest, segments, incomplete))
    return Coverage(
        intervals,
        gaps,
        [s.key for s in incomplete],
        [s.key for s in segments if s.last_revision <= bases[0]],
    )


def _holes(segments: Sequence[Segment], bases: list[int]) -> list[tuple[int, int]]:
    """Runs of revisions after the oldest full backup that neither a segment nor a backup holds."""
    spans = sorted([(s.first_revision, s.last_revision) for s in segments] + [(b, b) for b in bases])
    holes, need = [], bases[0] + 1
    for first, last in spans:
        if last < need:
            continue
        if first > need:
            holes.append((need, first - 1))
        need = last + 1
    return holes


def _run_end(segments: Sequence[Segment], base: int) -> int:
    """The last revision reachable from base through consecutive segments."""
    end = base
    for segment in segments:  # sorted by first revision: the first one that starts too late ends the run
        if segment.first_revision > end + 1:
            break
        end = max(end, segment.last_revision)
    return end


def _gap(first: int, last: int, unreachable: int, segments: Sequence[Segment], incomplete: Sequence[Segment]) -> Gap:
    before = [s.key for s in segments if s.last_revision == first - 1]
    after = [s.key for s in segments if s.first_revision > last]
    partial = tuple(s.key for s in incomplete if s.first_revision <= last and s.last_revision >= first)
    return Gap(
        first,
        last,
        max(unreachable, last),
        before[-1] if before else f"revision {first - 1}",
        after[0] if after else "the newest revision",
        partial,
    )


@dataclass(frozen=True)
class RestorePoint:
    """What a point-in-time restore uses: a full backup, then these segments in order, up to target_revision."""

    backup: Backup
    base_revision: int
    segments: list[Segment]
    target_revision: int
    target_time: datetime | None = None

    def describe(self) -> str:
        """One line for a dry run."""
        when = f" (received {self.target_time.isoformat()})" if self.target_time else ""
        return (
            f"full backup {self.backup.key} at revision {self.base_revision}, then {len(self.segments)} segment(s) "
            f"up to revision {self.target_revision}{when}"
        )


def chain_for(segments: Sequence[Segment], base: int, target: int) -> list[Segment]:
    """The segments that carry revisions base+1..target in order; SegmentCorrupt naming the first gap."""
    chosen: list[Segment] = []
    need = base + 1
    while need <= target:
        usable = [s for s in segments if s.first_revision <= need <= s.last_revision]
        if not usable:
            after = [s for s in segments if s.first_revision > need]
            upto = after[0].first_revision - 1 if after else target
            next_name = after[0].key if after else "none"
            raise SegmentCorrupt(
                f"no complete segment holds revisions {need}..{min(upto, target)} "
                f"(previous: {chosen[-1].key if chosen else f'full backup at {base}'}; next: {next_name})",
                step="choose segments",
            )
        best = max(usable, key=lambda s: s.last_revision)
        chosen.append(best)
        need = best.last_revision + 1
    return chosen


def choose(backups: Iterable[Backup], segments: Sequence[Segment], to_revision: int) -> RestorePoint:
    """The newest complete full backup at or before to_revision whose segments reach it, and those segments."""
    bases = sorted(
        ((r, b) for b in backups if (r := backup_revision(b)) is not None and r <= to_revision),
        key=lambda rb: (rb[0], rb[1].time),
        reverse=True,
    )
    if not bases:
        raise ConfigError(f"no complete full backup at or before revision {to_revision}", step="choose backup")
    first_error: SegmentCorrupt | None = None
    for base, backup in bases:
        try:
            return RestorePoint(backup, base, chain_for(segments, base, to_revision), to_revision)
        except SegmentCorrupt as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


ManifestReader = Callable[[Segment], SegmentManifest]
RawReader = Callable[[SegmentManifest], bytes]


def revision_at(
    when: datetime, backups: Iterable[Backup], segments: Sequence[Segment], manifest: ManifestReader, raw: RawReader
) -> tuple[int, datetime]:
    """The last revision received at or before `when` (or a full backup's, if later), and its time."""
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    best: tuple[int, datetime] | None = None
    for backup in backups:
        revision = backup_revision(backup)
        if revision is not None and backup.manifest is not None and backup.manifest.created <= when:
            if best is None or revision > best[0]:
                best = (revision, backup.manifest.created)
    found = _received_at(when, segments, manifest, raw)
    if found is not None and (best is None or found[0] > best[0]):
        best = found
    if best is None:
        raise ConfigError(f"nothing was backed up at or before {when.isoformat()}", step="choose backup")
    return best


def _received_at(
    when: datetime, segments: Sequence[Segment], manifest: ManifestReader, raw: RawReader
) -> tuple[int, datetime] | None:
    """Binary search of segment manifests by first receive time, then the records of the one segment."""
    firsts = _LazyTimes(segments, manifest)
    index = bisect.bisect_right(firsts, when) - 1
    if index < 0:
        return None
    found = manifest(segments[index])
    if found.last_received <= when:
        return found.last_revision, found.last_received
    limit = to_ns(when)
    best = None
    for record in records.decode(raw(found), found.key):
        if record.received_ns > limit:
            break
        best = record
    assert best is not None  # the first record was received at first_received <= when
    return best.revision, from_ns(best.received_ns)


class _LazyTimes(Sequence):
    """first_received of each segment, read from its manifest only when bisect looks at it."""

    def __init__(self, segments: Sequence[Segment], manifest: ManifestReader):
        self.segments, self.manifest = segments, manifest

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index):
        return self.manifest(self.segments[index]).first_received


def to_ns(when: datetime) -> int:
    """A UTC datetime as Unix nanoseconds, exactly (microsecond precision)."""
    delta = when.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def from_ns(ns: int) -> datetime:
    """Unix nanoseconds as a UTC datetime (microsecond precision)."""
    return datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=ns // 1000 % 10**6)


class Catalog:
    """A cluster's full backups and segments in one storage, with manifests read once and cached."""

    def __init__(self, storage: Storage, cluster_id: str, prefix: str = "", identities: Sequence = ()):
        self.storage, self.cluster_id, self.prefix = storage, cluster_id, prefix
        self.identities = list(identities)
        self.backups = [b for b in list_backups(storage, cluster_id, prefix) if backup_revision(b) is not None]
        self.listing = list_segments(storage, cluster_id, prefix)
        self._manifests: dict[str, SegmentManifest] = {}

    def manifest(self, segment: Segment) -> SegmentManifest:
        """The segment's manifest (read once); SegmentCorrupt naming it when missing."""
        if segment.key not in self._manifests:
            try:
                self._manifests[segment.key] = read_segment_manifest(self.storage, segment.key)
            except NotFound:
                raise SegmentCorrupt("manifest is missing", step="read segment manifest", node=segment.key) from None
        return self._manifests[segment.key]

    def coverage(self) -> Coverage:
        """Reachable revisions and every gap, against the complete full backups."""
        return coverage(self.listing.complete, self.backups, self.listing.incomplete)

    def plan(self, to_revision: int | None = None, to_time: datetime | None = None) -> RestorePoint:
        """The restore point for a revision, a time (last revision received at or before it), or the newest."""
        if to_revision is not None and to_time is not None:
            raise ConfigError("give to_revision or to_time, not both", step="choose backup")
        target_time = None
        if to_time is not None:
            to_revision, target_time = revision_at(
                to_time, self.backups, self.listing.complete, self.manifest, self._raw
            )
        elif to_revision is None:
            reachable = self.coverage().reachable
            if not reachable:
                raise ConfigError("no complete full backup to restore from", step="choose backup")
            to_revision = reachable[-1][1]
        point = choose(self.backups, self.listing.complete, to_revision)
        return RestorePoint(point.backup, point.base_revision, point.segments, point.target_revision, target_time)

    def _raw(self, manifest: SegmentManifest) -> bytes:
        return load_segment(self.storage, manifest, parse_identities(self.identities) if manifest.encryption else [])
