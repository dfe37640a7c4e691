"""Turning a time into a revision: the last revision the follower received at or before it (its own clock).

etcd events carry no time; each record holds the time the follower received it. Segment manifests hold
the first and last receive time, so a binary search over manifests finds the one segment to read.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from etcd_backup.catalog import Backup
from etcd_backup.continuous import records
from etcd_backup.continuous.chain import Segment, bases, in_lineage
from etcd_backup.continuous.manifest import SegmentManifest
from etcd_backup.errors import ConfigError

ManifestReader = Callable[[Segment], SegmentManifest]
RawReader = Callable[[SegmentManifest], bytes]


def utc(when: datetime) -> datetime:
    """when in UTC (a naive time is taken as UTC)."""
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def revision_at(
    when: datetime, backups: Iterable[Backup], segments: Sequence[Segment], manifest: ManifestReader, raw: RawReader
) -> tuple[int, datetime, str]:
    """(revision, its time, lineage) of the last revision received at or before `when`, over every lineage.

    A full backup counts as received at its start time; a segment record received later supersedes it.
    """
    when = utc(when)
    found: list[tuple[datetime, int, str]] = []
    for base in bases(backups):
        created = base.backup.manifest.created if base.backup.manifest else None
        if created is not None and base.exact and utc(created) <= when:
            found.append((utc(created), base.high, base.lineage))
    for lineage in {s.lineage for s in segments}:
        hit = _received_at(when, in_lineage(segments, lineage), manifest, raw)
        if hit is not None:
            found.append((hit[1], hit[0], lineage))
    if not found:
        raise ConfigError(f"nothing was backed up at or before {when.isoformat()}", step="choose backup")
    at, revision, lineage = max(found, key=lambda f: (f[0], f[1]))
    return revision, at, lineage


def _received_at(
    when: datetime, segments: Sequence[Segment], manifest: ManifestReader, raw: RawReader
) -> tuple[int, datetime] | None:
    """Binary search of one lineage's segment manifests by first receive time, then the records of one segment."""
    index = bisect.bisect_right(_LazyTimes(segments, manifest), when) - 1
    if index < 0:
        return None
    found = manifest(segments[index])
    if found.last_received <= when:
        return found.last_revision, found.last_received
    limit = to_ns(when) // 1000  # receive times count at microsecond precision, as manifests and reports show them
    return received_of(raw(found), found.key, lambda record: record.received_ns // 1000 <= limit)


def received_of(raw: bytes, key: str, wanted: Callable[[records.Revision], bool]) -> tuple[int, datetime] | None:
    """(revision, receive time) of the last record of a raw segment, from its start, for which wanted() holds."""
    best = None
    for record in records.decode(raw, key):
        if not wanted(record):
            break
        best = record
    return (best.revision, from_ns(best.received_ns)) if best is not None else None


class _LazyTimes(Sequence):
    """first_received of each segment, read from its manifest only when bisect looks at it."""

    def __init__(self, segments: Sequence[Segment], manifest: ManifestReader):
        self.segments, self.manifest = segments, manifest

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index):
        return self.manifest(self.segments[index]).first_received


def to_ns(when: datetime) -> int:
    """A datetime as Unix nanoseconds, exactly (microsecond precision)."""
    delta = utc(when) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def from_ns(ns: int) -> datetime:
    """Unix nanoseconds as a UTC datetime (microsecond precision, truncated)."""
    return datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=ns // 1000 % 10**6)
