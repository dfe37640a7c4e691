"""S3/UFile faults in the middle of a multipart upload, wrong keys, a missing bucket, a crowded bucket.

Real SeaweedFS behind the UFile-rules proxy, which plays the sick server (tests/servers/ufile_proxy.py).
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest

from etcd_backup.errors import StorageError, TransientStorageError
from etcd_backup.pipeline import backup
from etcd_backup.storage.s3 import MiB, UFileStorage
from flows.backup import backup_etcd
from tests.faults import checks
from tests.servers.ufile_proxy import Fault

pytestmark = [pytest.mark.faults, pytest.mark.storage]
CLUSTER = "uk8s-s3faults"
READ_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def earlier(module_etcd, seaweedfs, _ufile_proxy_server):
    """A good backup made once per module (bucket, key); each test gets a copy in its own bucket."""
    bucket = seaweedfs.make_bucket()
    with ufile(seaweedfs, _ufile_proxy_server, bucket) as store:
        record = backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, compression="zstd")
    return bucket, record.key


def ufile(seaweedfs, proxy, bucket, **options) -> UFileStorage:
    """UFile storage as ufile_storage() builds it, with a short read timeout for the slow-answer case."""
    return UFileStorage(
        bucket,
        "backups",
        endpoint_url=proxy.endpoint,
        region="cn-bj",
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        multipart_chunk=8 * MiB,
        batch_delete=False,
        read_timeout=READ_TIMEOUT,
        **options,
    )


@pytest.fixture
def bucket(seaweedfs, earlier) -> str:
    """A fresh bucket holding a copy of the module's earlier good backup (server-side copies)."""
    source, key = earlier
    name = seaweedfs.make_bucket()
    admin = seaweedfs.client()
    for k in checks.backup_keys(key):
        admin.copy_object(Bucket=name, Key=f"backups/{k}", CopySource={"Bucket": source, "Key": f"backups/{k}"})
    return name


def uploads(seaweedfs, bucket) -> list[str]:
    """Multipart uploads under way in the bucket, as the server lists them (not through the proxy)."""
    return [u["Key"] for u in seaweedfs.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def intact(store, earlier_key, tmp_path, *new_keys) -> None:
    """The earlier backup and the new ones are all that is checks.visible, and each restores."""
    assert checks.visible(store) == checks.backup_keys(earlier_key, *new_keys)
    checks.assert_restorable(store, CLUSTER, [earlier_key, *new_keys], tmp_path)


SICK = {
    "500": Fault("status", frozenset({"upload-part"}), times=2),
    "reset": Fault("reset", frozenset({"upload-part"}), times=2),
    "slow": Fault("slow", frozenset({"upload-part"}), times=1, delay=READ_TIMEOUT + 1.5),
}


@pytest.mark.parametrize("sickness", list(SICK))
def test_a_sick_server_mid_upload_is_retried_into_one_good_backup(
    sickness, module_etcd, seaweedfs, ufile_proxy, bucket, earlier, tmp_path
):
    before = checks.key_digest(module_etcd)
    fault = ufile_proxy.inject(Fault(**{**SICK[sickness].__dict__, "hits": 0}))
    with ufile(seaweedfs, ufile_proxy, bucket) as store:
        record = backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")
        assert fault.hits == fault.times
        assert record.size > 8 * MiB  # two parts at least: the fault hit after the upload began
        intact(store, earlier[1], tmp_path, record.key)
    assert uploads(seaweedfs, bucket) == []
    assert checks.key_digest(module_etcd) == before


@pytest.mark.parametrize("kind", ["status", "reset"])
def test_an_upload_that_keeps_failing_is_aborted_and_leaves_nothing(
    kind, module_etcd, seaweedfs, ufile_proxy, bucket, earlier, tmp_path
):
    fault = ufile_proxy.inject(Fault(kind, frozenset({"upload-part"}), times=None))
    with ufile(seaweedfs, ufile_proxy, bucket) as store:
        with pytest.raises(TransientStorageError) as failed:
            backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")
        assert fault.hits >= 3  # botocore tried each failing part three times
        assert "put of" in str(failed.value) and seaweedfs.secret_key not in str(failed.value)
        assert uploads(seaweedfs, bucket) == []
        ufile_proxy.heal()
        intact(store, earlier[1], tmp_path)


def test_an_upload_the_server_could_not_abort_is_aborted_by_the_next_put(
    module_etcd, seaweedfs, ufile_proxy, bucket, earlier, tmp_path
):
    ufile_proxy.inject(Fault("reset", frozenset({"upload-part", "abort-upload"}), times=None))
    with ufile(seaweedfs, ufile_proxy, bucket) as store:
        with pytest.raises(TransientStorageError):
            backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")
        (left,) = uploads(seaweedfs, bucket)  # the link was down for the abort too: parts stay, unseen
        assert checks.visible(store) == checks.backup_keys(earlier[1])
        ufile_proxy.heal()
        record = backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")  # a retry
        assert uploads(seaweedfs, bucket) == []
        intact(store, earlier[1], tmp_path, record.key)
    assert left.startswith("backups/")


def test_an_abandoned_upload_is_aborted_when_the_storage_closes(module_etcd, seaweedfs, ufile_proxy, bucket):
    ufile_proxy.inject(Fault("reset", frozenset({"upload-part", "abort-upload"}), times=None))
    store = ufile(seaweedfs, ufile_proxy, bucket)
    with pytest.raises(TransientStorageError):
        backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")
    assert len(uploads(seaweedfs, bucket)) == 1
    ufile_proxy.heal()
    store.close()
    assert uploads(seaweedfs, bucket) == []


def test_wrong_keys_fail_clearly_at_once_and_prune_nothing(
    prefect_api, module_etcd, seaweedfs, ufile_proxy, bucket, earlier, tmp_path
):
    cluster = checks.save_cluster(module_etcd, CLUSTER)
    bad = "not-" + secrets.token_hex(8)
    ref = checks.save_ufile_block(seaweedfs, ufile_proxy, bucket, private_key=bad)
    with pytest.raises(StorageError) as failed:
        backup_etcd(cluster=cluster, storage=ref, keep=1)
    message = str(failed.value)
    assert "access denied" in message and "check the access key, secret key" in message
    assert not failed.value.transient and bad not in message and seaweedfs.secret_key not in message
    puts = [r for r in ufile_proxy.requests if r.startswith(("PUT", "POST"))]
    assert len(puts) == 1  # refused once, not retried (a retry cannot fix a key)
    with ufile(seaweedfs, ufile_proxy, bucket) as store:
        intact(store, earlier[1], tmp_path)


def test_a_missing_bucket_fails_clearly_and_is_not_created(prefect_api, module_etcd, seaweedfs, ufile_proxy):
    cluster = checks.save_cluster(module_etcd, CLUSTER)
    missing = f"missing-{secrets.token_hex(4)}"
    with pytest.raises(StorageError, match=f"bucket {missing} does not exist") as failed:
        backup_etcd(cluster=cluster, storage=checks.save_ufile_block(seaweedfs, ufile_proxy, missing), keep=1)
    assert not failed.value.transient
    assert missing not in {b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]}


