"""Which restore targets the stored full backups and segments reach, per lineage, and every gap between them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from etcd_backup.catalog import Backup
from etcd_backup.continuous.chain import Base, Segment, bases, in_lineage, run_end


@dataclass(frozen=True)
class Reach:
    """Targets first..last of one lineage are reachable, starting from full backup `backup`."""

    lineage: str
    first: int
    last: int
    backup: str


@dataclass(frozen=True)
class Gap:
    """Revisions first..last that no complete segment holds; restore targets first..unreachable_last are lost."""

    lineage: str
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
    """Reachable targets and gaps, plus segments no restore needs (before the oldest backup, or of no backup)."""

    reachable: list[Reach]
    gaps: list[Gap]
    incomplete: list[str] = field(default_factory=list)
    before_oldest_backup: list[str] = field(default_factory=list)
    unanchored: list[str] = field(default_factory=list)  # of a lineage without any full backup

    def reaches(self, revision: int, lineage: str) -> bool:
        """True when the target revision of lineage is reachable."""
        return any(r.lineage == lineage and r.first <= revision <= r.last for r in self.reachable)


def coverage(segments: Sequence[Segment], backups: Iterable[Backup], incomplete: Sequence[Segment] = ()) -> Coverage:
    """Reachable targets per lineage: from each full backup on, as far as its lineage's segments run unbroken."""
    found = bases(backups)
    reach: list[Reach] = []
    gaps: list[Gap] = []
    before: list[str] = []
    unanchored: list[str] = []
    for lineage in sorted({s.lineage for s in segments} | {b.lineage for b in found}):
        ours, anchors = in_lineage(segments, lineage), [b for b in found if b.lineage == lineage]
        if not anchors:
            unanchored += [s.key for s in ours]
            continue
        intervals = _intervals(ours, anchors)
        reach += intervals
        gaps += _gaps(ours, anchors, intervals, in_lineage(incomplete, lineage))
        before += [s.key for s in ours if s.last_revision <= anchors[0].low]
    return Coverage(reach, gaps, [s.key for s in incomplete], before, unanchored)


def _intervals(segments: Sequence[Segment], anchors: Sequence[Base]) -> list[Reach]:
    """Merged reachable intervals of one lineage (anchors sorted by revision)."""
    out: list[Reach] = []
    for base in anchors:
        end = run_end(segments, base.low)
        if end < base.high:
            if not base.exact:
                continue  # its snapshot's revision is not known and no segment bridges the uncertainty
            end = base.high
        if out and base.high <= out[-1].last + 1:
            out[-1] = dataclasses.replace(out[-1], last=max(out[-1].last, end))
        else:
            out.append(Reach(base.lineage, base.high, end, base.backup.key))
    return out


def _gaps(
    segments: Sequence[Segment], anchors: Sequence[Base], intervals: Sequence[Reach], incomplete: Sequence[Segment]
) -> list[Gap]:
    """Runs of revisions after the oldest full backup that neither a segment nor an exact backup holds."""
    spans = sorted([(s.first_revision, s.last_revision) for s in segments] + [(b.high, b.high) for b in anchors])
    newest = max(last for _, last in spans)
    gaps, need = [], anchors[0].low + 1
    for first, last in spans:
        if last < need:
            continue
        if first > need:
            resumes = [r.first for r in intervals if r.first > first - 1]
            unreachable = resumes[0] - 1 if resumes else newest
            gaps.append(_gap(anchors[0].lineage, need, first - 1, unreachable, segments, incomplete))
        need = last + 1
    return gaps


def _gap(
    lineage: str, first: int, last: int, unreachable: int, segments: Sequence[Segment], incomplete: Sequence[Segment]
) -> Gap:
    before = [s.key for s in segments if s.last_revision == first - 1]
    after = [s.key for s in segments if s.first_revision > last]
    partial = tuple(s.key for s in incomplete if s.first_revision <= last and s.last_revision >= first)
    return Gap(
        lineage,
        first,
        last,
        max(unreachable, last),
        before[-1] if before else f"revision {first - 1}",
        after[0] if after else "the newest revision",
        partial,
    )
