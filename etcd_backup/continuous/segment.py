"""A segment: consecutive revisions gathered in memory, stored (zstd, age, manifest last), read back verified."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyrage

from etcd_backup.catalog import manifest_key
from etcd_backup.compression import DECODE_ERRORS, compressor, decompressor
from etcd_backup.continuous import records
from etcd_backup.continuous.errors import SegmentCorrupt
from etcd_backup.continuous.manifest import SegmentManifest
from etcd_backup.continuous.names import format_segment_key, lineage_of
from etcd_backup.continuous.timeline import from_ns
from etcd_backup.errors import NotFound
from etcd_backup.storage.base import Storage


@dataclass
class RawSegment:
    """Encoded records of consecutive revisions, not yet stored (the unit the writer buffers and uploads)."""

    first_revision: int = 0
    last_revision: int = 0
    event_count: int = 0
    first_received_ns: int = 0
    last_received_ns: int = 0
    size: int = 0
    etcd_cluster_id: str = ""
    endpoints: list[str] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)

    def add(self, revision: records.Revision, endpoint: str = "", etcd_cluster_id: str = "") -> None:
        """Append the next revision (it must follow the last one)."""
        if self.chunks and revision.revision != self.last_revision + 1:
            raise SegmentCorrupt(
                f"revision {revision.revision} does not follow {self.last_revision}", step="write segment"
            )
        if not self.chunks:
            self.first_revision, self.first_received_ns = revision.revision, revision.received_ns
        data = records.encode(revision)
        self.chunks.append(data)
        self.size += len(data)
        self.last_revision, self.last_received_ns = revision.revision, revision.received_ns
        self.event_count += len(revision.events)
        self.etcd_cluster_id = etcd_cluster_id or self.etcd_cluster_id
        if endpoint and endpoint not in self.endpoints:
            self.endpoints.append(endpoint)

    def extend(self, other: RawSegment) -> None:
        """Append a whole later segment whose first revision follows this one's last."""
        lineages = {self.etcd_cluster_id, other.etcd_cluster_id} - {""}
        if len(lineages) > 1:
            raise SegmentCorrupt(f"cannot join segments of etcd clusters {sorted(lineages)}", step="write segment")
        if self.chunks and other.first_revision != self.last_revision + 1:
            raise SegmentCorrupt(
                f"segment {other.first_revision} does not follow {self.last_revision}", step="write segment"
            )
        if not self.chunks:
            self.first_revision, self.first_received_ns = other.first_revision, other.first_received_ns
        self.chunks.extend(other.chunks)
        self.size += other.size
        self.event_count += other.event_count
        self.last_revision, self.last_received_ns = other.last_revision, other.last_received_ns
        self.etcd_cluster_id = other.etcd_cluster_id or self.etcd_cluster_id
        self.endpoints.extend(e for e in other.endpoints if e not in self.endpoints)

    def payload(self) -> bytes:
        """The raw segment bytes (MAGIC and records)."""
        return records.MAGIC + b"".join(self.chunks)


def store_segment(
    storage: Storage,
    raw: RawSegment,
    *,
    cluster_id: str,
    prefix: str = "",
    recipient_keys: list[str] | None = None,
    recipients: list | None = None,
    level: int | None = None,
) -> SegmentManifest:
    """Compress (zstd), encrypt to recipients when given, put the object, then its manifest; return the manifest."""
    payload = raw.payload()
    packed = io.BytesIO()
    writer = compressor("zstd", packed, raw_size=len(payload), level=level)
    writer.write(payload)
    writer.close()
    stored = pyrage.encrypt(packed.getvalue(), recipients) if recipients else packed.getvalue()
    lineage = raw.etcd_cluster_id
    key = format_segment_key(cluster_id, raw.first_revision, raw.last_revision, lineage, bool(recipients), prefix)
    manifest = SegmentManifest(
        cluster=cluster_id,
        key=key,
        first_revision=raw.first_revision,
        last_revision=raw.last_revision,
        event_count=raw.event_count,
        first_received=from_ns(raw.first_received_ns),
        last_received=from_ns(raw.last_received_ns),
        size=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(),
        raw_size=len(payload),
        raw_sha256=hashlib.sha256(payload).hexdigest(),
        encryption="age" if recipients else None,
        recipients=list(recipient_keys or []),
        etcd_cluster_id=lineage_of(lineage),
        source_endpoints=list(raw.endpoints),
        created=datetime.now(UTC),
    )
    _put_with_manifest(storage, key, stored, manifest)
    return manifest


def _put_with_manifest(storage: Storage, key: str, stored: bytes, manifest: SegmentManifest) -> None:
    """The object, then its manifest; the object is removed again when the manifest cannot be written."""
    storage.put(key, io.BytesIO(stored))
    try:
        storage.put(manifest_key(key), io.BytesIO(manifest.to_json()))
    except BaseException:
        _forget(storage, key)
        raise


def load_segment(storage: Storage, manifest: SegmentManifest, identities: list | None = None) -> bytes:
    """The raw bytes of a stored segment, after checking stored and raw size and sha256 against its manifest."""
    key = manifest.key
    try:
        with storage.open(key) as f:
            stored = f.read()
    except NotFound:
        raise SegmentCorrupt("segment object is missing", step="read segment", node=key) from None
    if len(stored) != manifest.size or hashlib.sha256(stored).hexdigest() != manifest.sha256:
        raise SegmentCorrupt("stored segment differs from its manifest (size or sha256)", step="read segment", node=key)
    try:
        if manifest.encryption:
            stored = pyrage.decrypt(stored, identities or [])
        raw = decompressor(manifest.compression, io.BytesIO(stored)).read()
    except DECODE_ERRORS as exc:
        raise SegmentCorrupt(f"cannot decode: {exc.__class__.__name__}", step="read segment", node=key) from None
    if len(raw) != manifest.raw_size or hashlib.sha256(raw).hexdigest() != manifest.raw_sha256:
        raise SegmentCorrupt("decoded segment differs from its manifest (size, sha256)", step="read segment", node=key)
    return raw


def _forget(storage: Storage, key: str) -> None:
    """Best effort: remove a segment object whose manifest could not be written."""
    try:
        storage.delete([key])
    except Exception:  # noqa: BLE001 - the original error matters more
        pass
