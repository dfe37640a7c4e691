"""Continuous backup core against real etcd 3.5.1 and 3.4.23: follow, segment, upload, catalog, replay."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyetcd import etcdrpc

from etcd_backup import etcd, pipeline
from etcd_backup.catalog import Backup, Manifest, format_key
from etcd_backup.continuous import records
from etcd_backup.continuous.chain import Catalog, Segment, coverage, from_ns, list_segments
from etcd_backup.continuous.errors import SegmentCorrupt, StartCompacted
from etcd_backup.continuous.names import format_segment_key, parse_segment_key
from etcd_backup.continuous.prune import plan_segments
from etcd_backup.continuous.replay import current_revision, replay, verify_segments
from etcd_backup.continuous.runner import ContinuousBackup, start_point
from etcd_backup.continuous.segment import load_segment
from etcd_backup.continuous.watch import Follower
from etcd_backup.snapshot import inspect_db
from etcd_backup.storage.local import LocalStorage
from tests.continuous_helpers import WriteLoad, access_of, digest, revision_now, start_scratch
from tests.fleet.binaries import find_binaries
from tests.servers.fixtures import make_s3
from tests.servers.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.continuous, pytest.mark.slow]
CLUSTER = "uk8s-cont"
BOTH = pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)


class Run:
    """A ContinuousBackup on a thread."""

    def __init__(self, backup: ContinuousBackup):
        self.backup, self.error, self.summary = backup, None, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert backup.started.wait(30), "the watch did not start"

    def _run(self):
        try:
            self.summary = self.backup.run()
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            self.error = exc

    def drain_and_stop(self, access: etcd.EtcdAccess, timeout: float = 60) -> None:
        """Wait until every revision the cluster has is uploaded, then stop."""
        target = max(revision_now(access, e) for e in access.endpoints if _up(access, e))
        deadline = time.monotonic() + timeout
        while self.backup.writer.uploaded_revision < target:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"uploaded {self.backup.lag()} of {target}"
            time.sleep(0.2)
        self.backup.stop()
        self.thread.join(30)
        assert self.error is None, self.error


def _up(access: etcd.EtcdAccess, endpoint: str) -> bool:
    try:
        revision_now(access, endpoint)
        return True
    except Exception:  # noqa: BLE001
        return False


def _tool(version: str) -> Path:
    binaries = find_binaries(version)
    return binaries.etcdutl or binaries.etcdctl


def _all_revisions(storage, cluster: str = CLUSTER) -> list[records.Revision]:
    out = []
    for segment in list_segments(storage, cluster).complete:
        manifest = Catalog(storage, cluster).manifest(segment)
        out.extend(records.decode(load_segment(storage, manifest), segment.key))
    return out


def _replay_and_compare(storage, access, version, tmp_path, to_revision=None, to_time=None, **kw) -> int:
    """Plan, restore the full snapshot into a scratch etcd, replay; assert revision and digest equal the source's."""
    plan = Catalog(storage, CLUSTER).plan(to_revision=to_revision, to_time=to_time)
    tmp_path.mkdir(parents=True, exist_ok=True)
    snapshot = tmp_path / "snap.db"
    pipeline.fetch_snapshot(storage, plan.backup, snapshot)
    base = inspect_db(snapshot, _tool(version)).revision
    scratch = start_scratch(snapshot, version, tmp_path / "scratch")
    try:
        result = replay(
            scratch.access, storage, plan.segments, base_revision=base, to_revision=plan.target_revision, **kw
        )
        assert result.revision == plan.target_revision
        print(f"replayed {result}")
        assert current_revision(scratch.access, scratch.endpoint) == plan.target_revision
        source = next(e for e in access.endpoints if _up(access, e))
        expected = digest(access, source, plan.target_revision)
        assert digest(scratch.access, scratch.endpoint) == expected
        return plan.target_revision
    finally:
        scratch.stop()


