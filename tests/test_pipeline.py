"""The backup pipeline against real etcd clusters and real storage, checked with the plain tools."""

import hashlib
import json
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pyetcd
import pytest
from pyrage import x25519

from etcd_backup import etcd
from etcd_backup.catalog import list_backups, parse_key, read_manifest
from etcd_backup.errors import BackupCorrupt, ConfigError, EtcdUnavailable, TransientStorageError
from etcd_backup.pipeline import backup, fetch_snapshot, verify
from etcd_backup.retention import Policy, plan, prune
from etcd_backup.storage.local import LocalStorage
from tests.fleet.binaries import find_binaries
from tests.fleet.data import fill
from tests.snapshot_status import inspect_db

pytestmark = pytest.mark.backup

CLUSTER = "uk8s-f1wymalx"
ETCDUTL = find_binaries("3.5.1").etcdutl


def access_of(cluster, timeout=10.0):
    return etcd.EtcdAccess(
        endpoints=cluster.endpoints,
        ca=Path(cluster.ca).read_text(),
        cert=Path(cluster.cert).read_text(),
        key=Path(cluster.key).read_text(),
        timeout=timeout,
    )


def put_keys(cluster, n=50, size=300):
    client = cluster.client(0)
    fill(client, n, size)
    client.put("/registry/binary", bytes(range(256)) * 4)
    client.close()


def key_count(cluster):
    out = cluster.etcdctl("get", "/", "--prefix", "--keys-only")  # every key here starts with /
    assert out.returncode == 0, out.stderr
    return len([line for line in out.stdout.splitlines() if line])


def sh(command, **kwargs):
    return subprocess.run(command, shell=True, check=True, capture_output=True, **kwargs)


def plain_decode(path: Path, compression: str, workdir: Path, identity_file: Path | None) -> Path:
    """Decode a stored backup with zstd/gzip/tar/age on the command line, as an operator would."""
    if identity_file is not None:
        sh(f"age -d -i {identity_file} -o {workdir / 'decrypted'} {path}")
        path = workdir / "decrypted"
    out = workdir / "snapshot.db"
    if compression == "zstd":
        sh(f"zstd -q -d -c {path} > {out}")
    elif compression == "gzip":
        sh(f"gzip -d -c < {path} > {out}")
    elif compression == "tar.gz":
        (workdir / "x").mkdir()
        sh(f"tar xzf {path} -C {workdir / 'x'}")
        (found,) = list((workdir / "x").iterdir())
        out = found
    else:
        out = path
    return out


def test_access_never_shows_its_key():
    access = etcd.EtcdAccess(endpoints=["127.0.0.11:2379"], ca="CA-PEM", cert="CERT-PEM", key="SECRET-KEY-PEM")
    assert access.endpoints == ("https://127.0.0.11:2379",)
    assert "SECRET" not in repr(access) and "SECRET" not in str(access)


def test_learner_flags_are_read_although_pyetcd_predates_them():
    from pyetcd import etcdrpc

    member = etcdrpc.Member.FromString(etcdrpc.Member(ID=5, name="etcd4").SerializeToString() + bytes([5 << 3, 1]))
    status = etcdrpc.StatusResponse.FromString(
        etcdrpc.StatusResponse(version="3.5.1").SerializeToString() + bytes([10 << 3, 1])
    )
    assert etcd._flag(member, etcd.MEMBER_IS_LEARNER) and etcd._flag(status, etcd.STATUS_IS_LEARNER)
    assert not etcd._flag(etcdrpc.Member(ID=5), etcd.MEMBER_IS_LEARNER)


@pytest.fixture
def single(make_etcd_cluster):
    cluster = make_etcd_cluster(members=1)
    put_keys(cluster)
    return cluster


@pytest.mark.parametrize(
    "compression, encrypted",
    [("zstd", False), ("gzip", False), ("tar.gz", False), ("none", False), ("zstd", True), ("tar.gz", True)],
)
def test_backup_is_readable_by_the_plain_tools(single, tmp_path, compression, encrypted):
    identity = x25519.Identity.generate()
    identity_file = tmp_path / "key.txt"
    identity_file.write_text(str(identity) + "\n")
    storage = LocalStorage(tmp_path / "store")

    record = backup(
        access_of(single),
        storage,
        cluster_id=CLUSTER,
        prefix="etcd",
        compression=compression,
        recipients=[str(identity.to_public())] if encrypted else (),
    )

    stored = tmp_path / "store" / record.key
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == record.sha256
    assert stored.stat().st_size == record.size
    raw = plain_decode(stored, compression, tmp_path, identity_file if encrypted else None)
    if compression == "tar.gz":  # the runbook's `tar zxvf X.db.tar.gz` gives X.db
        assert raw.name == Path(record.key).name.removesuffix(".age").removesuffix(".tar.gz")
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == record.raw_sha256
    status = inspect_db(raw, ETCDUTL)
    assert status.revision == record.revision and record.revision_exact
    assert record.key_count == key_count(single) == 53  # 50 configmaps, 2 namespaces, one binary key
    result = verify(storage, record.key, identities=[identity_file.read_text()] if encrypted else ())
    assert (result.sha256, result.raw_sha256) == (record.sha256, record.raw_sha256)


