"""Segment object names <-> (cluster, first and last revision, lineage, encryption): paired format and parse.

A name is `<cluster>-events-<first>-<last>-<lineage>.evl.zst[.age]`: revisions zero-padded to 19 digits (names
sort by revision) and the lineage, etcd's own cluster id in 16 hex digits. A whole-cluster restore gives etcd a
new cluster id (a new cluster token), and without --bump-revision its revisions start again below ones already
followed: the lineage keeps the two histories apart, so their segments never collide or mix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from etcd_backup.errors import ConfigError

REVISION_DIGITS = 19  # every positive int64 fits, so names sort by revision as plain strings
LINEAGE_DIGITS = 16  # etcd's cluster id is a uint64
EXTENSION = ".evl.zst"
_NAME = re.compile(
    rf"^(?P<cluster>.+)-events-(?P<first>\d{{{REVISION_DIGITS}}})-(?P<last>\d{{{REVISION_DIGITS}}})"
    rf"-(?P<lineage>[0-9a-f]{{{LINEAGE_DIGITS}}})"
)
_TAIL = re.compile(rf"{re.escape(EXTENSION)}(?P<age>\.age)?$")


@dataclass(frozen=True)
class SegmentName:
    """What a segment's object name says."""

    prefix: str
    cluster_id: str
    first_revision: int
    last_revision: int
    lineage: str
    encrypted: bool


def lineage_of(etcd_cluster_id: str | int) -> str:
    """etcd's cluster id (an int, or hex as headers and manifests show it) as a 16-digit lineage."""
    try:
        value = etcd_cluster_id if isinstance(etcd_cluster_id, int) else int(etcd_cluster_id or "0", 16)
    except ValueError:
        raise ConfigError(f"etcd cluster id {etcd_cluster_id!r} is not hexadecimal") from None
    if not 0 <= value < 16**LINEAGE_DIGITS:
        raise ConfigError(f"etcd cluster id {etcd_cluster_id!r} is out of range")
    return f"{value:0{LINEAGE_DIGITS}x}"


def format_segment_key(
    cluster_id: str,
    first_revision: int,
    last_revision: int,
    lineage: str | int,
    encrypted: bool = False,
    prefix: str = "",
) -> str:
    """The object key of a segment: `<prefix>/<cluster>-events-<first>-<last>-<lineage>.evl.zst[.age]`."""
    if not cluster_id or "/" in cluster_id:
        raise ConfigError(f"cluster id {cluster_id!r} must be non-empty and contain no '/'")
    if not 0 < first_revision <= last_revision < 10**REVISION_DIGITS:
        raise ConfigError(f"segment revisions {first_revision}..{last_revision} are not a valid range")
    name = f"{segment_name_prefix(cluster_id)}{first_revision:0{REVISION_DIGITS}d}-{last_revision:0{REVISION_DIGITS}d}"
    name += f"-{lineage_of(lineage)}{EXTENSION}" + (".age" if encrypted else "")
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def parse_segment_key(key: str) -> SegmentName | None:
    """Parse a key made by format_segment_key; None for any other object (backups, manifests, foreign files)."""
    prefix, _, name = key.rpartition("/")
    tail = _TAIL.search(name)
    match = _NAME.fullmatch(name[: tail.start()]) if tail else None
    if not match or not tail:
        return None
    first, last = int(match["first"]), int(match["last"])
    if not 0 < first <= last:
        return None
    return SegmentName(prefix, match["cluster"], first, last, match["lineage"], bool(tail["age"]))


def segment_name_prefix(cluster_id: str) -> str:
    """The start every segment name of cluster_id shares (lists only its segments from a flat store)."""
    return f"{cluster_id}-events-"


def segment_list_prefix(cluster_id: str, prefix: str = "") -> str:
    """The storage list prefix that selects exactly the segments (and their manifests) of cluster_id."""
    prefix = prefix.strip("/")
    return f"{prefix}/{segment_name_prefix(cluster_id)}" if prefix else segment_name_prefix(cluster_id)
