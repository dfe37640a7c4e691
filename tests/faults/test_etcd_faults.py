"""etcd faults during a backup: the source killed mid-snapshot, every member down, the stream cut, refused TLS.

Real etcd members; TCP relays in front of them (tests/servers/tcp_proxy.py) cut the stream or kill the
member behind them at a chosen byte count; the flows run on the real Prefect test server.
"""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from blocks import LocalStorage as LocalBlock
from etcd_backup import etcd
from etcd_backup.catalog import list_backups
from etcd_backup.errors import EtcdUnavailable
from etcd_backup.pipeline import backup
from etcd_backup.storage.local import LocalStorage
from flows.backup import backup_etcd
from tests.faults import checks
from tests.fleet.data import fill
from tests.fleet.pki import make_pki
from tests.servers.fixtures import make_ufile
from tests.servers.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.faults, pytest.mark.backup]
CLUSTER = "uk8s-etcdfaults"
HOUR_AGO = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)  # earlier backups: distinct names


@pytest.fixture
def relays(request):
    """Factory: a TCP relay in front of each client URL of a cluster; returns (relays, relay URLs)."""
    started: list[TCPProxy] = []

    def make(cluster):
        for member in cluster.members:
            started.append(TCPProxy(member.ip, 2379).start())
        mine = started[-len(cluster.members) :]
        return mine, [f"https://127.0.0.1:{r.port}" for r in mine]

    yield make
    for relay in started:
        relay.stop()


def local_ref(tmp_path) -> tuple[str, LocalStorage]:
    return checks.save_block(LocalBlock(directory=str(tmp_path / "backups"))), LocalStorage(tmp_path / "backups")


def no_partial_files(directory: Path) -> None:
    leftovers = [p.name for p in directory.rglob("*") if p.is_file() and ".tmp-" in p.name]
    assert leftovers == [], leftovers


def test_source_member_killed_mid_snapshot_fails_over_to_one_good_backup(
    prefect_api, make_etcd_cluster, relays, seaweedfs, ufile_proxy, tmp_path
):
    cluster = make_etcd_cluster(members=3)
    client = cluster.client(0)
    fill(client, 1200, 10_000)  # ~12 MB: the stored object needs a multipart upload
    client.close()
    proxies, urls = relays(cluster)
    block = checks.save_cluster(cluster, CLUSTER, endpoints=urls)
    bucket = seaweedfs.make_bucket()
    ref = checks.save_ufile_block(seaweedfs, ufile_proxy, bucket)
    store = make_ufile(seaweedfs, bucket, ufile_proxy)
    earlier = backup(checks.access_of(cluster), store, cluster_id=CLUSTER, compression="none", now=HOUR_AGO)
    before = checks.key_digest(cluster)

    source = etcd.pick_sources(checks.access_of(cluster, urls))[0]
    victim = urls.index(source)
    size = etcd.status(checks.access_of(cluster, urls), source).db_size
    proxies[victim].when_relayed(size * 2 // 3, lambda: os.kill(cluster.members[victim].process.pid, signal.SIGKILL))
    record = backup_etcd(cluster=block, storage=ref, keep=5, compression="none")

    assert cluster.members[victim].process.wait(5) == -signal.SIGKILL  # it really died mid-stream
    assert record.source_endpoint != source and record.source_member != f"etcd{victim + 1}"
    assert record.size > 8 << 20
    assert checks.visible(store) == checks.backup_keys(earlier.key, record.key)
    assert seaweedfs.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    checks.assert_restorable(store, CLUSTER, [earlier.key, record.key], tmp_path)
    assert checks.key_digest(cluster, member=(victim + 1) % 3) == before
    store.close()


def test_all_members_down_fails_clearly_and_prunes_nothing(prefect_api, make_etcd_cluster, tmp_path):
    cluster = make_etcd_cluster(members=3)
    fill(cluster.client(0), 100, 1000)
    block = checks.save_cluster(cluster, CLUSTER)
    ref, store = local_ref(tmp_path)
    earlier = [
        backup(checks.access_of(cluster), store, cluster_id=CLUSTER, now=HOUR_AGO - datetime.timedelta(hours=h))
        for h in (1, 0)
    ]
    before = checks.key_digest(cluster)
    for i in range(3):
        cluster.stop_member(i)

    with pytest.raises(EtcdUnavailable) as failed:
        backup_etcd(cluster=block, storage=ref, keep=1)  # keep=1 would prune one had the backup worked
    message = str(failed.value)
    assert "no voting member answered" in message and all(url in message for url in cluster.endpoints)
    assert checks.visible(store) == checks.backup_keys(*(r.key for r in earlier))
    no_partial_files(tmp_path / "backups")
    checks.assert_restorable(store, CLUSTER, [r.key for r in earlier], tmp_path)
    cluster.start()
    assert checks.key_digest(cluster) == before


def test_snapshot_stream_cut_in_transit_is_not_stored_and_the_retry_is_good(prefect_api, module_etcd, relays, tmp_path):
    (relay,), urls = relays(module_etcd)
    block = checks.save_cluster(module_etcd, CLUSTER, endpoints=urls)
    ref, store = local_ref(tmp_path)
    earlier = backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, now=HOUR_AGO)
    before = checks.key_digest(module_etcd)

    relay.cut_after(8 << 20, stay_gone=False)  # the first attempt loses its link 8 MB into the ~13 MB stream
    record = backup_etcd(cluster=block, storage=ref, keep=5)

    assert relay.cuts == 1
    assert checks.visible(store) == checks.backup_keys(earlier.key, record.key)  # the cut attempt left nothing
    no_partial_files(tmp_path / "backups")
    checks.assert_restorable(store, CLUSTER, [earlier.key, record.key], tmp_path)
    assert record.raw_size > 8 << 20 and checks.key_digest(module_etcd) == before


