"""The restorability certificate on real etcd 3.5.1 and 3.4.23: good snapshots verify, foreign or damaged ones fail
with a clear reason, and the scratch etcd leaves nothing behind."""

import hashlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etcd_backup import etcd
from etcd_backup.certificate import Certificate, Point, check_prefixes, compare, source_certificate
from etcd_backup.errors import BackupCorrupt, ConfigError
from etcd_backup.scratch import DIR_PREFIX, ENV_DIR, ScratchEtcd, find_tools
from etcd_backup.verify import verify_restorable
from tests.bbolt import corrupt, mvcc_leaves, page_size
from tests.fleet.binaries import find_binaries
from tests.fleet.data import fill
from tests.snapshot_status import check_file

pytestmark = pytest.mark.verify
BOTH = pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)


def access_of(cluster) -> etcd.EtcdAccess:
    return etcd.EtcdAccess(
        endpoints=cluster.endpoints,
        ca=Path(cluster.ca).read_text(),
        cert=Path(cluster.cert).read_text(),
        key=Path(cluster.key).read_text(),
    )


def tools_dir(version: str) -> Path:
    """The directory holding etcd, etcdctl (and etcdutl) of that version: restore as that version's operator would."""
    return find_binaries(version).etcd.parent


def take_snapshot(cluster, path: Path, during=None) -> Certificate:
    """Stream a snapshot to path the way the backup pipeline does, with the certificate of its revision window."""
    access, endpoint = access_of(cluster), cluster.endpoints[0]
    before, _ = etcd.key_count(access, endpoint)
    with etcd.SnapshotStream(access, endpoint) as stream, open(path, "wb") as out:
        if during:
            during()
        after, _ = etcd.key_count(access, endpoint)
        certificate = source_certificate(access, endpoint, before, after)
        for chunk in stream:
            out.write(chunk)
    return certificate


def kubernetes_data(cluster, n: int = 200, marker: bytes = b"a") -> None:
    client = cluster.client(0)
    fill(client, n, 500)
    client.put("/registry/namespaces/default", b"ns-" + marker)
    client.put("/registry/namespaces/kube-system", b"ns")
    client.close()


def revision_of(cluster) -> int:
    return etcd.key_count(access_of(cluster), cluster.endpoints[0])[0]


def busy_history(cluster) -> None:
    """Puts, updates, deletes, multi-key transactions, expired leases, two compactions, writes after each."""
    client = cluster.client(0)
    for i in range(120):
        client.put(f"/registry/pods/ns{i % 4}/p{i}", f"v{i}" * 20)
    for i in range(0, 120, 3):
        client.put(f"/registry/pods/ns{i % 4}/p{i}", f"updated{i}")
    for i in range(0, 120, 7):
        client.delete(f"/registry/pods/ns{i % 4}/p{i}")
    for t in range(8):
        ops = [client.transactions.put(f"/registry/txn/{t}/{k}", f"t{t}k{k}") for k in range(4)]
        ops.append(client.transactions.delete(f"/registry/pods/ns{t % 4}/p{3 * t + 1}"))
        client.transaction(compare=[], success=ops, failure=[])
    lease = client.lease(ttl=2)
    for i in range(6):
        client.put(f"/registry/events/e{i}", "event", lease=lease)
    deadline = time.monotonic() + 30
    while client.get("/registry/events/e0")[0] is not None:  # revoked by the leader once the TTL ran out
        assert time.monotonic() < deadline, "lease did not expire"
        time.sleep(0.2)
    client.compact(revision_of(cluster) - 40, physical=True)
    for i in range(40):
        client.put(f"/registry/pods/ns{i % 4}/p{i}", f"after-compact{i}")
    client.delete_prefix("/registry/txn/3/")
    client.compact(revision_of(cluster) - 5, physical=True)
    client.put("/registry/namespaces/default", "ns")
    client.put("/registry/leases/live", "alive", lease=client.lease(ttl=3600))
    client.close()


