"""Retention faults: a prune interrupted between a manifest and its object, backups dated in the future.

The prune and list flows run on the real Prefect test server; the UFile proxy fails the delete of one object.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from blocks import LocalStorage as LocalBlock
from etcd_backup.catalog import manifest_key
from etcd_backup.errors import StorageError
from etcd_backup.pipeline import backup
from etcd_backup.storage.local import LocalStorage
from flows.backup import list_backups, prune_backups
from tests.faults import checks
from tests.servers.fixtures import make_ufile
from tests.servers.ufile_proxy import Fault

pytestmark = [pytest.mark.faults, pytest.mark.backup]
CLUSTER = "uk8s-retentionfaults"


def backups_at(cluster, store, days: list[float]) -> list[str]:
    """Backups named as if taken `days` days ago (negative: a clock ahead), oldest first."""
    now = datetime.now(UTC)
    return [
        backup(checks.access_of(cluster), store, cluster_id=CLUSTER, now=now - timedelta(days=d)).key
        for d in sorted(days, reverse=True)
    ]


def test_a_prune_stopped_between_manifest_and_object_is_finished_by_the_next_prune(
    prefect_api, small_etcd, seaweedfs, ufile_proxy, tmp_path
):
    bucket = seaweedfs.make_bucket()
    store = make_ufile(seaweedfs, bucket, ufile_proxy)
    oldest, older, newest = backups_at(small_etcd, store, [3, 2, 1])
    cluster = checks.save_cluster(small_etcd, CLUSTER)
    ref = checks.save_ufile_block(seaweedfs, ufile_proxy, bucket)
    fault = ufile_proxy.inject(Fault("status", frozenset({"delete"}), times=None, ending=f"/{oldest}"))

    with pytest.raises(StorageError):
        prune_backups(cluster=cluster, storage=ref, keep=1, dry_run=False)  # and its three retries
    assert fault.hits >= 3
    # the older went; the oldest lost only its manifest
    assert checks.visible(store) == checks.backup_keys(newest) | {oldest}
    ufile_proxy.heal()

    rows = list_backups(cluster=cluster, storage=ref)
    assert [(r["key"], r["state"]) for r in rows] == [(newest, "complete"), (oldest, "incomplete")]
    assert prune_backups(cluster=cluster, storage=ref, keep=1) == [oldest]  # dry run: says what and why
    report = checks.latest_artifact(f"retention-{CLUSTER}")
    assert f"`{oldest}` | would remove | incomplete leftover: no manifest, dated 72." in report, report
    assert prune_backups(cluster=cluster, storage=ref, keep=1, dry_run=False) == [oldest]
    assert checks.visible(store) == checks.backup_keys(newest)
    checks.assert_restorable(store, CLUSTER, [newest], tmp_path)
    assert manifest_key(older) not in checks.visible(store)
    store.close()


def test_backups_dated_in_the_future_are_kept_uncounted_and_reported(prefect_api, small_etcd, tmp_path):
    store = LocalStorage(tmp_path / "backups")
    oldest, older, newest, future = backups_at(small_etcd, store, [3, 2, 1, -2])  # a clock two days ahead
    cluster = checks.save_cluster(small_etcd, CLUSTER)
    ref = checks.save_block(LocalBlock(directory=str(tmp_path / "backups")))

    assert prune_backups(cluster=cluster, storage=ref, keep=2, dry_run=False) == [oldest]
    report = checks.latest_artifact(f"retention-{CLUSTER}")
    assert f"`{future}` | keep | dated after now (a clock was wrong?)" in report, report
    assert "1 backup(s) dated after now" in report and "so 3 complete backups are kept" in report, report
    assert checks.visible(store) == checks.backup_keys(older, newest, future)
    checks.assert_restorable(store, CLUSTER, [older, newest, future], tmp_path)
