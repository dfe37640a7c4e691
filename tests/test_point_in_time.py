"""Point-in-time restore on the test fleet (three master nodes, etcd 3.5.1, TLS) through a real Prefect API.

One history for the module: a steady write load (puts, updates, deletes, multi-key transactions, keys on
3-second leases that expire) is followed into segments; full backup B1; the watched member is killed (the
follower fails over) and started again; the source is compacted at the failover revision; two targets are
drawn at random after the failover and their key digests kept; the source is compacted past both; full
backup B2; more load. So each target lies between two full backups, after a failover of the watcher and a
compaction (the segments replayed cross both), and behind a compaction: the source can no longer read them.
The tests then break quorum and restore: a missing and a corrupt segment refuse before any node is touched;
a time is planned and rebuilt by a dry run, which must reach the last revision received at or before it; a
revision before the damaged segments restores exactly (revision and key digest). Tests run in file order
on one worker.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from pyetcd import etcdrpc

from blocks import LocalStorage
from etcd_backup import etcd, pipeline
from etcd_backup.catalog import BackupRecord
from etcd_backup.continuous import records
from etcd_backup.continuous.catalog import Catalog
from etcd_backup.continuous.chain import Segment
from etcd_backup.continuous.runner import ContinuousBackup
from etcd_backup.continuous.segment import load_segment
from etcd_backup.continuous.timeline import from_ns
from etcd_backup.continuous.watch import Follower
from etcd_backup.storage.local import LocalStorage as LocalStore
from flows.restore_cluster import restore_cluster
from tests.continuous_helpers import Run, WriteLoad, digest, revision_now, stop_write_loads  # noqa: F401 - autouse fixture
from tests.fleet.data import fill
from tests.restore_helpers import artifacts, fleet_state, planned_steps, save_cluster_block

pytestmark = [
    pytest.mark.continuous,
    pytest.mark.restore,
    pytest.mark.fleet,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.xdist_group("point-in-time"),  # one fleet and one history for the module, tests in order
]
CLUSTER_ID = "uk8s-pitr"


@dataclass
class History:
    """The followed history and what the tests restore to, with the source's digests kept before compaction."""

    fleet: object
    store: LocalStore
    cluster: str
    storage: str
    backups: list[BackupRecord]
    failover_revision: int
    compacted: int
    to_revision: int
    time_target: datetime
    time_revision: int
    digests: dict[int, tuple[str, int]] = field(default_factory=dict)
    leased: dict[int, set[bytes]] = field(default_factory=dict)  # keys that had a lease at the revision


def _access(fleet) -> etcd.EtcdAccess:
    pki = fleet.pki
    return etcd.EtcdAccess(
        tuple(fleet.endpoints), ca=pki.ca.read_text(), cert=pki.cert.read_text(), key=pki.key.read_text(), timeout=5
    )


def _leased(access: etcd.EtcdAccess, revision: int) -> set[bytes]:
    with etcd.channel(access, access.endpoints[0]) as chan:
        request = etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", revision=revision, keys_only=True)
        return {kv.key for kv in etcdrpc.KVStub(chan).Range(request, timeout=10).kvs if kv.lease}


def _fail_over(fleet, backup: ContinuousBackup, load: WriteLoad, access: etcd.EtcdAccess) -> int:
    """Kill the watched member's etcd; return the first revision the follower took from another member."""
    watched = backup.follower.endpoint
    node = next(n for n in fleet.nodes if n.client_url == watched)
    load.avoid(watched)
    node.kill_etcd()
    _until(lambda: backup.follower.endpoint not in (watched, ""), 60, f"no failover: {backup.lag()}")
    resumed = backup.follower.next_revision
    time.sleep(1.5)
    node.ssh("systemctl start etcd")
    fleet.wait_healthy(60)
    load.avoid("")
    assert backup.follower.state().failovers >= 1
    return resumed