@BOTH
def test_follow_then_replay_to_a_random_revision(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster(3)
    access = access_of(cluster)
    storage = LocalStorage(tmp_path / "store")
    load = WriteLoad(access, seed=1).start()
    time.sleep(1)
    run = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=None, segment_seconds=0.5))
    record = pipeline.backup(access, storage, cluster_id=CLUSTER)
    time.sleep(6)
    load.stop()
    run.drain_and_stop(access)
    followed = _all_revisions(storage)
    revisions = [r.revision for r in followed]
    assert revisions == list(range(run.backup.start_revision, revisions[-1] + 1))  # no gap, no duplicate
    found = Catalog(storage, CLUSTER).coverage()
    assert found.gaps == [] and found.incomplete == []
    events = [e for r in followed for e in r.decoded()]
    assert max(len(r.events) for r in followed) == 200  # a prefix delete: more than --max-txn-ops in one revision
    assert any(e.type == records.PUT and e.kv.lease for e in events)
    leased = {e.kv.key for e in events if e.type == records.PUT and e.kv.lease}
    assert any(e.type == records.DELETE and e.kv.key in leased for e in events)  # expired or deleted
    target = random.Random(7).randint(record.revision, revisions[-1])
    print(f"etcd {etcd_version}: {len(revisions)} revisions followed, replaying {record.revision}..{target}")
    assert _replay_and_compare(storage, access, etcd_version, tmp_path, to_revision=target) == target


