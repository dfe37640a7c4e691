"""Segment object names <-> (cluster, first and last revision, encryption): paired format and parse."""

from __future__ import annotations

import re
from dataclasses import dataclass

from etcd_backup.errors import ConfigError

REVISION_DIGITS = 19  # every positive int64 fits, so names sort by revision as plain strings
EXTENSION = ".evl.zst"
_NAME = re.compile(rf"^(?P<cluster>.+)-events-(?P<first>\d{{{REVISION_DIGITS}}})-(?P<last>\d{{{REVISION_DIGITS}}})")
_TAIL = re.compile(rf"{re.escape(EXTENSION)}(?P<age>\.age)?$")


@dataclass(frozen=True)
class SegmentName:
    """What a segment's object name says."""

    prefix: str
    cluster_id: str
    first_revision: int
    last_revision: int
    encrypted: bool


def format_segment_key(
    cluster_id: str, first_revision: int, last_revision: int, encrypted: bool = False, prefix: str = ""
) -> str:
    """The object key of a segment: `<prefix>/<cluster>-events-<first>-<last>.evl.zst[.age]`, revisions zero-padded."""
    if not cluster_id or "/" in cluster_id:
        raise ConfigError(f"cluster id {cluster_id!r} must be non-empty and contain no '/'")
    if not 0 < first_revision <= last_revision < 10**REVISION_DIGITS:
        raise ConfigError(f"segment revisions {first_revision}..{last_revision} are not a valid range")
    name = f"{segment_name_prefix(cluster_id)}{first_revision:0{REVISION_DIGITS}d}-{last_revision:0{REVISION_DIGITS}d}"
    name += EXTENSION + (".age" if encrypted else "")
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
    return SegmentName(prefix, match["cluster"], first, last, bool(tail["age"]))


def segment_name_prefix(cluster_id: str) -> str:
    """The start every segment name of cluster_id shares (lists only its segments from a flat store)."""
    return f"{cluster_id}-events-"


def segment_list_prefix(cluster_id: str, prefix: str = "") -> str:
    """The storage list prefix that selects exactly the segments (and their manifests) of cluster_id."""
    prefix = prefix.strip("/")
    return f"{prefix}/{segment_name_prefix(cluster_id)}" if prefix else segment_name_prefix(cluster_id)
