"""What every fault case checks afterwards: nothing lost (data, earlier backups), nothing partial visible."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from pathlib import Path

from pyetcd import etcdrpc

from blocks import EtcdCluster
from etcd_backup import etcd
from etcd_backup.catalog import list_backups, manifest_key
from etcd_backup.pipeline import fetch_snapshot
from etcd_backup.storage.base import Storage
from tests.fleet.binaries import find_binaries
from tests.snapshot_status import inspect_db

ETCDUTL = find_binaries("3.5.1").etcdutl


def access_of(cluster, endpoints: Iterable[str] | None = None, timeout: float = 5.0) -> etcd.EtcdAccess:
    """EtcdAccess with the fleet's TLS files (to the members, or to relays in front of them)."""
    return etcd.EtcdAccess(
        endpoints=tuple(endpoints or cluster.endpoints),
        ca=Path(cluster.ca).read_text(),
        cert=Path(cluster.cert).read_text(),
        key=Path(cluster.key).read_text(),
        timeout=timeout,
    )


def key_digest(cluster, member: int | None = None) -> str:
    """sha256 over every key, value and mod revision the member (default: the first running one) serves."""
    endpoint = cluster.endpoints[member] if member is not None else cluster.running()[0].client_url
    access = access_of(cluster, [endpoint])
    request = etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", serializable=True)  # no leader needed mid-election
    with etcd.channel(access, access.endpoints[0]) as chan:
        kvs = etcdrpc.KVStub(chan).Range(request, timeout=30).kvs
    digest = hashlib.sha256()
    for kv in sorted(kvs, key=lambda kv: kv.key):
        digest.update(b"%d:%s=%d:%s@%d;" % (len(kv.key), kv.key, len(kv.value), kv.value, kv.mod_revision))
    return digest.hexdigest()


def visible(storage: Storage) -> set[str]:
    """Every key a listing shows."""
    return {o.key for o in storage.list()}


def backup_keys(*keys: str) -> set[str]:
    """The objects complete backups consist of: each object and its manifest."""
    return {k for key in keys for k in (key, manifest_key(key))}


def assert_restorable(storage: Storage, cluster_id: str, keys: Iterable[str], workdir: Path) -> None:
    """Each key is listed as a complete backup, fetches with every check passing, and etcd reads its revision."""
    listed = {b.key: b for b in list_backups(storage, cluster_id)}
    for key in keys:
        assert key in listed and listed[key].complete, f"{key} is not listed as complete: {sorted(listed)}"
        manifest = listed[key].manifest
        assert manifest is not None
        db = workdir / f"check-{secrets.token_hex(4)}.db"
        result = fetch_snapshot(storage, key, db)
        assert (result.sha256, result.raw_sha256) == (manifest.sha256, manifest.raw_sha256)
        assert inspect_db(db, ETCDUTL).revision == manifest.revision
        db.unlink()


def save_cluster(cluster, cluster_id: str, endpoints: Iterable[str] | None = None, **tls: str) -> str:
    """Save an EtcdCluster block for a test cluster (endpoints: the members, or relays); return its name."""
    name = f"faults-{secrets.token_hex(4)}"
    EtcdCluster(
        cluster_id=cluster_id,
        endpoints=list(endpoints or cluster.endpoints),
        ca_pem=tls.get("ca_pem") or Path(cluster.ca).read_text(),
        cert_pem=tls.get("cert_pem") or Path(cluster.cert).read_text(),
        key_pem=tls.get("key_pem") or Path(cluster.key).read_text(),
    ).save(name)
    return name


def save_block(block) -> str:
    """Save a storage block under a fresh name; return '<type-slug>/<name>'."""
    name = f"faults-{secrets.token_hex(4)}"
    block.save(name)
    return f"{block.get_block_type_slug()}/{name}"


def latest_artifact(key: str) -> str:
    """The data of the newest artifact with key (a run report), read through the Prefect API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
            )
        return str(found[0].data) if found else ""

    return asyncio.run(read())