def test_follow_to_s3_encrypted_and_restore_to_a_time(make_etcd_cluster, seaweedfs, s3_bucket, tmp_path):
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    cluster = make_etcd_cluster(3)
    access = access_of(cluster)
    storage = make_s3(seaweedfs, s3_bucket)
    load = WriteLoad(access, seed=2).start()
    recipients = [str(identity.to_public())]
    run = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=None, recipients=recipients, segment_seconds=1))
    pipeline.backup(access, storage, cluster_id=CLUSTER, recipients=recipients)
    time.sleep(5)
    load.stop()
    run.drain_and_stop(access)
    listing = list_segments(storage, CLUSTER)
    assert listing.complete and all(s.key.endswith(".evl.zst.age") for s in listing.complete)
    catalog = Catalog(storage, CLUSTER, identities=[str(identity)])
    revisions = []
    for segment in listing.complete:
        manifest = catalog.manifest(segment)
        assert manifest.encryption == "age" and manifest.recipients == recipients
        revisions.extend(records.decode(load_segment(storage, manifest, [identity]), segment.key))
    pick = revisions[len(revisions) * 2 // 3]
    when = from_ns(pick.received_ns) + timedelta(microseconds=1)
    expected = max(r.revision for r in revisions if r.received_ns <= pick.received_ns + 1000)
    plan = catalog.plan(to_time=when)
    assert plan.target_revision == expected
    assert plan.target_time is not None and plan.target_time <= when
    snapshot = tmp_path / "snap.db"
    pipeline.fetch_snapshot(storage, plan.backup, snapshot, identities=[str(identity)])
    base = inspect_db(snapshot, _tool("3.5.1")).revision
    scratch = start_scratch(snapshot, "3.5.1", tmp_path / "scratch")
    try:
        replay(
            scratch.access,
            storage,
            plan.segments,
            base_revision=base,
            to_revision=plan.target_revision,
            identities=[str(identity)],
        )
        assert digest(scratch.access, scratch.endpoint) == digest(access, access.endpoints[0], expected)
    finally:
        scratch.stop()


@BOTH
def test_failover_of_the_watched_member(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster(3)
    access = access_of(cluster)
    storage = LocalStorage(tmp_path / "store")
    load = WriteLoad(access, seed=3).start()
    run = Run(
        ContinuousBackup(access, storage, CLUSTER, start_revision=None, segment_seconds=0.5, progress_interval=0.5)
    )
    record = pipeline.backup(access, storage, cluster_id=CLUSTER)
    time.sleep(3)
    watched = run.backup.follower.endpoint
    load.avoid(watched)
    index = cluster.endpoints.index(watched)
    cluster.stop_member(index)
    time.sleep(5)
    load.stop()
    survivors = etcd.EtcdAccess(
        tuple(e for e in access.endpoints if e != watched), ca=access.ca, cert=access.cert, key=access.key
    )
    run.drain_and_stop(survivors)
    assert run.summary.failovers >= 1
    revisions = [r.revision for r in _all_revisions(storage)]
    assert revisions == list(range(run.backup.start_revision, revisions[-1] + 1))
    manifests = [Catalog(storage, CLUSTER).manifest(s) for s in list_segments(storage, CLUSTER).complete]
    assert {e for m in manifests for e in m.source_endpoints} - {watched}, "no segment came from another member"
    target = random.Random(11).randint(record.revision, revisions[-1])
    _replay_and_compare(storage, survivors, etcd_version, tmp_path, to_revision=target)


def test_a_frozen_member_is_left_after_the_stall_timeout(make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(3)
    access = access_of(cluster)
    storage = LocalStorage(tmp_path / "store")
    load = WriteLoad(access, seed=8).start()
    run = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=None, segment_seconds=0.5))
    time.sleep(2)
    watched = run.backup.follower.endpoint
    load.avoid(watched)
    process = cluster.members[cluster.endpoints.index(watched)].process
    os.kill(process.pid, signal.SIGSTOP)  # alive, connected, silent
    try:
        deadline = time.monotonic() + 60
        while run.backup.follower.endpoint in (watched, ""):
            assert time.monotonic() < deadline, run.backup.lag()
            time.sleep(0.2)
        time.sleep(2)
        load.stop()
        survivors = [e for e in access.endpoints if e != watched]
        run.drain_and_stop(etcd.EtcdAccess(tuple(survivors), ca=access.ca, cert=access.cert, key=access.key))
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert "no answer within" in run.backup.follower.state().last_error
    revisions = [r.revision for r in _all_revisions(storage)]
    assert revisions == list(range(run.backup.start_revision, revisions[-1] + 1))


def test_storage_outage_fills_the_bounded_buffer_then_catches_up(make_etcd_cluster, seaweedfs, s3_bucket):
    cluster = make_etcd_cluster(1)
    access = access_of(cluster)
    port = int(seaweedfs.endpoint.rsplit(":", 1)[1])
    with TCPProxy("127.0.0.1", port) as proxy:
        storage = make_s3(seaweedfs, s3_bucket, endpoint=f"http://127.0.0.1:{proxy.port}")
        load = WriteLoad(access, seed=6, rate=300).start()
        backup = ContinuousBackup(
            access, storage, CLUSTER, start_revision=None, segment_seconds=0.3, segment_mb=0.05, buffer_mb=0.25
        )
        run = Run(backup)
        pipeline.backup(access, storage, cluster_id=CLUSTER)
        time.sleep(2)
        proxy.cut_after(0)
        lags = []
        for _ in range(40):  # longer than the stall timeout: a blocked consumer is not a silent member
            time.sleep(0.2)
            lags.append(backup.lag())
        assert max(lag.pending_bytes for lag in lags) <= 0.25 * 2**20 + 64 * 1024  # bounded: one revision over
        assert lags[-1].upload_errors > 0 and lags[-1].last_error
        assert lags[-1].revisions > lags[0].revisions > 0  # the lag grows visibly
        proxy.heal()
        load.stop()
        run.drain_and_stop(access)
    revisions = [r.revision for r in _all_revisions(storage)]
    assert revisions == list(range(backup.start_revision, revisions[-1] + 1))
    assert Catalog(storage, CLUSTER).coverage().gaps == []
    assert run.summary.failovers == 0


@BOTH
def test_compacted_start_revision_raises_with_the_compact_revision(make_etcd_cluster, etcd_version):
    cluster = make_etcd_cluster(1)
    access = access_of(cluster)
    with etcd.channel(access, access.endpoints[0]) as chan:
        kv = etcdrpc.KVStub(chan)
        revs = [kv.Put(etcdrpc.PutRequest(key=b"k%d" % i, value=b"v"), timeout=5).header.revision for i in range(10)]
        kv.Compact(etcdrpc.CompactionRequest(revision=revs[6]), timeout=5)
    follower = Follower(access, revs[2])
    with pytest.raises(StartCompacted) as caught:
        next(iter(follower))
    assert caught.value.compact_revision == revs[6] and caught.value.start_revision == revs[2]
    assert str(revs[6]) in str(caught.value)
    follower = Follower(access, revs[6] + 1)
    assert next(iter(follower)).revision == revs[6] + 1
    follower.stop()


def test_missing_or_corrupt_segment_refuses_naming_it(make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(3)
    access = access_of(cluster)
    storage = LocalStorage(tmp_path / "store")
    load = WriteLoad(access, seed=4).start()
    run = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=None, segment_seconds=0.3))
    record = pipeline.backup(access, storage, cluster_id=CLUSTER)
    time.sleep(5)
    load.stop()
    run.drain_and_stop(access)
    segments = list_segments(storage, CLUSTER).complete
    after = [s for s in segments if s.first_revision > record.revision + 1]
    assert len(after) >= 4
    corrupt, missing = after[1], after[-2]
    path = tmp_path / "store" / corrupt.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    storage.delete([missing.key, missing.manifest_key])

    catalog = Catalog(storage, CLUSTER)
    gaps = catalog.coverage().gaps
    assert len(gaps) == 1 and (gaps[0].first, gaps[0].last) == (missing.first_revision, missing.last_revision)
    assert gaps[0].unreachable_last == segments[-1].last_revision and missing.key not in str(gaps[0])
    with pytest.raises(SegmentCorrupt, match=f"{missing.first_revision}..{missing.last_revision}"):
        catalog.plan(to_revision=missing.last_revision + 1)
    plan = catalog.plan(to_revision=corrupt.last_revision)
    with pytest.raises(SegmentCorrupt) as caught:  # the dry run's check, nothing applied
        verify_segments(storage, plan.segments, base_revision=plan.base_revision, to_revision=plan.target_revision)
    assert caught.value.node == corrupt.key and "sha256" in str(caught.value)
    with pytest.raises(SegmentCorrupt) as caught:
        _replay_and_compare(storage, access, "3.5.1", tmp_path / "a", to_revision=corrupt.last_revision)
    assert caught.value.node == corrupt.key and "sha256" in str(caught.value)
    before = corrupt.first_revision - 1
    assert _replay_and_compare(storage, access, "3.5.1", tmp_path / "b", to_revision=before) == before