@pytest.mark.storage
def test_backup_verify_list_and_prune_on_every_backend(single, storage_backend, tmp_path):
    identity = x25519.Identity.generate()
    put_keys(single, n=300, size=4000)  # a few MB: multipart on S3/UFile
    times = [datetime(2026, 11, 20 + d, 3, 0, tzinfo=UTC) for d in range(3)]
    records = [
        backup(
            access_of(single),
            storage_backend,
            cluster_id=CLUSTER,
            prefix="etcd",
            now=when,
            compression=c,
            recipients=[str(identity.to_public())],
        )
        for when, c in zip(times, ["tar.gz", "gzip", "zstd"], strict=True)
    ]
    listed = list_backups(storage_backend, CLUSTER, prefix="etcd")
    assert [b.key for b in listed] == [r.key for r in records] and all(b.complete for b in listed)
    for record in records:
        assert verify(storage_backend, record.key, identities=[str(identity)]).raw_sha256 == record.raw_sha256
    removed = prune(storage_backend, plan(listed, Policy.parse("keep 2"), times[-1]), dry_run=False)
    assert removed == [records[0].key]
    assert [b.key for b in list_backups(storage_backend, CLUSTER, prefix="etcd")] == [r.key for r in records[1:]]
    fetch_snapshot(storage_backend, records[-1].key, tmp_path / "latest.db", identities=[str(identity)])
    assert inspect_db(tmp_path / "latest.db", ETCDUTL).revision == records[-1].revision


