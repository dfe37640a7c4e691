"""The etcd-backup flows through a real Prefect API, real etcd and every real storage backend."""

from __future__ import annotations

import hashlib
import http.server
import json
import secrets
import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks import LocalStorage, S3Storage, SSHServerStorage, UFileStorage, load_storage
from etcd_backup import catalog, pipeline
from etcd_backup.errors import EtcdUnavailable, StorageError
from flows.backup import backup_etcd, list_backups, prune_backups
from tests import factories
from tests.fleet.data import fill
from tests.prefect_fixtures import register_secret

pytestmark = [pytest.mark.backup, pytest.mark.slow]
CLUSTER_ID = "uk8s-flowtest"


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def cluster_block(prefect_api, etcd_cluster):
    """An EtcdCluster block for a filled 3-member cluster; yields (block name, cluster)."""
    client = etcd_cluster.client()
    fill(client, 300, 1024)
    client.put("/registry/flow-test", b"value \x00\xff")
    client.close()
    name = _name("cluster")
    factories.cluster_block(etcd_cluster, CLUSTER_ID).save(name)
    return name, etcd_cluster


def _save(block) -> str:
    name = _name("store")
    block.save(name)
    return f"{block.get_block_type_slug()}/{name}"


@pytest.fixture
def local_ref(prefect_api, tmp_path) -> str:
    return _save(LocalStorage(directory=str(tmp_path / "backups")))


def _storage_ref(kind: str, request, tmp_path) -> str:
    if kind == "local":
        return _save(LocalStorage(directory=str(tmp_path / "backups")))
    weed = request.getfixturevalue("seaweedfs")
    if kind == "s3":
        return _save(
            S3Storage(
                endpoint_url=weed.endpoint,
                region="us-east-1",
                bucket=weed.make_bucket(),
                access_key_id=weed.access_key,
                secret_access_key=weed.secret_key,
            )
        )
    if kind == "ufile":
        proxy = request.getfixturevalue("ufile_proxy")
        return _save(
            UFileStorage(
                public_key=weed.access_key,
                private_key=weed.secret_key,
                region="cn-bj",
                bucket=weed.make_bucket(),
                endpoint_url=proxy.endpoint,
            )
        )
    sshd = request.getfixturevalue("backup_sshd")
    return _save(
        SSHServerStorage(
            host=sshd.host,
            port=sshd.port,
            user=sshd.user,
            private_key=sshd.private_key,
            directory=f"{sshd.directory}/{secrets.token_hex(4)}",
            known_hosts=sshd.known_hosts(),
        )
    )


def _sha256(storage, key: str) -> str:
    digest = hashlib.sha256()
    with storage.open(key) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("kind", ["local", "s3", "ufile", "sftp"])
def test_backup_flow_stores_a_verified_backup(kind, cluster_block, request, tmp_path):
    cluster, _ = cluster_block
    ref = _storage_ref(kind, request, tmp_path)
    record = backup_etcd(cluster=cluster, storage=ref, keep=3)

    store = load_storage(ref).build()
    assert record.key.startswith(f"{CLUSTER_ID}-backup-etcd-3.5.1-") and record.key.endswith(".db.zst")
    assert store.stat(record.key).size == record.size
    assert _sha256(store, record.key) == record.sha256
    manifest = catalog.read_manifest(store, record.key)
    assert (manifest.sha256, manifest.revision, manifest.key_count) == (
        record.sha256,
        record.revision,
        record.key_count,
    )
    assert record.key_count >= 301
    raw = tmp_path / "restored.db"
    pipeline.fetch_snapshot(store, record.key, raw)
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == record.raw_sha256
    if kind == "ufile":
        assert request.getfixturevalue("ufile_proxy").rejections == []


def _put(store, key: str, data: bytes = b"x") -> None:
    import io

    store.put(key, io.BytesIO(data))


