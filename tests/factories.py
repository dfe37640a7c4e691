"""Records for unit tests: a manifest with plausible defaults, any field overridden."""

from __future__ import annotations

from datetime import UTC, datetime

from etcd_backup.catalog import Manifest, parse_key


def manifest(key: str, **fields) -> Manifest:
    """A Manifest of backup `key`; the cluster, time and compression come from the key's name when it parses."""
    parsed = parse_key(key)
    defaults = dict(
        cluster=parsed.cluster_id if parsed else "uk8s-f1wymalx",
        key=key,
        size=10,
        sha256="0" * 64,
        raw_size=10,
        raw_sha256="0" * 64,
        revision=1,
        revision_exact=True,
        key_count=1,
        etcd_version="3.5.1",
        source_member="etcd1",
        source_endpoint="https://127.0.0.1:2379",
        created=parsed.time if parsed else datetime(2024, 1, 1, tzinfo=UTC),
        compression=parsed.compression if parsed else "zstd",
    )
    return Manifest(**{**defaults, **fields})
