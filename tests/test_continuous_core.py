"""Continuous backup core against real etcd 3.5.1 and 3.4.23: follow, segment, upload, catalog, replay."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyetcd import etcdrpc

from etcd_backup import etcd, pipeline
from etcd_backup.catalog import Backup, Manifest, format_key
from etcd_backup.continuous import records
from etcd_backup.continuous.catalog import Catalog
from etcd_backup.continuous.chain import Segment, choose, list_segments
from etcd_backup.continuous.coverage import Reach, coverage
from etcd_backup.continuous.errors import SegmentCorrupt, StartCompacted
from etcd_backup.continuous.names import format_segment_key, lineage_of, parse_segment_key
from etcd_backup.continuous.prune import plan_segments
from etcd_backup.continuous.rebuild import rebuild
from etcd_backup.continuous.replay import verify_segments
from etcd_backup.continuous.runner import ContinuousBackup, start_point
from etcd_backup.continuous.segment import load_segment
from etcd_backup.continuous.timeline import from_ns
from etcd_backup.continuous.watch import Follower
from etcd_backup.errors import ConfigError
from etcd_backup.scratch import ScratchEtcd
from etcd_backup.storage.local import LocalStorage
from tests.continuous_helpers import Run, WriteLoad, access_of, digest, followed, stop_write_loads, up  # noqa: F401 - autouse fixture
from tests.fleet.binaries import find_binaries
from tests.servers.fixtures import make_s3
from tests.servers.tcp_proxy import TCPProxy
from tests.waiting import wait_until

pytestmark = [pytest.mark.continuous, pytest.mark.slow]
CLUSTER = "uk8s-cont"
BOTH = pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)


def _etcd_dir(version: str) -> Path:
    return find_binaries(version).etcd.parent


def _all_revisions(storage, cluster: str = CLUSTER) -> list[records.Revision]:
    out = []
    catalog = Catalog(storage, cluster)
    for segment in catalog.listing.complete:
        out.extend(records.decode(load_segment(storage, catalog.manifest(segment)), segment.key))
    return out


def _replay_and_compare(storage, access, version, tmp_path, to_revision=None, to_time=None, identities=()) -> int:
    """Plan, rebuild the snapshot at the target (full backup + replay in a scratch etcd), then restore that file
    into another scratch etcd: its revision and key digest at the target must equal the source's."""
    plan = Catalog(storage, CLUSTER, identities=identities).plan(to_revision=to_revision, to_time=to_time)
    tmp_path.mkdir(parents=True, exist_ok=True)
    rebuilt = rebuild(storage, plan, tmp_path / "pit.db", identities=identities, etcd_dir=_etcd_dir(version))
    print(f"rebuilt {rebuilt.describe()}: {rebuilt.replay}")
    target = plan.target_revision
    assert rebuilt.revision == target and rebuilt.certificate.revision == target
    source = next(e for e in access.endpoints if up(access, e))
    expected = digest(access, source, target)
    with ScratchEtcd(tmp_path / "pit.db", etcd_dir=_etcd_dir(version), workdir=tmp_path) as restored:
        assert restored.revision == target
        assert digest(restored.access, restored.endpoint, target) == expected
    return target


@BOTH
def test_follow_then_replay_to_a_random_revision(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster(3)
    access = access_of(cluster)
    storage = LocalStorage(tmp_path / "store")
    load = WriteLoad(access, seed=1, lease_ttl=2).start()
    time.sleep(1)
    run = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=None, segment_seconds=0.5))
    record = pipeline.backup(access, storage, cluster_id=CLUSTER)
    load.wait_for_variety()  # a prefix delete and a lease expiry followed, after the full backup
    time.sleep(1)
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
    when = from_ns(pick.received_ns)  # receive times count at microsecond precision, as manifests show them
    expected = max(r.revision for r in revisions if r.received_ns // 1000 <= pick.received_ns // 1000)
    plan = catalog.plan(to_time=when)
    assert plan.target_revision == expected and plan.target_time == when
    found = _replay_and_compare(storage, access, "3.5.1", tmp_path, to_time=when, identities=[str(identity)])
    assert found == expected


@BOTH
def test_failover_of_the_watched_member(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster(3)
    access, storage, load, run = followed(cluster, tmp_path, 3, segment_seconds=0.5, progress_interval=0.5)
    record = pipeline.backup(access, storage, cluster_id=CLUSTER)
    time.sleep(3)
    watched = run.backup.follower.endpoint
    load.avoid(watched)
    index = cluster.endpoints.index(watched)
    cluster.stop_member(index)
    wait_until(lambda: run.backup.follower.endpoint not in ("", watched), "the follower on another member", every=0.1)
    after = run.backup.follower.state().next_revision
    wait_until(lambda: run.backup.follower.state().next_revision > after + 20, "its events", every=0.1)
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
    access, storage, load, run = followed(cluster, tmp_path, 8, segment_seconds=0.5)
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
        revisions = [r.revision for r in _all_revisions(storage)]  # read through the healed relay
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
    cluster = make_etcd_cluster(1)
    access, storage, load, run = followed(cluster, tmp_path, 4, segment_seconds=0.3)
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
        verify_segments(storage, plan.segments, base_revision=plan.base_low, to_revision=plan.target_revision)
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
    lineage = lineage_of(etcd.status(access, access.endpoints[0]).cluster_id)
    assert start_point(storage, CLUSTER, lineage).revision is None  # no full backup yet: a new chain
    first = Run(ContinuousBackup(access, storage, CLUSTER, start_revision=None, segment_seconds=0.5))
    record = pipeline.backup(access, storage, cluster_id=CLUSTER)
    time.sleep(2)
    first.backup.stop()
    first.thread.join(30)
    uploaded = first.backup.writer.uploaded_revision
    point = start_point(storage, CLUSTER, lineage)
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
    keys = [format_segment_key("uk8s-x-events-1", a, b, "c0ffee", bool(a % 2), "p/q") for a, b in ranges]
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


LINEAGE, OLD = lineage_of("c0ffee"), lineage_of("bad1dea")


def _backup(revision: int, lineage: str = LINEAGE, low: int | None = None, hours: int | None = None) -> Backup:
    when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=revision if hours is None else hours)
    key = format_key(CLUSTER, "3.5.1", when, "zstd")
    manifest = Manifest(
        cluster=CLUSTER, key=key, size=1, sha256="0", raw_size=1, raw_sha256="0", revision=revision,
        revision_exact=low is None, revision_low=revision if low is None else low, etcd_cluster_id=lineage,
        key_count=1, etcd_version="3.5.1", source_member="m", source_endpoint="e", created=when, compression="zstd",
    )  # fmt: skip
    return Backup(key, CLUSTER, when, 1, "zstd", False, True, False, manifest)


def _seg(a: int, b: int, complete: bool = True, lineage: str = LINEAGE, cluster: str = CLUSTER, hours: int = 0):
    when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=hours or b)
    return Segment(format_segment_key(cluster, a, b, lineage), cluster, a, b, lineage, False, 1, complete, when)