FOREIGN = 1100  # more than a listing page of 1000


def _fill_foreign(seaweedfs, bucket) -> dict[str, str]:
    """Other tools' objects, some of them named much like ours; returns key -> ETag."""
    # most of them share the prefix a backup listing asks for, so the listing still needs two pages
    crowd = [f"backups/{CLUSTER}-backup-etcd-notes-{i:05d}.json" for i in range(FOREIGN - 56)]
    names = (
        crowd
        + [f"backups/velero/{i:05d}.json" for i in range(50)]
        + [
            "backups/notes.txt",
            f"backups/{CLUSTER}-old-backup-etcd-3.5.1-2020-01-01T00-00-00.db.zst",  # another cluster, ours by prefix
            f"backups/{CLUSTER}-backup-etcd-3.5.1-2020-01-01T00-00-00.db.zst.bak",
            f"backups/{CLUSTER}-backup-etcd-3.3.17-2019-05-01T03-00-00.db.tar.gz",  # the old plugin's: legacy
            f"backups/other/{CLUSTER}-backup-etcd-3.5.1-2020-01-01T00-00-00.db.zst",  # another prefix
            f"elsewhere/{CLUSTER}-backup-etcd-3.5.1-2020-01-01T00-00-00.db.zst",
        ]
    )
    admin = seaweedfs.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: admin.put_object(Bucket=bucket, Key=key, Body=b"theirs"), names))
    return _etags(seaweedfs, bucket, set(names))


def _etags(seaweedfs, bucket, keys: set[str] | None) -> dict[str, str]:
    pages = seaweedfs.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", []) if keys is None or o["Key"] in keys}


def test_a_bucket_crowded_with_other_tools_objects_is_paged_and_left_alone(
    prefect_api, module_etcd, seaweedfs, ufile_proxy, bucket, earlier, tmp_path
):
    foreign = _fill_foreign(seaweedfs, bucket)
    assert len(foreign) == FOREIGN
    cluster = checks.save_cluster(module_etcd, CLUSTER)
    ref = checks.save_ufile_block(seaweedfs, ufile_proxy, bucket)
    ufile_proxy.requests.clear()
    first = backup_etcd(cluster=cluster, storage=ref, keep=2)
    listings = [r for r in ufile_proxy.requests if r.startswith(f"GET /{bucket}?") and "prefix=backups" in r]
    pages = [r for r in listings if f"prefix=backups%2F{CLUSTER}-backup-etcd-" in r]
    assert len(pages) == 2  # one listing of this cluster's backup names, in pages of at most 1000 keys
    assert len(listings) == 3 and f"prefix=backups%2F{CLUSTER}-events-" in listings[-1]  # and its segments: none
    second = backup_etcd(cluster=cluster, storage=ref, keep=2)  # prunes the earlier backup, nothing else
    everything = _etags(seaweedfs, bucket, None)
    assert {k: everything.get(k) for k in foreign} == foreign
    ours = {f"backups/{k}" for k in checks.backup_keys(first.key, second.key)}
    assert set(everything) == set(foreign) | ours  # the earlier backup pruned, nothing else gone or added
    with ufile(seaweedfs, ufile_proxy, bucket) as store:
        checks.assert_restorable(store, CLUSTER, [first.key, second.key], tmp_path)