def test_restart_resumes_after_the_last_uploaded_segment(make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(1)
    access = access_of(cluster)
    storage = LocalStorage(tmp_path / "store")
    load = WriteLoad(access, seed=5).start()
    assert start_point(storage, CLUSTER).revision is None  # no full backup yet: a new chain
    first = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=None, segment_seconds=0.5))
    record = pipeline.backup(access, storage, cluster_id=CLUSTER)
    time.sleep(2)
    first.backup.stop()
    first.thread.join(30)
    uploaded = first.backup.writer.uploaded_revision
    point = start_point(storage, CLUSTER)
    assert point.revision == uploaded + 1, point
    time.sleep(2)  # written while nobody follows
    second = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=point.revision, segment_seconds=0.5))
    time.sleep(2)
    load.stop()
    second.drain_and_stop(access)
    revisions = [r.revision for r in _all_revisions(storage)]
    assert revisions == list(range(first.backup.start_revision, revisions[-1] + 1))
    target = random.Random(5).randint(uploaded - 5, revisions[-1])
    _replay_and_compare(storage, access, "3.5.1", tmp_path, to_revision=max(target, record.revision))


def test_segment_names_sort_and_parse_back():
    rnd = random.Random(3)
    ranges = sorted({(a, a + rnd.randrange(5000)) for a in (rnd.randrange(1, 10**12) for _ in range(300))})
    ranges += [(1, 1), (9, 10), (10**18, 2**63 - 1)]
    keys = [format_segment_key("uk8s-x-events-1", a, b, encrypted=bool(a % 2), prefix="p/q") for a, b in ranges]
    assert sorted(keys) == [k for _, k in sorted(zip(ranges, keys, strict=True))]
    for (a, b), key in zip(ranges, keys, strict=True):
        parsed = parse_segment_key(key)
        assert parsed is not None
        assert (parsed.cluster_id, parsed.first_revision, parsed.last_revision) == ("uk8s-x-events-1", a, b)
        assert (parsed.prefix, parsed.encrypted) == ("p/q", bool(a % 2))
    for foreign in [
        "uk8s-x-backup-etcd-3.5.1-2024-01-01T00-00-00.db.zst",
        keys[0] + ".manifest.json",
        "uk8s-x-events-12-13.evl.zst",
        "uk8s-x-events-0000000000000000002-0000000000000000001.evl.zst",
    ]:
        assert parse_segment_key(foreign) is None