def test_segment_retention_never_prunes_the_newest_or_foreign():
    B = _backup  # noqa: N806
    segments = [_seg(1, 50), _seg(51, 100, False), _seg(101, 150), _seg(1, 10, cluster="other")]
    plan = plan_segments(segments, [B(120), B(400)], CLUSTER)
    assert [s.key for s in plan.remove] == [segments[0].key, segments[1].key]
    assert segments[3] in plan.keep and segments[2] in plan.keep
    plan = plan_segments([_seg(1, 50)], [B(400)], CLUSTER)
    assert plan.remove == [] and "newest" in plan.reasons[_seg(1, 50).key]
    assert plan_segments(segments, [], CLUSTER).remove == []
    inexact = plan_segments([_seg(1, 95), _seg(96, 150)], [B(100, low=95)], CLUSTER)  # snapshot at 95..100
    assert [s.first_revision for s in inexact.remove] == [1]


def test_segment_retention_of_an_earlier_etcd_cluster_goes_by_time():
    # lineage OLD until a whole-cluster restore at hour 500 to revision 300; LINEAGE from then on, revisions reused
    old = [_seg(101, 200, lineage=OLD, hours=100), _seg(201, 400, lineage=OLD, hours=450)]
    new = [_seg(301, 350, hours=520), _seg(351, 380, hours=560)]
    plan = plan_segments(old + new, [_backup(300, hours=510), _backup(360, hours=540)], CLUSTER)
    assert [s.key for s in plan.remove] == [old[0].key, old[1].key]  # older than the oldest kept backup (hour 510)
    plan = plan_segments(old + new, [_backup(250, OLD, hours=300), _backup(360, hours=540)], CLUSTER)
    assert [s.key for s in plan.remove] == [old[0].key, new[0].key]  # each lineage's own cut: 250 and 360


def test_coverage_reports_every_gap_against_the_full_backups():
    segments = [_seg(90, 99), _seg(101, 200), _seg(201, 260), _seg(301, 400), _seg(451, 500), _seg(501, 520)]
    found = coverage(segments, [_backup(100), _backup(350), _backup(600)], [_seg(261, 280, complete=False)])
    assert found.reachable == [
        Reach(LINEAGE, 100, 260, _backup(100).key),
        Reach(LINEAGE, 350, 400, _backup(350).key),
        Reach(LINEAGE, 600, 600, _backup(600).key),
    ]
    assert [(g.first, g.last, g.unreachable_last) for g in found.gaps] == [
        (261, 300, 349),
        (401, 450, 599),
        (521, 599, 599),
    ]
    assert found.gaps[0].incomplete == (_seg(261, 280).key,)
    assert found.gaps[0].after == _seg(201, 260).key
    assert found.gaps[0].before == _seg(301, 400).key
    assert found.before_oldest_backup == [_seg(90, 99).key]
    assert coverage(segments, []).reachable == []
    inexact = coverage([_seg(96, 130)], [_backup(100, low=95)])  # the snapshot holds one of 95..100
    assert inexact.reachable == [Reach(LINEAGE, 100, 130, _backup(100, low=95).key)] and inexact.gaps == []
    assert coverage([_seg(99, 130)], [_backup(100, low=95)]).reachable == []  # 96..98 missing: unreachable


def test_lineages_never_mix_after_a_whole_cluster_restore():
    # OLD followed 101..400; restored to revision 300 (new etcd cluster id LINEAGE), which reuses 301.. for new data
    old = [_seg(101, 250, lineage=OLD), _seg(251, 400, lineage=OLD)]
    new = [_seg(301, 330), _seg(331, 380)]
    backups = [_backup(100, OLD, hours=1), _backup(300, hours=2)]
    found = coverage(old + new, backups)
    assert found.reachable == [Reach(LINEAGE, 300, 380, backups[1].key), Reach(OLD, 100, 400, backups[0].key)]
    point = choose(backups, old + new, 350, LINEAGE)
    assert point.backup == backups[1] and [s.key for s in point.segments] == [new[0].key, new[1].key]
    point = choose(backups, old + new, 350, OLD)
    assert point.backup == backups[0] and [s.key for s in point.segments] == [old[0].key, old[1].key]
    with pytest.raises(ConfigError, match="no complete full backup"):
        choose(backups, old + new, 200, LINEAGE)
