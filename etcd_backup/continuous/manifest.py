"""The JSON manifest written after a segment's object; its presence makes the segment complete."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from etcd_backup.catalog import current_tool_version, read_described
from etcd_backup.continuous.errors import SegmentCorrupt
from etcd_backup.storage.base import Storage

SEGMENT_FORMAT = 1


class SegmentManifest(BaseModel):
    """What one stored segment holds and how to check it (receive times are the follower's clock, UTC)."""

    format: int = SEGMENT_FORMAT
    kind: Literal["etcd-events"] = "etcd-events"
    tool_version: str = current_tool_version()
    cluster: str
    key: str
    first_revision: int
    last_revision: int
    event_count: int
    first_received: datetime
    last_received: datetime
    size: int
    sha256: str
    raw_size: int
    raw_sha256: str
    compression: str = "zstd"
    encryption: str | None = None
    recipients: list[str] = []
    etcd_cluster_id: str = ""
    source_endpoints: list[str] = []
    created: datetime

    def to_json(self) -> bytes:
        """Serialise for storage."""
        return self.model_dump_json(indent=2).encode()


def read_segment_manifest(storage: Storage, key: str) -> SegmentManifest:
    """Read and validate the manifest of segment key (NotFound when missing, SegmentCorrupt when unreadable)."""
    return read_described(
        storage, key, SegmentManifest, lambda text: SegmentCorrupt(text, step="read segment manifest", node=key)
    )