@BOTH
def test_good_snapshot_verifies(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster()
    kubernetes_data(cluster)
    certificate = take_snapshot(cluster, tmp_path / "snap.db")
    assert certificate.exact and certificate.etcd_version == etcd_version
    report = verify_restorable(tmp_path / "snap.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert report.ok, report.differences
    assert report.etcd_version == etcd_version
    assert (report.revision, report.key_count, report.hash) == (
        certificate.revision,
        certificate.key_count,
        certificate.hash,
    )
    assert report.key_count == 200 + 2
    assert report.prefixes == ["/registry/namespaces/"]
    if etcd_version == "3.4.23":  # the bundled 3.5.1, the default, verifies 3.4 snapshots too
        bundled = verify_restorable(tmp_path / "snap.db", certificate)
        assert bundled.ok and bundled.etcd_version == "3.5.1", bundled.differences


@BOTH
def test_history_with_compactions_deletes_and_expired_leases_verifies(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster()
    busy_history(cluster)
    certificate = take_snapshot(cluster, tmp_path / "snap.db")
    assert certificate.compact_revision > 0
    report = verify_restorable(tmp_path / "snap.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert report.ok, report.differences
    assert report.compact_revision == certificate.compact_revision
    # the plain tool agrees on the revision the snapshot holds
    status = subprocess.run(
        [str(find_binaries("3.5.1").etcdutl), "snapshot", "status", "-w", "json", str(tmp_path / "snap.db")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f'"revision":{report.revision},' in status.stdout


@BOTH
def test_source_compacted_after_the_snapshot_still_verifies(make_etcd_cluster, etcd_version, tmp_path):
    """The certificate's hash was taken after a newer compaction: the scratch copy is compacted alike first."""
    cluster = make_etcd_cluster(members=1)
    busy_history(cluster)
    revision = take_snapshot(cluster, tmp_path / "snap.db").revision
    client = cluster.client(0)
    client.compact(revision - 3, physical=True)
    client.close()
    certificate = source_certificate(access_of(cluster), cluster.endpoints[0], revision, revision)
    assert certificate.compact_revision == revision - 3
    report = verify_restorable(tmp_path / "snap.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert report.ok, report.differences
    assert report.compact_revision == revision - 3


@BOTH
def test_snapshot_inside_a_window_of_racing_writes_verifies(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster(members=1)
    kubernetes_data(cluster, n=50)
    client = cluster.client(0)
    before = revision_of(cluster)

    def writes(start: int, count: int) -> None:
        for i in range(start, start + count):
            client.put(f"/registry/race/{i}", "x")

    # counted before the snapshot, then 4 writes land before it and 3 after it (while it streams)
    access, endpoint = access_of(cluster), cluster.endpoints[0]
    writes(0, 4)
    with etcd.SnapshotStream(access, endpoint) as stream, open(tmp_path / "snap.db", "wb") as out:
        writes(4, 3)
        after, _ = etcd.key_count(access, endpoint)
        certificate = source_certificate(access, endpoint, before, after)
        for chunk in stream:
            out.write(chunk)
    client.close()
    assert (certificate.revision_low, certificate.revision) == (before, before + 7)
    assert len(certificate.points()) == 8 and certificate.window_complete
    report = verify_restorable(tmp_path / "snap.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert report.ok, report.differences
    assert report.revision == before + 4
    assert report.key_count == certificate.point(before + 4).key_count == 50 + 2 + 4


@BOTH
def test_snapshot_of_another_cluster_fails(make_etcd_cluster, etcd_version, tmp_path):
    """Same revision, same key count, other values (a renamed backup with a forged manifest): the hash tells."""
    ours, theirs = make_etcd_cluster(members=1), make_etcd_cluster(members=1)
    kubernetes_data(ours, marker=b"ours")
    kubernetes_data(theirs, marker=b"theirs")
    certificate = take_snapshot(ours, tmp_path / "ours.db")
    take_snapshot(theirs, tmp_path / "theirs.db")
    report = verify_restorable(tmp_path / "theirs.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert not report.ok
    assert report.revision == certificate.revision and report.key_count == certificate.key_count
    (difference,) = report.differences
    assert difference.startswith(f"etcd HashKV at revision {certificate.revision}: source {certificate.hash:#010x}")
    with pytest.raises(BackupCorrupt, match="HashKV"):
        report.raise_if_failed()
    # a cluster with another history: the revision alone gives it away
    client = theirs.client(0)
    client.put("/registry/namespaces/extra", "x")
    client.close()
    take_snapshot(theirs, tmp_path / "later.db")
    later = verify_restorable(tmp_path / "later.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert later.differences == [
        f"the restored snapshot is at revision {certificate.revision + 1}, "
        f"but the source's snapshot was at revision {certificate.revision}"
    ]


EXPECTED = {  # what happens, in the words verification uses
    "value bytes": ["etcd HashKV at revision"],
    # bbolt panics on the zeroed page header; its words depend on what it reads there (freepages, index out of range)
    "page header": ["the snapshot does not restore", "snapshot restore exited with 2: panic: "],
    "key length": ["failed to unmarshal mvccpb.KeyValue"],  # 3.5 fails to start, 3.4's etcdctl fails to restore
    "key order": ["but the snapshot holds data up to revision", "part of the data did not load"],
}


@BOTH
def test_corrupted_page_with_recomputed_trailer_fails(make_etcd_cluster, etcd_version, tmp_path):
    cluster = make_etcd_cluster(members=1)
    kubernetes_data(cluster, n=3000)
    certificate = take_snapshot(cluster, tmp_path / "snap.db")
    body = (tmp_path / "snap.db").read_bytes()[:-32]
    leaves = mvcc_leaves(body)
    page = leaves[len(leaves) // 2]
    assert 0.25 < page / (len(body) // page_size(body)) < 0.75  # in the middle of the file
    element = page * page_size(body) + 16
    _, pos, ksize, _ = struct.unpack_from("<IIII", body, element)
    assert ksize == 17 and body[element + pos + 8] == ord("_")  # a revision key main_sub
    for how, phrases in EXPECTED.items():
        damaged = bytearray(body)
        corrupt(damaged, page, how)
        bad = tmp_path / f"bad-{how.replace(' ', '-')}.db"
        bad.write_bytes(bytes(damaged) + hashlib.sha256(damaged).digest())
        check_file(bad)  # the sha256 trailer is valid: only restoring it tells
        report = verify_restorable(bad, certificate, etcd_dir=tools_dir(etcd_version))
        assert not report.ok, how
        text = " ".join(report.differences)
        assert all(p in text for p in phrases), (how, text)
        if how == "key length":
            assert "does not start on the restored snapshot" in text or "the snapshot does not restore" in text
    # the same damage without a recomputed trailer: restore's own sha256 check refuses it
    damaged = bytearray(body)
    corrupt(damaged, page, "value bytes")
    (tmp_path / "bad.db").write_bytes(bytes(damaged) + (tmp_path / "snap.db").read_bytes()[-32:])
    report = verify_restorable(tmp_path / "bad.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert not report.ok and "the snapshot does not restore" in report.differences[0]
    assert "Error: expected sha256" in report.differences[0]


def scratch_processes(workdir: Path) -> list[int]:
    """Pids of the etcd processes (and restore tools) whose data dir is under workdir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"--data-dir={workdir}/".encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_scratch_leaves_no_process_and_no_directory(make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(members=1)
    kubernetes_data(cluster, n=1000)
    certificate = take_snapshot(cluster, tmp_path / "snap.db")
    work = tmp_path / "scratch"
    with ScratchEtcd(tmp_path / "snap.db", workdir=work) as scratch:
        assert scratch.process is not None and scratch_processes(work) == [scratch.process.pid]
        assert scratch.directory is not None and scratch.directory.parent == work
        assert scratch.revision == scratch.served_revision == certificate.revision
    assert scratch_processes(work) == [] and list(work.iterdir()) == []

    with pytest.raises(RuntimeError, match="boom"), ScratchEtcd(tmp_path / "snap.db", workdir=work):
        raise RuntimeError("boom")
    assert scratch_processes(work) == [] and list(work.iterdir()) == []

    body = (tmp_path / "snap.db").read_bytes()[:-32]
    leaves = mvcc_leaves(body)
    for how in ("page header", "key length"):  # a restore failure, then a start failure
        damaged = bytearray(body)
        corrupt(damaged, leaves[len(leaves) // 2], how)
        (tmp_path / "bad.db").write_bytes(bytes(damaged) + hashlib.sha256(damaged).digest())
        with pytest.raises(BackupCorrupt, match="does not restore" if how == "page header" else "does not start"):
            ScratchEtcd(tmp_path / "bad.db", workdir=work).__enter__()
        assert scratch_processes(work) == [] and list(work.iterdir()) == []
        report = verify_restorable(tmp_path / "bad.db", certificate, workdir=work)
        assert not report.ok and scratch_processes(work) == [] and list(work.iterdir()) == []


CHILD = """
import sys, time
from etcd_backup.scratch import ScratchEtcd
with ScratchEtcd(sys.argv[1], workdir=sys.argv[2]) as scratch:
    print(scratch.process.pid, flush=True)
    time.sleep(600)
"""


def test_scratch_etcd_dies_with_the_process_that_started_it(make_etcd_cluster, tmp_path):
    """A worker killed with SIGKILL cannot clean up: etcd dies with it, the next scratch sweeps its directory."""
    cluster = make_etcd_cluster(members=1)
    kubernetes_data(cluster, n=20)
    take_snapshot(cluster, tmp_path / "snap.db")
    work = tmp_path / "scratch"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path / "snap.db"), str(work)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    etcd_pid = int(child.stdout.readline())
    assert scratch_processes(work) == [etcd_pid]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while scratch_processes(work):
        assert time.monotonic() < deadline, "the scratch etcd outlived its parent"
        time.sleep(0.05)
    (left,) = work.iterdir()
    assert left.name.startswith(f"{DIR_PREFIX}{child.pid}-")
    with ScratchEtcd(tmp_path / "snap.db", workdir=work) as scratch:
        assert [p.name for p in work.iterdir()] == [scratch.directory.name]
    assert list(work.iterdir()) == []


def test_prefix_checks(make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(members=1)
    client = cluster.client(0)
    client.put("/app/config", "x")
    client.close()
    certificate = take_snapshot(cluster, tmp_path / "plain.db")
    plain = verify_restorable(tmp_path / "plain.db", certificate)
    assert plain.ok and plain.prefixes == []  # not Kubernetes data: nothing required by default
    wanted = verify_restorable(tmp_path / "plain.db", certificate, prefixes=["/app/", "/registry/namespaces/"])
    assert wanted.differences == [f"no key under '/registry/namespaces/' at revision {certificate.revision}"]
    kube = cluster.client(0)
    kube.put("/registry/pods/default/p", "x")  # Kubernetes-looking data without namespaces
    kube.close()
    certificate = take_snapshot(cluster, tmp_path / "kube.db")
    report = verify_restorable(tmp_path / "kube.db", certificate)
    assert report.differences == [f"no key under '/registry/namespaces/' at revision {certificate.revision}"]
    assert verify_restorable(tmp_path / "kube.db", certificate, prefixes=[]).ok
    with ScratchEtcd(tmp_path / "kube.db") as scratch:
        assert check_prefixes(scratch.access, scratch.endpoint, scratch.revision, ["/registry/pods/"]) == []


def test_no_certificate_checks_restore_and_start_only(make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(members=1)
    kubernetes_data(cluster, n=10)
    certificate = take_snapshot(cluster, tmp_path / "snap.db")
    report = verify_restorable(tmp_path / "snap.db", None)
    assert report.ok and not report.compared
    assert (report.revision, report.hash) == (certificate.revision, certificate.hash)
    assert "no certificate" in report.summary()


def cert(revision, low=None, count=10, hash_=0xABC, compact=-1, window=(), complete=True) -> Certificate:
    return Certificate(
        revision=revision,
        revision_low=revision if low is None else low,
        key_count=count,
        hash=hash_,
        compact_revision=compact,
        window=list(window),
        window_complete=complete,
        etcd_version="3.5.1",
        member="https://10.0.0.1:2379",
    )


def test_compare_says_what_differs():
    assert compare(cert(100), cert(100)) == []
    assert compare(cert(100), cert(101)) == [
        "the restored snapshot is at revision 101, but the source's snapshot was at revision 100"
    ]
    assert compare(cert(100, low=97, complete=False), cert(99)) == [
        "no source hash was recorded for revision 99, the revision the snapshot holds: writes raced the snapshot "
        "and only 1 of the revisions 97..100 were hashed; compare with a live source_certificate at that revision "
        "instead"
    ]
    window = [Point(revision=99, key_count=9, hash=0x99, compact_revision=-1)]
    assert compare(cert(100, low=99, window=window), cert(99, count=9, hash_=0x99)) == []
    assert compare(cert(100, low=98, window=window), cert(97)) == [
        "the restored snapshot is at revision 97, but the source's snapshot was at a revision from 98 to 100"
    ]
    assert compare(cert(100, compact=50), cert(100, count=11, hash_=0xDEF, compact=40)) == [
        "compaction differs at revision 100: the source's hash was taken compacted at 50, the restored copy is "
        "compacted at 40; the hashes are not comparable",
        "key count at revision 100: source 10, restored 11",
        "etcd HashKV at revision 100: source 0x00000abc, restored 0x00000def (the keys, values or history differ)",
    ]
    round_trip = Certificate.model_validate_json(cert(100, low=99, window=window).model_dump_json())
    assert round_trip.point(99) == window[0] and not round_trip.exact


def test_find_tools(monkeypatch, tmp_path):
    bundled = find_tools()
    assert bundled.version == "3.5.1" and bundled.restore_tool.name == "etcdutl"
    monkeypatch.setenv(ENV_DIR, "/usr/bin")
    debian = find_tools()
    assert debian.version == "3.4.23" and debian.restore_tool == Path("/usr/bin/etcdctl")
    assert find_tools(bundled.etcd.parent).version == "3.5.1"  # the parameter wins over the environment
    with pytest.raises(ConfigError, match="no executable etcd in"):
        find_tools(tmp_path)
    with pytest.raises(ConfigError, match="no snapshot file"):
        ScratchEtcd(tmp_path / "missing.db").__enter__()


@BOTH
def test_compacted_at_the_snapshot_revision_verifies(make_etcd_cluster, etcd_version, tmp_path):
    """`compact <current revision>` before the backup, the last write a delete: HashKV refuses the compaction
    revision itself, and the restored copy's own last key is older than the revision it serves."""
    cluster = make_etcd_cluster(members=1)
    kubernetes_data(cluster, n=20)
    client = cluster.client(0)
    client.delete("/registry/namespaces/kube-system")
    revision = revision_of(cluster)
    client.compact(revision, physical=True)
    client.close()
    certificate = take_snapshot(cluster, tmp_path / "snap.db")
    assert (certificate.revision, certificate.compact_revision) == (revision, revision)
    report = verify_restorable(tmp_path / "snap.db", certificate, etcd_dir=tools_dir(etcd_version))
    assert report.ok, report.differences
    assert (report.revision, report.key_count) == (revision, 20 + 1)