def _backup(revision: int) -> Backup:
    when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=revision)
    key = format_key(CLUSTER, "3.5.1", when, "zstd")
    manifest = Manifest(
        cluster=CLUSTER, key=key, size=1, sha256="0", raw_size=1, raw_sha256="0", revision=revision,
        revision_exact=True, key_count=1, etcd_version="3.5.1", source_member="m", source_endpoint="e",
        created=when, compression="zstd",
    )  # fmt: skip
    return Backup(key, CLUSTER, when, 1, "zstd", False, True, False, manifest)


def test_segment_retention_never_prunes_the_newest_or_foreign():
    def seg(cluster, a, b, complete=True):
        return Segment(format_segment_key(cluster, a, b), cluster, a, b, False, 1, complete)

    B = _backup  # noqa: N806

    segments = [seg(CLUSTER, 1, 50), seg(CLUSTER, 51, 100, False), seg(CLUSTER, 101, 150), seg("other", 1, 10)]
    plan = plan_segments(segments, [B(120), B(400)], CLUSTER)
    assert [s.key for s in plan.remove] == [segments[0].key, segments[1].key]
    assert segments[3] in plan.keep and segments[2] in plan.keep
    plan = plan_segments([seg(CLUSTER, 1, 50)], [B(400)], CLUSTER)
    assert plan.remove == [] and "newest" in plan.reasons[format_segment_key(CLUSTER, 1, 50)]
    assert plan_segments(segments, [], CLUSTER).remove == []


def test_coverage_reports_every_gap_against_the_full_backups():
    def seg(a, b, complete=True):
        return Segment(format_segment_key(CLUSTER, a, b), CLUSTER, a, b, False, 1, complete)

    segments = [seg(90, 99), seg(101, 200), seg(201, 260), seg(301, 400), seg(451, 500), seg(501, 520)]
    found = coverage(segments, [_backup(100), _backup(350), _backup(600)], [seg(261, 280, complete=False)])
    assert found.reachable == [(100, 260), (350, 400), (600, 600)]
    assert [(g.first, g.last, g.unreachable_last) for g in found.gaps] == [
        (261, 300, 349),
        (401, 450, 599),
        (521, 599, 599),
    ]
    assert found.gaps[0].incomplete == (format_segment_key(CLUSTER, 261, 280),)
    assert found.gaps[0].after == format_segment_key(CLUSTER, 201, 260)
    assert found.gaps[0].before == format_segment_key(CLUSTER, 301, 400)
    assert found.before_oldest_backup == [format_segment_key(CLUSTER, 90, 99)]
    assert coverage(segments, []).reachable == []