def _compact(access: etcd.EtcdAccess, revision: int) -> None:
    with etcd.channel(access, access.endpoints[0]) as chan:
        etcdrpc.KVStub(chan).Compact(etcdrpc.CompactionRequest(revision=revision, physical=True), timeout=30)


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _received(store: LocalStore, revision: int) -> tuple[datetime, int]:
    """When the follower received revision, and the last revision received in that same microsecond."""
    catalog = Catalog(store, CLUSTER_ID)
    stored = [
        record
        for segment in catalog.listing.complete
        for record in records.decode(load_segment(store, catalog.manifest(segment)), segment.key)
    ]
    at = next(r.received_ns for r in stored if r.revision == revision) // 1000
    return from_ns(at * 1000), max(r.revision for r in stored if r.received_ns // 1000 <= at)


@pytest.fixture(scope="module")
def history(prefect_api, module_fleet, tmp_path_factory) -> History:
    fleet = module_fleet
    with fleet.client() as client:
        fill(client, 300, 600)
    access = _access(fleet)
    store_dir = tmp_path_factory.mktemp("pitr-store")
    store = LocalStore(store_dir)
    load = WriteLoad(access, rate=120, seed=41, lease_ttl=3).start()
    try:  # the load never outlives the fixture, even when it fails
        backup = ContinuousBackup(
            access, store, CLUSTER_ID, start_revision=None, segment_seconds=0.5, progress_interval=0.5
        )
        run = Run(backup)
        first = pipeline.backup(access, store, cluster_id=CLUSTER_ID)
        time.sleep(2)
        failover = _fail_over(fleet, backup, load, access)
        _compact(access, failover - 1)  # the segments from B1 to the targets cross a compaction of the source
        _until(lambda: load.acked[-1][0] > failover + 200, 60, "the load did not go on after the failover")
        now = max(revision_now(access, e) for e in access.endpoints)
        rnd = random.Random(41)
        to_revision, picked = rnd.randint(failover, now), rnd.randint(failover, now)
        _until(lambda: backup.writer.uploaded_revision >= now, 60, f"not uploaded: {backup.lag()}")
        when, time_revision = _received(store, picked)
        targets = (to_revision, time_revision)
        digests = {t: digest(access, access.endpoints[0], t) for t in targets}
        leased = {t: _leased(access, t) for t in targets}
        _compact(access, now)  # the source can no longer read the targets
        time.sleep(1.5)
        second = pipeline.backup(access, store, cluster_id=CLUSTER_ID)
        time.sleep(2)
        load.stop()
        run.drain_and_stop(access)
    finally:
        load.stop()
    assert first.revision < min(targets) and max(targets) < now < second.revision
    cluster, storage = f"pitr-{secrets.token_hex(4)}", f"pitr-store-{secrets.token_hex(4)}"
    save_cluster_block(fleet, CLUSTER_ID, cluster)
    LocalStorage(directory=str(store_dir)).save(storage)
    print(f"history: B1 at {first.revision}, failover at {failover}, targets {targets}, compacted at {now}, "
          f"B2 at {second.revision}, {backup.writer.uploaded_revision} revisions followed")  # fmt: skip
    return History(
        fleet, store, cluster, f"local-directory-storage/{storage}", [first, second], failover, now, to_revision,
        when, time_revision, digests, leased,
    )  # fmt: skip


def _lose_quorum(fleet) -> None:
    """Fail etcd2 and etcd3 (data damaged) unless quorum is lost already."""
    if etcd.health(_access(fleet), rounds=1).get(fleet.nodes[1].client_url) == "ok":
        fleet.lose_quorum("fail")


def _restore(history: History, **params):
    """Lose quorum unless it is lost already, then run the restore flow; its final state."""
    _lose_quorum(history.fleet)
    return restore_cluster(cluster=history.cluster, storage=history.storage, return_state=True, **params)


def _segment_after(history: History, skip: int = 0) -> Segment:
    """A complete segment after both targets and before B2, `skip` segments in."""
    later = [
        s
        for s in Catalog(history.store, CLUSTER_ID).listing.complete
        if s.first_revision > max(history.to_revision, history.time_revision) + 1
        and s.last_revision < history.backups[1].revision_low
    ]
    assert len(later) > skip + 1, later
    return later[skip]


def _assert_restored_at(history: History, result: dict, target: int) -> None:
    """The cluster holds the source's keys at the target, and after it only lease expiries of keys leased there."""
    fleet = history.fleet
    fleet.wait_healthy(60)
    members = json.loads(fleet.etcdctl("member", "list", "-w", "json").stdout)["members"]
    assert len(members) == 3
    assert result["to_revision"] == target and min(v["revision"] for v in result["data"].values()) >= target
    access = _access(fleet)
    assert digest(access, access.endpoints[0], target) == history.digests[target]
    now = max(revision_now(access, e) for e in access.endpoints)
    follower = Follower(access, target + 1)
    for revision in follower if now > target else ():
        for event in revision.decoded():
            assert event.type == records.DELETE and event.kv.key in history.leased[target], (revision, event)
        if revision.revision >= now:
            follower.stop()


def test_missing_or_corrupt_segment_refuses_before_any_node_changes(history):
    corrupt, missing = _segment_after(history, 0), _segment_after(history, 2)
    path = history.store.root / corrupt.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    history.store.delete([missing.key, missing.manifest_key])
    _lose_quorum(history.fleet)
    before = fleet_state(history.fleet)
    state = _restore(history, to_revision=missing.last_revision, confirm=True)
    assert state.is_failed() and f"{missing.first_revision}..{missing.last_revision}" in state.message, state.message
    state = _restore(history, to_revision=corrupt.last_revision, confirm=True)
    assert state.is_failed() and corrupt.key in state.message and "sha256" in state.message, state.message
    assert fleet_state(history.fleet) == before


def test_restore_to_a_time(history):
    """A dry run: it rebuilds and checks the snapshot at the revision it reaches; the rest is the revision path."""
    dry = _restore(history, to_time=history.time_target, dry_run=True)
    assert dry.is_completed(), dry.message
    planned = dry.result()
    assert planned["to_revision"] == history.time_revision and planned["time"] == history.time_target.isoformat()
    assert planned["backup"] == history.backups[0].key and planned["segments"] > 0
    plan = artifacts(dry)[f"restore-plan-{CLUSTER_ID}"]  # the dry run names what it uses and what it reaches
    for named in (planned["backup"], planned["first_segment"], planned["last_segment"], planned["time"]):
        assert named in plan, named
    assert f"revision {history.time_revision}" in plan


def test_restore_to_a_revision_before_the_gap(history):
    state = _restore(history, to_revision=history.to_revision, confirm=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["backup"] == history.backups[0].key and result["segments"] > 0
    _assert_restored_at(history, result, history.to_revision)
    plan = artifacts(state)[f"restore-plan-{CLUSTER_ID}"]
    assert "--bump-revision/--mark-compacted are not used" in plan and f"revision {history.to_revision}" in plan
    assert all("bump" not in step for step in planned_steps(plan))
