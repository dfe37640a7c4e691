"""A cluster's full backups and segments in one storage: coverage, and the restore point for a revision or a time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from etcd_backup.catalog import list_backups
from etcd_backup.continuous.chain import RestorePoint, base_of, bases, choose, list_segments
from etcd_backup.continuous.coverage import Coverage, coverage
from etcd_backup.continuous.errors import SegmentCorrupt
from etcd_backup.continuous.manifest import SegmentManifest, read_segment_manifest
from etcd_backup.continuous.segment import load_segment
from etcd_backup.continuous.timeline import revision_at
from etcd_backup.encryption import parse_identities
from etcd_backup.errors import ConfigError, NotFound
from etcd_backup.storage.base import Storage


class Catalog:
    """A cluster's chain bases (complete full backups) and segments, with segment manifests read once and cached."""

    def __init__(self, storage: Storage, cluster_id: str, prefix: str = "", identities: Sequence = ()):
        self.storage, self.cluster_id, self.prefix = storage, cluster_id, prefix
        self.identities = list(identities)
        self.backups = [b for b in list_backups(storage, cluster_id, prefix) if base_of(b) is not None]
        self.listing = list_segments(storage, cluster_id, prefix)
        self._manifests: dict[str, SegmentManifest] = {}

    def manifest(self, segment) -> SegmentManifest:
        """The segment's manifest (read once); SegmentCorrupt naming it when missing."""
        if segment.key not in self._manifests:
            try:
                self._manifests[segment.key] = read_segment_manifest(self.storage, segment.key)
            except NotFound:
                raise SegmentCorrupt("manifest is missing", step="read segment manifest", node=segment.key) from None
        return self._manifests[segment.key]

    def coverage(self) -> Coverage:
        """Reachable targets and every gap, per lineage."""
        return coverage(self.listing.complete, self.backups, self.listing.incomplete)

    def current_lineage(self) -> str:
        """The lineage of the newest full backup that records one, else of the newest segment; '' when none."""
        found = [b for b in bases(self.backups) if b.lineage and b.backup.manifest is not None]
        if found:
            return max(found, key=lambda b: (b.backup.manifest.created, b.high)).lineage  # type: ignore[union-attr]
        newest = max(self.listing.complete, key=lambda s: (s.modified is not None, s.modified, s.key), default=None)
        return newest.lineage if newest else ""

    def plan(
        self, to_revision: int | None = None, to_time: datetime | None = None, lineage: str | None = None
    ) -> RestorePoint:
        """The restore point for a revision (of lineage, default the current one), a time, or the newest revision."""
        if to_revision is not None and to_time is not None:
            raise ConfigError("give to_revision or to_time, not both", step="choose backup")
        if to_time is not None:
            revision, at, found = revision_at(to_time, self.backups, self.listing.complete, self.manifest, self._raw)
            point = choose(self.backups, self.listing.complete, revision, found, self.listing.incomplete)
            return RestorePoint(point.backup, point.base_low, point.base_high, found, point.segments, revision, at)
        lineage = self.current_lineage() if lineage is None else lineage
        if to_revision is None:
            reach = [r for r in self.coverage().reachable if r.lineage == lineage]
            if not reach:
                raise ConfigError("no complete full backup to restore from", step="choose backup")
            to_revision = reach[-1].last
        try:
            return choose(self.backups, self.listing.complete, to_revision, lineage, self.listing.incomplete)
        except (ConfigError, SegmentCorrupt) as exc:
            raise self._elsewhere(exc, to_revision, lineage) from None

    def _elsewhere(self, exc: ConfigError | SegmentCorrupt, revision: int, lineage: str) -> Exception:
        """exc, telling when the revision is reachable in an older history (before a whole-cluster restore)."""
        others = sorted(
            {r.lineage for r in self.coverage().reachable if r.lineage != lineage and r.first <= revision <= r.last}
        )
        if not others:
            return exc
        hint = (
            f"; revision {revision} of the history of etcd cluster(s) {', '.join(others)} (before a whole-cluster "
            "restore) is reachable: restore to a time instead"
        )
        return type(exc)(exc.message + hint, step=exc.step, node=exc.node)

    def _raw(self, manifest: SegmentManifest) -> bytes:
        return load_segment(self.storage, manifest, parse_identities(self.identities) if manifest.encryption else [])