@pytest.mark.parametrize("etcd_version", ["3.5.1", "3.4.23"], indirect=True)
def test_backup_of_a_three_member_cluster_records_a_true_manifest(etcd_cluster, tmp_path, etcd_version):
    put_keys(etcd_cluster, n=200)
    storage = LocalStorage(tmp_path / "store")
    progress = []
    record = backup(
        access_of(etcd_cluster),
        storage,
        cluster_id=CLUSTER,
        compression="tar.gz",
        on_progress=lambda done, total: progress.append((done, total)),
    )

    parsed = parse_key(record.key)
    assert (parsed.cluster_id, parsed.etcd_version, parsed.compression) == (CLUSTER, etcd_version, "tar.gz")
    manifest = read_manifest(storage, record.key)
    assert manifest.sha256 == hashlib.sha256((tmp_path / "store" / record.key).read_bytes()).hexdigest()
    assert (manifest.raw_size, manifest.revision, manifest.key_count) == (
        record.raw_size,
        record.revision,
        203,
    )  # 200 configmaps, 2 namespaces, 1 binary
    assert manifest.source_member == "etcd1" or manifest.source_member.startswith("etcd")
    leader = [s for s in map(lambda e: etcd.status(access_of(etcd_cluster), e), etcd_cluster.endpoints) if s.is_leader][
        0
    ]
    assert record.source_endpoint == leader.endpoint  # leader first
    assert progress[-1] == (record.raw_size, record.raw_size)
    (backup_listed,) = list_backups(storage, CLUSTER)
    assert backup_listed.complete and backup_listed.key == record.key
    fetched = tmp_path / "fetched.db"
    fetch_snapshot(storage, record.key, fetched)
    assert inspect_db(fetched, ETCDUTL).revision == record.revision


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restored_backup_serves_the_same_values(single, tmp_path):
    identity = x25519.Identity.generate()
    storage = LocalStorage(tmp_path / "store")
    record = backup(access_of(single), storage, cluster_id=CLUSTER, recipients=[str(identity.to_public())])
    (listed,) = list_backups(storage, CLUSTER)
    db = tmp_path / "restore.db"
    fetch_snapshot(storage, listed, db, identities=[str(identity)])

    data_dir, client_port, peer_port = tmp_path / "restored", free_port(), free_port()
    sh(
        f"{ETCDUTL} snapshot restore {db} --data-dir {data_dir} --name r1 "
        f"--initial-cluster r1=http://127.0.0.1:{peer_port} --initial-advertise-peer-urls http://127.0.0.1:{peer_port}"
    )
    log = open(tmp_path / "etcd.log", "wb")
    proc = subprocess.Popen(
        [
            str(find_binaries("3.5.1").etcd),
            "--name",
            "r1",
            "--data-dir",
            str(data_dir),
            f"--listen-client-urls=http://127.0.0.1:{client_port}",
            f"--advertise-client-urls=http://127.0.0.1:{client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=r1=http://127.0.0.1:{peer_port}",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        restored = etcd.EtcdAccess(endpoints=[f"http://127.0.0.1:{client_port}"], timeout=2)
        for _ in range(100):
            if etcd.health(restored)[restored.endpoints[0]] == "ok":
                break
            time.sleep(0.1)
        client = pyetcd.client(host="127.0.0.1", port=client_port, timeout=5)
        original = single.client(0)
        assert client.get("/registry/binary")[0] == original.get("/registry/binary")[0] == bytes(range(256)) * 4
        key = "/registry/configmaps/default/cm-00000007"
        assert client.get(key)[0] == original.get(key)[0]
        assert etcd.status(restored, restored.endpoints[0]).revision >= record.revision
        client.close()
        original.close()
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.mark.faults
def test_backup_skips_a_stopped_leader(etcd_cluster, tmp_path):
    put_keys(etcd_cluster)
    access = access_of(etcd_cluster, timeout=3)
    leader = etcd.pick_sources(access)[0]
    etcd_cluster.stop_member(etcd_cluster.endpoints.index(leader))
    etcd_cluster.wait_healthy()
    record = backup(access, LocalStorage(tmp_path), cluster_id=CLUSTER)
    assert record.source_endpoint != leader
    assert etcd.health(access)[leader] != "ok"
    verify(LocalStorage(tmp_path), record.key)


@pytest.mark.faults
def test_backup_fails_over_when_the_first_source_dies(etcd_cluster, tmp_path, monkeypatch):
    put_keys(etcd_cluster)
    access = access_of(etcd_cluster, timeout=3)
    first, second = etcd.pick_sources(access)[:2]
    real_status = etcd.status

    def status_then_die(acc, endpoint):  # the first source answers status, then its member dies
        result = real_status(acc, endpoint)
        if endpoint == first:
            etcd_cluster.stop_member(etcd_cluster.endpoints.index(first))
        return result

    monkeypatch.setattr(etcd, "pick_sources", lambda acc: [first, second])
    monkeypatch.setattr(etcd, "status", status_then_die)
    record = backup(access, LocalStorage(tmp_path), cluster_id=CLUSTER)
    assert record.source_endpoint == second
    verify(LocalStorage(tmp_path), record.key)


@pytest.mark.faults
def test_all_sources_down_is_a_transient_error(single, tmp_path):
    access = access_of(single, timeout=2)
    single.stop_member(0)
    with pytest.raises(EtcdUnavailable) as info:
        backup(access, LocalStorage(tmp_path), cluster_id=CLUSTER)
    assert info.value.transient and single.endpoints[0] in str(info.value)


@pytest.mark.faults
def test_a_corrupted_snapshot_stream_leaves_no_backup(single, tmp_path, monkeypatch):
    real_iter = etcd.SnapshotStream.__iter__

    def flipped(self):
        for n, chunk in enumerate(real_iter(self)):
            yield bytes([chunk[0] ^ 1]) + chunk[1:] if n == 1 else chunk

    monkeypatch.setattr(etcd.SnapshotStream, "__iter__", flipped)
    storage = LocalStorage(tmp_path)
    with pytest.raises(BackupCorrupt, match="trailer"):
        backup(access_of(single), storage, cluster_id=CLUSTER)
    assert list(storage.list()) == [] and list_backups(storage, CLUSTER) == []
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


class FailingStorage(LocalStorage):
    """A real directory whose put of keys ending in `fail_suffix` fails after reading some bytes (a dropped upload)."""

    def __init__(self, directory, fail_suffix):
        super().__init__(directory)
        self.fail_suffix = fail_suffix

    def put(self, key, source):
        if not key.endswith(self.fail_suffix):
            return super().put(key, source)
        source.read(100_000)
        raise TransientStorageError("connection reset during upload", step="put", node="test")


@pytest.mark.faults
@pytest.mark.parametrize("fail_suffix", [".zst", ".zst.age", ".manifest.json"])
def test_a_failed_upload_leaves_no_visible_backup(single, tmp_path, fail_suffix):
    put_keys(single, n=500, size=2000)
    storage = FailingStorage(tmp_path, fail_suffix)
    recipients = [str(x25519.Identity.generate().to_public())] if fail_suffix.endswith(".age") else []
    with pytest.raises(TransientStorageError):
        backup(access_of(single), storage, cluster_id=CLUSTER, recipients=recipients)
    assert list_backups(storage, CLUSTER) == []
    assert list(storage.list()) == []


@pytest.mark.faults
def test_verify_and_fetch_refuse_a_damaged_object(single, tmp_path):
    storage = LocalStorage(tmp_path / "store")
    record = backup(access_of(single), storage, cluster_id=CLUSTER, compression="gzip")
    path = tmp_path / "store" / record.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BackupCorrupt):
        verify(storage, record.key)
    with pytest.raises(BackupCorrupt):
        fetch_snapshot(storage, record.key, tmp_path / "out.db")
    assert not (tmp_path / "out.db").exists() and not (tmp_path / "out.db.tmp").exists()


def test_an_ssh_ed25519_key_can_be_the_recipient(single, tmp_path):
    sh(f"ssh-keygen -q -t ed25519 -N '' -C backup -f {tmp_path / 'id_ed25519'}")
    storage = LocalStorage(tmp_path / "store")
    record = backup(
        access_of(single),
        storage,
        cluster_id=CLUSTER,
        compression="gzip",
        recipients=[(tmp_path / "id_ed25519.pub").read_text()],
    )
    sh(f"age -d -i {tmp_path / 'id_ed25519'} {tmp_path / 'store' / record.key} | gzip -d > {tmp_path / 'out.db'}")
    assert hashlib.sha256((tmp_path / "out.db").read_bytes()).hexdigest() == record.raw_sha256
    assert verify(storage, record.key, identities=[(tmp_path / "id_ed25519").read_text()]).raw_size == record.raw_size


@pytest.mark.faults
def test_an_encrypted_backup_needs_the_right_identity(single, tmp_path):
    storage = LocalStorage(tmp_path / "store")
    owner, stranger = x25519.Identity.generate(), x25519.Identity.generate()
    record = backup(access_of(single), storage, cluster_id=CLUSTER, recipients=[str(owner.to_public())])
    assert str(owner) not in (tmp_path / "store" / record.manifest_key).read_text()
    with pytest.raises(ConfigError, match="identity"):
        verify(storage, record.key)
    with pytest.raises(BackupCorrupt, match="decrypt"):
        verify(storage, record.key, identities=[str(stranger)])
    assert verify(storage, record.key, identities=[str(owner)]).raw_sha256 == record.raw_sha256


def test_a_legacy_runbook_backup_is_listed_and_fetched(single, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    name = "uk8s-f1wymalx-backup-etcd-3.3.17-2020-02-11T03-56-12.db"
    single.etcdctl("snapshot", "save", str(tmp_path / name), f"--endpoints={single.endpoints[0]}")
    with tarfile.open(store / (name + ".tar.gz"), "w:gz") as tar:
        tar.add(tmp_path / name, arcname=name)
    storage = LocalStorage(store)
    (legacy,) = list_backups(storage, CLUSTER)
    assert legacy.legacy and not legacy.complete
    result = fetch_snapshot(storage, legacy, tmp_path / "fetched.db")
    assert result.legacy
    assert (tmp_path / "fetched.db").read_bytes() == (tmp_path / name).read_bytes()


MEASURE = textwrap.dedent("""
    import json, sys
    from etcd_backup import etcd
    from etcd_backup.pipeline import backup
    from etcd_backup.storage.local import LocalStorage
    args = json.loads(sys.argv[1])
    access = etcd.EtcdAccess(endpoints=args["endpoints"], ca=open(args["ca"]).read(),
                             cert=open(args["cert"]).read(), key=open(args["key"]).read())
    backup(access, LocalStorage(args["dir"]), cluster_id="c1", compression=args["compression"],
           recipients=args["recipients"])
    # VmHWM, not ru_maxrss: after exec ru_maxrss keeps the parent's peak
    print(int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024)
""")


def peak_rss_mb(cluster, directory, compression="zstd", recipients=()):
    args = json.dumps(
        {
            "endpoints": cluster.endpoints,
            "ca": str(cluster.ca),
            "cert": str(cluster.cert),
            "key": str(cluster.key),
            "dir": str(directory),
            "compression": compression,
            "recipients": list(recipients),
        }
    )
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_memory_stays_flat_as_the_database_grows(make_etcd_cluster, tmp_path):
    """Peak RSS of a backup process at ~70 MB and ~210 MB of etcd data: flat, and far below the db size."""
    cluster = make_etcd_cluster(members=1)
    recipients = [str(x25519.Identity.generate().to_public())]
    fill(cluster.client(0), 7_000, 10_000)
    medium = {c: peak_rss_mb(cluster, tmp_path / f"m-{c}", c, recipients) for c in ("zstd", "tar.gz")}
    fill(cluster.client(0), 16_000, 10_000, prefix="/registry/secrets/big/")
    assert etcd.status(access_of(cluster), cluster.endpoints[0]).db_size > 200_000_000
    large = {c: peak_rss_mb(cluster, tmp_path / f"l-{c}", c, recipients) for c in ("zstd", "tar.gz")}
    print(f"peak RSS MB at ~70 MB: {medium}, at ~210 MB: {large}")
    for c in medium:
        assert large[c] < medium[c] + 20, (c, medium[c], large[c])
        assert large[c] < 150, (c, large[c])
