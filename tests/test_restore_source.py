"""`backup="latest"` never restores an older backup silently: skipped objects are named, damaged ones refuse.

Against a real one-member etcd and a local directory of real backups.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from etcd_backup import catalog, etcd, pipeline
from etcd_backup.catalog import manifest_key
from etcd_backup.errors import RestoreRefused
from etcd_backup.restore import source
from etcd_backup.storage.local import LocalStorage
from tests.fleet.data import fill

pytestmark = [pytest.mark.restore, pytest.mark.slow]
CLUSTER = "uk8s-latest"


@pytest.fixture
def two_backups(make_etcd_cluster, tmp_path):
    """An older and a newer complete backup of the same cluster (a second apart, so their names differ)."""
    cluster = make_etcd_cluster(members=1)
    access = etcd.EtcdAccess(
        endpoints=cluster.endpoints,
        ca=Path(cluster.ca).read_text(),
        cert=Path(cluster.cert).read_text(),
        key=Path(cluster.key).read_text(),
    )
    client = cluster.client(0)
    fill(client, 50, 300)
    store = LocalStorage(tmp_path / "backups")
    older = pipeline.backup(access, store, cluster_id=CLUSTER)
    time.sleep(1.1)
    fill(client, 80, 300)
    client.close()
    newer = pipeline.backup(access, store, cluster_id=CLUSTER)
    return store, older, newer


def latest(store, allow_older=False) -> source.Choice:
    return source.choose_backup(catalog.list_backups(store, CLUSTER), CLUSTER, source.LATEST, allow_older)


def test_a_newer_backup_failing_its_sha256_refuses_unless_allow_older(two_backups, tmp_path):
    store, older, newer = two_backups
    path = store.root / newer.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 tells
    path.write_bytes(bytes(data))
    choice = latest(store)
    assert choice.backup.key == newer.key
    with pytest.raises(RestoreRefused) as refused:
        source.fetch(store, choice, tmp_path / "snap.db")
    assert newer.key in refused.value.message and "fails verification" in refused.value.message
    assert f"the newest good one is {older.key}" in refused.value.message and "allow_older" in refused.value.message
    assert not (tmp_path / "snap.db").exists()
    snapshot, used = source.fetch(store, latest(store, allow_older=True), tmp_path / "snap.db", allow_older=True)
    assert snapshot.key == older.key and snapshot.raw_sha256 == older.raw_sha256
    assert [key for key, _ in used.skipped] == [newer.key] and "fails verification" in used.describe()


def test_a_truncated_backup_says_its_size_differs_from_its_manifest(two_backups):
    store, older, newer = two_backups
    path = store.root / newer.key
    path.write_bytes(path.read_bytes()[:-100])
    want = f"its size {newer.size - 100} differs from the {newer.size} bytes its manifest records"
    with pytest.raises(RestoreRefused, match=f"newest backup {newer.key} is damaged: {want}"):
        latest(store)
    with pytest.raises(RestoreRefused, match=f"is damaged: {want}; choose another backup"):
        source.choose_backup(catalog.list_backups(store, CLUSTER), CLUSTER, newer.key)
    assert latest(store, allow_older=True).backup.key == older.key


def test_a_newer_object_without_manifest_is_skipped_and_named(two_backups):
    store, older, newer = two_backups
    store.delete([manifest_key(newer.key)])  # as if its upload were still running
    choice = latest(store)
    assert choice.backup.key == older.key
    assert choice.skipped == ((newer.key, source.UNFINISHED),)
    assert f"newer objects skipped: {newer.key} (no manifest: an upload still running" in choice.describe()
