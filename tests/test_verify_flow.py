"""The etcd-verify-backup flow and backup_etcd(verify=True) through a real Prefect API, real etcd, real storage.

A verification restores the backup into a scratch etcd and compares it with the restorability
certificate the backup's manifest recorded (etcd's HashKV and key count at the snapshot's revision).
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time

import pytest
import zstandard
from pyrage import x25519

from blocks import AgeIdentity, LocalStorage, load_storage
from etcd_backup import catalog, pipeline
from etcd_backup.errors import BackupCorrupt, ConfigError
from etcd_backup.storage.local import LocalStorage as LocalStore
from flows.backup import backup_etcd, list_backups
from flows.verify import verify_backup
from tests.bbolt import corrupt, mvcc_leaves, page_size
from tests.factories import cluster_block
from tests.fleet.data import fill
from tests.prefect_fixtures import register_secret

pytestmark = [pytest.mark.verify, pytest.mark.slow]
CLUSTER_ID = "uk8s-verifytest"


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _cluster_block(cluster, cluster_id: str = CLUSTER_ID) -> str:
    name = _name("cluster")
    cluster_block(cluster, cluster_id).save(name)
    return name


@pytest.fixture
def source(prefect_api, make_etcd_cluster, tmp_path):
    """(cluster block name, storage block ref, storage dir) for a filled single-member cluster."""
    cluster = make_etcd_cluster(members=1)
    with cluster.client(0) as client:
        fill(client, 400, 512)
    store = _name("verify")
    LocalStorage(directory=str(tmp_path / "backups")).save(store)
    return _cluster_block(cluster), f"local-directory-storage/{store}", tmp_path / "backups"


def _forge(store, genuine: catalog.BackupRecord, raw: bytes, when: str) -> str:
    """Store raw (zstd) as a backup of genuine's cluster with a manifest whose digests are right for it."""
    key = f"{genuine.cluster}-backup-etcd-{genuine.etcd_version}-{when}.db.zst"
    body = zstandard.ZstdCompressor().compress(raw)
    store.put(key, io.BytesIO(body))
    forged = catalog.Manifest(**genuine.model_dump()).model_copy(
        update={
            "key": key,
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "raw_size": len(raw),
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
        }
    )
    store.put(catalog.manifest_key(key), io.BytesIO(forged.to_json()))
    return key


def test_backup_with_verify_records_a_passed_verification_that_the_listing_shows(source):
    cluster, storage, _ = source
    record = backup_etcd(cluster=cluster, storage=storage, keep=3, verify=True)
    assert record.certificate is not None and record.certificate.revision == record.revision
    with load_storage(storage).build() as store:
        verification = catalog.read_verification(store, record.key)
    assert verification is not None and verification.ok
    report = verification.report
    assert (report.revision, report.key_count, report.hash) == (
        record.certificate.revision,
        record.certificate.key_count,
        record.certificate.hash,
    )
    assert report.etcd_version == "3.5.1" and report.seconds > 0
    [row] = list_backups(cluster=cluster, storage=storage)
    assert row["key"] == record.key and row["verified"].startswith("ok ")


def test_the_verify_flow_checks_the_latest_backup(source):
    cluster, storage, _ = source
    backup_etcd(cluster=cluster, storage=storage, keep=3)
    time.sleep(1.1)  # backup names have one-second resolution
    latest = backup_etcd(cluster=cluster, storage=storage, keep=3)
    verification = verify_backup(cluster=cluster, storage=storage)
    assert verification.key == latest.key and verification.ok and verification.report.compared


def test_a_backup_of_another_cluster_with_a_forged_manifest_fails(source, make_etcd_cluster, tmp_path):
    cluster, storage, _ = source
    genuine = backup_etcd(cluster=cluster, storage=storage, keep=3)
    other = make_etcd_cluster(members=1)
    with other.client(0) as client:
        fill(client, 400, 512)  # same shape of data, other values and history
    other_dir = tmp_path / "other"
    theirs = pipeline.backup(_access(other), LocalStore(other_dir), cluster_id="uk8s-other", compression="none")
    raw = (other_dir / theirs.key).read_bytes()
    with load_storage(storage).build() as store:
        forged = _forge(store, genuine, raw, "2099-01-01T00-00-00")
        pipeline.verify(store, forged)  # as a file it is flawless: sha256, size and trailer all match
    state = verify_backup(cluster=cluster, storage=storage, backup=forged, return_state=True)
    assert state.is_failed()
    with pytest.raises(BackupCorrupt, match="HashKV|revision|key count"):
        state.result()
    with load_storage(storage).build() as store:
        recorded = catalog.read_verification(store, forged)
    assert recorded is not None and not recorded.ok and recorded.report.differences


def test_a_corrupted_page_with_recomputed_digests_fails(source, tmp_path):
    cluster, storage, _ = source
    genuine = backup_etcd(cluster=cluster, storage=storage, keep=3)
    raw = tmp_path / "raw.db"
    with load_storage(storage).build() as store:
        pipeline.fetch_snapshot(store, genuine.key, raw)
        body = bytearray(raw.read_bytes()[:-32])
        leaves = mvcc_leaves(bytes(body))
        corrupt(body, leaves[len(leaves) // 2], "value bytes")
        damaged = bytes(body) + hashlib.sha256(body).digest()  # a valid trailer again
        assert len(damaged) // page_size(bytes(body)) > 10
        bad = _forge(store, genuine, damaged, "2099-01-01T00-00-00")
    with pytest.raises(BackupCorrupt, match="etcd HashKV at revision"):
        verify_backup(cluster=cluster, storage=storage, backup=bad)


def test_an_encrypted_backup_verifies_with_the_identity_block(source):
    cluster, storage, _ = source
    key = x25519.Identity.generate()
    identity = _name("age")
    AgeIdentity(identity=str(key)).save(identity)
    register_secret("an age identity", str(key))
    with pytest.raises(ConfigError, match="needs identity"):
        backup_etcd(cluster=cluster, storage=storage, encrypt_to=[str(key.to_public())], verify=True)
    record = backup_etcd(
        cluster=cluster, storage=storage, encrypt_to=[str(key.to_public())], verify=True, identity=identity
    )
    assert record.key.endswith(".db.zst.age")
    assert verify_backup(cluster=cluster, storage=storage, identity=identity).ok


def test_retention_never_drops_the_newest_verified_backup(source):
    cluster, storage, _ = source
    verified = backup_etcd(cluster=cluster, storage=storage, keep=1, verify=True)
    later = []
    for _ in range(2):
        time.sleep(1.1)  # backup names have one-second resolution
        later.append(backup_etcd(cluster=cluster, storage=storage, keep=1))
    rows = {r["key"]: r for r in list_backups(cluster=cluster, storage=storage)}
    assert set(rows) == {verified.key, later[-1].key}
    assert rows[verified.key]["verified"].startswith("ok ")


def _access(cluster):
    from etcd_backup.etcd import EtcdAccess

    return EtcdAccess(
        tuple(cluster.endpoints), ca=cluster.ca.read_text(), cert=cluster.cert.read_text(), key=cluster.key.read_text()
    )