def test_retention_keeps_newest_and_never_touches_foreign_or_legacy(cluster_block, local_ref):
    cluster, _ = cluster_block
    store = load_storage(local_ref).build()
    legacy = f"{CLUSTER_ID}-backup-etcd-3.3.17-2020-02-11T03-56-12.db.tar.gz"
    foreign = ["uk8s-other-backup-etcd-3.5.1-2020-01-01T00-00-00.db.zst", "notes.txt"]
    for key in [legacy, *foreign]:
        _put(store, key)
    records = []
    for _ in range(3):
        records.append(backup_etcd(cluster=cluster, storage=local_ref, keep=2))
        time.sleep(1.1)  # backup names have one-second resolution
    keys = {o.key for o in store.list()}
    newest_two = {r.key for r in records[1:]}
    assert newest_two | {catalog.manifest_key(k) for k in newest_two} <= keys
    assert records[0].key not in keys and catalog.manifest_key(records[0].key) not in keys
    assert {legacy, *foreign} <= keys
    complete = [b.key for b in catalog.list_backups(store, CLUSTER_ID) if b.complete]
    assert sorted(complete) == sorted(newest_two)


def test_list_and_prune_flows_dry_run_first(cluster_block, local_ref):
    cluster, _ = cluster_block
    first = backup_etcd(cluster=cluster, storage=local_ref, keep=5)
    time.sleep(1.1)
    second = backup_etcd(cluster=cluster, storage=local_ref, keep=5)
    rows = list_backups(cluster=cluster, storage=local_ref)
    assert [r["key"] for r in rows] == [second.key, first.key]
    assert prune_backups(cluster=cluster, storage=local_ref, keep=1) == [first.key]
    store = load_storage(local_ref).build()
    assert store.stat(first.key).size == first.size  # dry run deleted nothing
    assert prune_backups(cluster=cluster, storage=local_ref, keep=1, dry_run=False) == [first.key]
    assert [b.key for b in catalog.list_backups(store, CLUSTER_ID)] == [second.key]


async def _artifact_keys(prefix: str) -> set[str]:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))
    return {a.key for a in found}


def test_backup_writes_report_artifacts(cluster_block, local_ref):
    import asyncio

    cluster, _ = cluster_block
    backup_etcd(cluster=cluster, storage=local_ref, keep=3)
    keys = asyncio.run(_artifact_keys("uk8s-flowtest"))
    assert {"backup-uk8s-flowtest", "retention-uk8s-flowtest", "backup-progress-uk8s-flowtest"} <= keys


@pytest.mark.faults
def test_failed_upload_leaves_no_backup_and_prunes_nothing(cluster_block, request, tmp_path):
    cluster, _ = cluster_block
    ref = _storage_ref("ufile", request, tmp_path)
    old = backup_etcd(cluster=cluster, storage=ref, keep=1)
    proxy = request.getfixturevalue("ufile_proxy")
    proxy.cut_after(64 << 10)  # the backup is ~150 KiB: cut it midway
    with pytest.raises(StorageError):
        backup_etcd(cluster=cluster, storage=ref, keep=1)
    proxy.heal()
    store = load_storage(ref).build()
    assert {o.key for o in store.list()} == {old.key, catalog.manifest_key(old.key)}


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []
    paths: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.paths.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.faults
def test_failure_notifies_without_secrets(prefect_api, etcd_cluster, local_ref):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = secrets.token_hex(16)  # a webhook's token goes in the block's secrets, never in its plain URL field
    register_secret("a webhook token", token)
    notify = _save(
        CustomWebhookNotificationBlock(
            name="test",
            url=f"http://127.0.0.1:{server.server_address[1]}/hook/{{{{token}}}}",
            secrets={"token": token},
            allow_private_urls=True,
            json_data={"text": "{{body}}"},
        )
    )
    cluster = _name("down")
    key_pem = etcd_cluster.key.read_text()
    factories.cluster_block(etcd_cluster, CLUSTER_ID, endpoints=["https://127.0.0.1:1"]).save(cluster)
    with pytest.raises(EtcdUnavailable):
        backup_etcd(cluster=cluster, storage=local_ref, notify=notify)
    server.shutdown()
    assert len(_Receiver.bodies) == 1
    text = json.loads(_Receiver.bodies[0])["text"]
    assert "etcd-backup" in text and cluster in text
    assert "PRIVATE KEY" not in text and key_pem.splitlines()[1] not in text
    assert token not in text and _Receiver.paths == [f"/hook/{token}"]
