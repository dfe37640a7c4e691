"""Eight clusters backed up at once into one bucket: every cluster gets exactly its own good backup.

Eight real one-member etcd clusters, each holding a marker value no other has, each with an earlier backup;
eight backup flows run together (threads, one real Prefect test server) into one UFile bucket, each pruning
its own earlier backup (keep=1) while the others write.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from etcd_backup.catalog import list_backups
from etcd_backup.pipeline import backup, fetch_snapshot
from flows.backup import backup_etcd
from tests.faults.checks import (
    access_of,
    assert_restorable,
    backup_keys,
    key_digest,
    save_cluster,
    save_ufile_block,
    visible,
)
from tests.servers.fixtures import make_ufile

pytestmark = [pytest.mark.faults, pytest.mark.backup]
# Ids that are prefixes of each other and look alike: a parser or a prune that crosses shows here.
IDS = ["uk8s-conc", "uk8s-conc-2", "uk8s-conc-22", "uk8s-conc-backup", "uk8s-c", "uk8s-c-etcd", "u", "uk8s-conc-b"]


def test_eight_clusters_backed_up_at_once_each_get_exactly_their_own_backup(
    prefect_api, make_etcd_cluster, seaweedfs, ufile_proxy, tmp_path
):
    with ThreadPoolExecutor(4) as pool:
        clusters = list(pool.map(lambda _: make_etcd_cluster(members=1), IDS))
    markers = {}
    for cluster_id, cluster in zip(IDS, clusters, strict=True):
        markers[cluster_id] = secrets.token_hex(16).encode()
        client = cluster.client(0)
        client.put(f"/registry/configmaps/kube-system/{cluster_id}", markers[cluster_id] * 4)
        client.close()
    digests = [key_digest(c) for c in clusters]
    bucket = seaweedfs.make_bucket()
    store = make_ufile(seaweedfs, bucket, ufile_proxy)
    bystander = backup(access_of(clusters[0]), store, cluster_id="uk8s-bystander").key  # never named by a flow
    ref = save_ufile_block(seaweedfs, ufile_proxy, bucket)
    blocks = [save_cluster(c, cluster_id) for cluster_id, c in zip(IDS, clusters, strict=True)]

    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    first = [backup(access_of(c), store, cluster_id=i, now=hour_ago).key for i, c in zip(IDS, clusters, strict=True)]
    assert visible(store) == backup_keys(bystander, *first)

    with ThreadPoolExecutor(len(blocks)) as pool:
        second = list(pool.map(lambda block: backup_etcd(cluster=block, storage=ref, keep=1), blocks))

    assert visible(store) == backup_keys(bystander, *(r.key for r in second))  # each pruned its own first only
    for cluster_id, cluster, new, digest in zip(IDS, clusters, second, digests, strict=True):
        assert new.cluster == cluster_id
        assert [b.key for b in list_backups(store, cluster_id)] == [new.key]
        db = tmp_path / f"{cluster_id}.db"
        fetch_snapshot(store, new.key, db)
        data = db.read_bytes()
        assert [other for other, marker in markers.items() if marker in data] == [cluster_id]
        assert key_digest(cluster) == digest
    assert_restorable(store, "uk8s-bystander", [bystander], tmp_path)
    assert_restorable(store, IDS[0], [second[0].key], tmp_path)
    store.close()
