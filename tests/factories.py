"""Records for tests: a manifest, a cluster spec and a cluster block with plausible defaults."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from blocks import EtcdCluster
from etcd_backup.catalog import Manifest, parse_key
from etcd_backup.cluster import ClusterSpec, MasterNode, SSHAccess


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


def cluster_spec(ips: dict[str, str], cluster_id: str = "uk8s-x") -> ClusterSpec:
    """A ClusterSpec of master nodes named and addressed as in `ips`, with placeholder TLS and SSH secrets."""
    return ClusterSpec(
        cluster_id=cluster_id,
        ca_pem="ca",
        cert_pem="cert",
        key_pem="key",
        nodes=[MasterNode(name=n, ip=ip) for n, ip in ips.items()],
        ssh=SSHAccess(private_key="k"),
    )


def cluster_block(cluster, cluster_id: str, **fields) -> EtcdCluster:
    """An (unsaved) EtcdCluster block for a test etcd cluster: its endpoints and TLS files, any field overridden."""
    defaults = dict(
        cluster_id=cluster_id,
        endpoints=list(cluster.endpoints),
        ca_pem=Path(cluster.ca).read_text(),
        cert_pem=Path(cluster.cert).read_text(),
        key_pem=Path(cluster.key).read_text(),
    )
    return EtcdCluster(**{**defaults, **fields})