def test_a_stream_cut_for_good_fails_the_run_and_stores_nothing(prefect_api, module_etcd, relays, tmp_path):
    (relay,), urls = relays(module_etcd)
    block = checks.save_cluster(module_etcd, CLUSTER, endpoints=urls)
    ref, store = local_ref(tmp_path)
    earlier = backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, now=HOUR_AGO)
    relay.cut_after(8 << 20)  # and stays gone: every retry fails too
    with pytest.raises(EtcdUnavailable) as failed:
        backup_etcd(cluster=block, storage=ref, keep=1)
    assert failed.value.transient and urls[0] in str(failed.value)
    assert checks.visible(store) == checks.backup_keys(earlier.key)
    no_partial_files(tmp_path / "backups")
    checks.assert_restorable(store, CLUSTER, [earlier.key], tmp_path)


def _expired_client_cert(pki) -> tuple[str, str]:
    """A client certificate signed by the cluster's own CA that expired yesterday (cert PEM, key PEM)."""
    ca_key = serialization.load_pem_private_key((Path(pki.ca).parent / "ca-key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(Path(pki.ca).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "etcd")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=365))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem.decode()


@pytest.mark.parametrize("wrong", ["CA", "expired client certificate"])
def test_refused_tls_fails_at_once_with_an_error_naming_the_member(
    wrong, prefect_api, module_etcd, fleet_pki, tmp_path_factory, tmp_path
):
    ref, store = local_ref(tmp_path)
    earlier = backup(checks.access_of(module_etcd), store, cluster_id=CLUSTER, now=HOUR_AGO)
    if wrong == "CA":
        other = make_pki(tmp_path_factory.mktemp("other-pki"), 0)
        tls = {"ca_pem": other.ca.read_text()}
        expected = "is not signed by the CA in the cluster's ca_pem"
    else:
        cert, key = _expired_client_cert(fleet_pki)
        tls = {"cert_pem": cert, "key_pem": key}
        expected = f"expired on {datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1):%Y-%m-%d}"
    block = checks.save_cluster(module_etcd, CLUSTER, **tls)

    with pytest.raises(EtcdUnavailable) as failed:
        backup_etcd(cluster=block, storage=ref, keep=1)
    message = str(failed.value)
    assert expected in message and f"member {module_etcd.endpoints[0]}" in message, message
    assert not failed.value.transient  # not retried: a retry cannot fix a certificate
    assert "PRIVATE KEY" not in message
    assert [b.key for b in list_backups(store, CLUSTER)] == [earlier.key]
    checks.assert_restorable(store, CLUSTER, [earlier.key], tmp_path)
