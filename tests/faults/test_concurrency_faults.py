"""Backups at the same time: eight clusters at once, two backups of one cluster, a prune racing a backup.

Eight real one-member etcd clusters, each holding a marker value no other has, each with an earlier backup;
eight backup flows run together (threads, one real Prefect test server) into one UFile bucket, each pruning
its own earlier backup (keep=1) while the others write. Two backups of one cluster started together: the
cluster lock (flows/locks.py) makes the second wait while the first uploads (held mid-upload by a relay).
A prune by hand while a backup uploads: it sees only complete backups, the new one lands whole.
"""

from __future__ import annotations

import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prefect.client.schemas.objects import StateType

from blocks import S3Storage as S3Block
from etcd_backup import flow_names
from etcd_backup.catalog import list_backups
from etcd_backup.pipeline import backup, fetch_snapshot
from flows.backup import backup_etcd, prune_backups
from tests.faults import checks
from tests.scale_helpers import Stall
from tests.servers.fixtures import make_s3, make_ufile
from tests.servers.tcp_proxy import TCPProxy
from tests.waiting import wait_until

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
    digests = [checks.key_digest(c) for c in clusters]
    bucket = seaweedfs.make_bucket()
    store = make_ufile(seaweedfs, bucket, ufile_proxy)
    bystander = backup(checks.access_of(clusters[0]), store, cluster_id="uk8s-bystander").key  # never named by a flow
    ref = checks.save_ufile_block(seaweedfs, ufile_proxy, bucket)
    blocks = [checks.save_cluster(c, cluster_id) for cluster_id, c in zip(IDS, clusters, strict=True)]

    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    first = [
        backup(checks.access_of(c), store, cluster_id=i, now=hour_ago).key for i, c in zip(IDS, clusters, strict=True)
    ]
    assert checks.visible(store) == checks.backup_keys(bystander, *first)

    with ThreadPoolExecutor(len(blocks)) as pool:
        second = list(pool.map(lambda block: backup_etcd(cluster=block, storage=ref, keep=1), blocks))

    # each pruned its own first only
    assert checks.visible(store) == checks.backup_keys(bystander, *(r.key for r in second))
    for cluster_id, cluster, new, digest in zip(IDS, clusters, second, digests, strict=True):
        assert new.cluster == cluster_id
        assert [b.key for b in list_backups(store, cluster_id)] == [new.key]
        db = tmp_path / f"{cluster_id}.db"
        fetch_snapshot(store, new.key, db)
        data = db.read_bytes()
        assert [other for other, marker in markers.items() if marker in data] == [cluster_id]
        assert checks.key_digest(cluster) == digest
    checks.assert_restorable(store, "uk8s-bystander", [bystander], tmp_path)
    checks.assert_restorable(store, IDS[0], [second[0].key], tmp_path)
    store.close()


@pytest.fixture
def relayed(prefect_api, make_etcd_cluster, seaweedfs):
    """A one-member etcd with ~300 KB that does not compress, its block, and S3 storage direct and through a relay."""
    cluster = make_etcd_cluster(members=1)
    client = cluster.client(0)
    for k in range(100):
        client.put(f"/registry/configmaps/race/{k}", os.urandom(3000))
    client.close()
    bucket = seaweedfs.make_bucket()
    with TCPProxy("127.0.0.1", int(seaweedfs.endpoint.rsplit(":", 1)[1])) as relay:
        refs = {}
        for how, endpoint in (("direct", seaweedfs.endpoint), ("relayed", f"http://127.0.0.1:{relay.port}")):
            refs[how] = checks.save_block(
                S3Block(
                    endpoint_url=endpoint,
                    bucket=bucket,
                    prefix="backups",
                    access_key_id=seaweedfs.access_key,
                    secret_access_key=seaweedfs.secret_key,
                )
            )
        store = make_s3(seaweedfs, bucket)
        yield SimpleNamespace(
            cluster=cluster, block=checks.save_cluster(cluster, "uk8s-race"), relay=relay, store=store, **refs
        )
        store.close()


def logs_of_running_backups() -> str:
    """The log lines of every running etcd-backup flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        LogFilter,
        LogFilterFlowRunId,
    )

    running = FlowRunFilter(state=FlowRunFilterState(type={"any_": [StateType.RUNNING]}))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_names.BACKUP])), flow_run_filter=running
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs])))
    return "\n".join(log.message for log in logs)


def task_window(flow_run_id) -> tuple[datetime, datetime]:
    """(first task run's start, last task run's end) of a flow run: when it touched etcd and storage."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return min(t.start_time for t in tasks if t.start_time), max(t.end_time for t in tasks if t.end_time)


def test_two_backups_of_one_cluster_started_together_run_one_after_the_other_and_both_are_good(relayed, tmp_path):
    """The second waits for the cluster lock while the first uploads, then runs: two good backups, no overlap."""
    stall = Stall(relayed.relay)

    def run():
        return backup_etcd(cluster=relayed.block, storage=relayed.relayed, keep=10, return_state=True)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run)
        stall.wait(60)
        second = pool.submit(run)
        held = f"lock etcd-cluster-{relayed.block} is held by another backup"
        wait_until(lambda: held in logs_of_running_backups(), "the second backup to wait for the lock", 120, 0.5)
        stall.go.set()
        states = [first.result(300), second.result(300)]

    assert [s.type for s in states] == [StateType.COMPLETED] * 2, states
    records = [s.result() for s in states]
    assert records[0].key != records[1].key
    checks.assert_restorable(relayed.store, "uk8s-race", [r.key for r in records], tmp_path)
    assert sorted(b.key for b in list_backups(relayed.store, "uk8s-race")) == sorted(r.key for r in records)
    windows = sorted(task_window(s.state_details.flow_run_id) for s in states)
    assert windows[0][1] <= windows[1][0]  # one after the other


def test_a_prune_racing_a_backup_keeps_the_new_backup_and_leaves_nothing_incomplete(relayed, tmp_path):
    """keep=1 pruned by hand while a backup uploads: the older backup goes, the new one lands whole."""
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    access = checks.access_of(relayed.cluster)
    older = [
        backup(access, relayed.store, cluster_id="uk8s-race", now=hour_ago - timedelta(minutes=m)).key for m in (1, 0)
    ]
    stall = Stall(relayed.relay)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(backup_etcd, cluster=relayed.block, storage=relayed.relayed, keep=10)
        stall.wait(60)
        removed = prune_backups(cluster=relayed.block, storage=relayed.direct, keep=1, dry_run=False)
        stall.go.set()
        new = running.result(300)

    assert removed == [older[0]]  # the upload in flight is not listed, so not counted and not touched
    assert checks.visible(relayed.store) == checks.backup_keys(older[1], new.key)  # nothing partial, nothing else
    checks.assert_restorable(relayed.store, "uk8s-race", [older[1], new.key], tmp_path)
