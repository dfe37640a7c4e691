"""Blocks against a real Prefect API: registration, save/load, masking, build() and check() on real servers."""

import json
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.request

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from blocks import EtcdCluster, LocalStorage, S3Storage, SSHServerStorage, UFileStorage, load_storage
from etcd_backup.cluster import MasterNode, NodeLayout
from etcd_backup.errors import ConfigError, StorageError

pytestmark = [pytest.mark.storage]

ALL = (EtcdCluster, UFileStorage, S3Storage, SSHServerStorage, LocalStorage)
KEY_PEM = "-----BEGIN EC PRIVATE KEY-----\nnot-a-real-key-3f9a\n-----END EC PRIVATE KEY-----\n"


def _masked(slug: str, name: str) -> dict:
    """The block document's data as the REST API shows it without secrets."""
    with get_client(sync_client=True) as client:
        return client.read_block_document_by_name(name, block_type_slug=slug, include_secrets=False).data


def _s3_block(seaweedfs, bucket: str, secret: str | None = None) -> S3Storage:
    return S3Storage(
        endpoint_url=seaweedfs.endpoint,
        region="us-east-1",
        bucket=bucket,
        prefix="uk8s-test",
        access_key_id=seaweedfs.access_key,
        secret_access_key=secret or seaweedfs.secret_key,
    )


@pytest.mark.slow
def test_cli_registers_every_block_type(prefect_api):
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully registered" in done.stdout
    with get_client(sync_client=True) as client:
        for cls in ALL:
            block_type = client.read_block_type_by_slug(cls.get_block_type_slug())
            assert block_type.description == cls._description
            assert block_type.logo_url


def test_local_storage_round_trip_and_check(prefect_api, tmp_path):
    LocalStorage(directory=str(tmp_path)).save("local-test", overwrite=True)
    block = load_storage("local-directory-storage/local-test")
    assert isinstance(block, LocalStorage) and block.directory == str(tmp_path)
    assert "upload, list, download and delete work" in block.check()
    assert not any(p.name.startswith(".etcd-backup-probe") for p in tmp_path.rglob("*"))


def test_load_storage_refuses_other_blocks(prefect_api):
    EtcdCluster(
        cluster_id="uk8s-x",
        ca_pem="ca",
        cert_pem="cert",
        key_pem=KEY_PEM,
        nodes=[MasterNode(name="etcd1", ip="10.0.0.1")],
    ).save("not-storage", overwrite=True)
    with pytest.raises(ConfigError, match="is a etcd-cluster block, not a storage block"):
        load_storage("etcd-cluster/not-storage")
    with pytest.raises(ConfigError, match="<block-type-slug>/<name>"):
        load_storage("just-a-name")


def test_etcd_cluster_round_trip_masks_secrets(prefect_api):
    layout = NodeLayout(data_dir="/data/etcd/default.etcd", client_port=12379)
    nodes = [MasterNode(name=f"etcd{i}", ip=f"10.23.0.{i}") for i in (1, 2, 3)]
    EtcdCluster(
        cluster_id="uk8s-f1wymalx",
        ca_pem="CA",
        cert_pem="CERT",
        key_pem=KEY_PEM,
        nodes=nodes,
        ssh_private_key="ssh-key-secret-81c2",
        known_hosts="10.23.0.1 ssh-ed25519 AAAA",
        layout=layout,
    ).save("prod", overwrite=True)
    spec = EtcdCluster.load("prod").spec()
    assert spec.key_pem.get_secret_value() == KEY_PEM
    assert spec.ssh.private_key.get_secret_value() == "ssh-key-secret-81c2"
    assert spec.layout == layout and spec.nodes == nodes
    assert spec.endpoints == ["https://10.23.0.1:12379", "https://10.23.0.2:12379", "https://10.23.0.3:12379"]
    assert (
        spec.initial_cluster()
        == "etcd1=https://10.23.0.1:2380,etcd2=https://10.23.0.2:2380,etcd3=https://10.23.0.3:2380"
    )
    data = _masked("etcd-cluster", "prod")
    assert data["key_pem"] == "********" and data["ssh_private_key"] == "********"
    assert data["cert_pem"] == "CERT" and data["layout"]["client_port"] == 12379
    assert "not-a-real-key" not in repr(spec) and "ssh-key-secret" not in repr(spec)


def test_etcd_cluster_access_builds_etcd_access(prefect_api):
    block = EtcdCluster(
        cluster_id="c", ca_pem="CA", cert_pem="CERT", key_pem=KEY_PEM, nodes=[MasterNode(name="etcd1", ip="10.0.0.1")]
    )
    access = block.access(timeout=3)
    assert access.endpoints == ("https://10.0.0.1:2379",) and access.key == KEY_PEM and access.timeout == 3
    assert block.spec().ssh is None


@pytest.mark.slow
def test_s3_block_builds_and_checks(prefect_api, seaweedfs):
    _s3_block(seaweedfs, seaweedfs.make_bucket()).save("s3-test", overwrite=True)
    block = load_storage("s3-storage/s3-test")
    assert "upload, list, download and delete work" in block.check()
    assert _masked("s3-storage", "s3-test")["secret_access_key"] == "********"


@pytest.mark.slow
def test_s3_check_with_a_wrong_secret_names_the_right_and_hides_the_secret(prefect_api, seaweedfs, caplog):
    wrong = "wrong-secret-d41f9c0b77"
    block = _s3_block(seaweedfs, seaweedfs.make_bucket(), secret=wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError, match="cannot upload") as err:
        block.check()
    assert wrong not in str(err.value) and wrong not in repr(err.value)
    assert wrong not in caplog.text


@pytest.mark.slow
def test_ufile_block_builds_and_checks_through_the_ufile_proxy(prefect_api, seaweedfs, ufile_proxy):
    UFileStorage(
        public_key=seaweedfs.access_key,
        private_key=seaweedfs.secret_key,
        region="cn-bj",
        bucket=seaweedfs.make_bucket(),
        prefix="uk8s-test",
        endpoint_url=ufile_proxy.endpoint,
    ).save("ufile-test", overwrite=True)
    block = load_storage("ufile-storage/ufile-test")
    assert block.build().describe().startswith(("ufile://", "s3://"))
    assert "upload, list, download and delete work" in block.check()
    assert _masked("ufile-storage", "ufile-test")["private_key"] == "********"
    assert ufile_proxy.rejections == []


def test_ufile_default_endpoints():
    public = UFileStorage(public_key="p", private_key="s", region="cn-bj", bucket="b").build()
    internal = UFileStorage(public_key="p", private_key="s", region="hk", bucket="b", internal=True).build()
    assert public._client.meta.endpoint_url == "https://s3-cn-bj.ufileos.com"
    assert internal._client.meta.endpoint_url == "http://internal.s3-hk.ufileos.com"


@pytest.mark.slow
def test_ssh_server_block_builds_and_checks(prefect_api, backup_sshd):
    SSHServerStorage(
        host=backup_sshd.host,
        port=backup_sshd.port,
        user=backup_sshd.user,
        private_key=backup_sshd.private_key,
        directory=backup_sshd.directory,
        known_hosts=backup_sshd.known_hosts(),
    ).save("sftp-test", overwrite=True)
    block = load_storage("ssh-server-storage/sftp-test")
    assert "upload, list, download and delete work" in block.check()
    assert _masked("ssh-server-storage", "sftp-test")["private_key"] == "********"


@pytest.mark.slow
def test_ssh_server_check_refuses_an_unknown_host_key(prefect_api, backup_sshd):
    block = SSHServerStorage(
        host=backup_sshd.host,
        port=backup_sshd.port,
        user=backup_sshd.user,
        private_key=backup_sshd.private_key,
        directory=backup_sshd.directory,
        known_hosts="",
    )
    with pytest.raises(Exception, match="not in known_hosts") as err:
        block.check()
    assert "PRIVATE KEY" not in str(err.value)


IDENTITIES = {  # SeaweedFS identity actions; "Write" covers put and delete
    "noupload": ["Read", "List"],
    "nolist": ["Read", "Write"],
}  # a token without Read already fails at upload: the core put reads the object's size back


@pytest.fixture(scope="module")
def limited_s3(tmp_path_factory):
    """A SeaweedFS of our own whose extra identities each lack one right (set through the filer's identity.json)."""
    from tests.servers.seaweedfs import SeaweedFS

    server = SeaweedFS(str(tmp_path_factory.mktemp("seaweedfs-iam"))).start()
    bucket = server.make_bucket()
    identities = [
        {
            "name": "admin",
            "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
    ]
    identities += [
        {"name": n, "credentials": [{"accessKey": n, "secretKey": f"{n}-secret-5e1d"}], "actions": a}
        for n, a in IDENTITIES.items()
    ]
    _filer_put(server, "/etc/iam/identity.json", json.dumps({"identities": identities}).encode())
    _wait_for_identity(server, bucket, "nolist")
    yield server, bucket
    server.stop()


def _filer_put(server, path: str, body: bytes) -> None:
    boundary = secrets.token_hex(8)
    data = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.rsplit("/", 1)[1]}"\r\n'
            f"Content-Type: application/json\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.ports['filer.port']}{path}",
        data=data,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    urllib.request.urlopen(request, timeout=30).read()


def _wait_for_identity(server, bucket: str, name: str) -> None:
    """Wait until S3 knows the new identity (it reloads identity.json from the filer)."""
    client = server.client(aws_access_key_id=name, aws_secret_access_key=f"{name}-secret-5e1d")
    for _ in range(200):
        try:
            client.head_bucket(Bucket=bucket)
            return
        except Exception:  # noqa: BLE001 - not loaded yet, whatever the error
            time.sleep(0.1)
    raise RuntimeError(f"SeaweedFS never loaded identity {name}")


@pytest.mark.slow
@pytest.mark.parametrize("identity, right", [("noupload", "upload"), ("nolist", "list")])
def test_check_names_the_missing_right(prefect_api, limited_s3, identity, right, caplog):
    server, bucket = limited_s3
    secret = f"{identity}-secret-5e1d"
    UFileStorage(
        public_key=identity, private_key=secret, region="cn-bj", bucket=bucket, endpoint_url=server.endpoint
    ).save(f"ufile-{identity}", overwrite=True)
    block = load_storage(f"ufile-storage/ufile-{identity}")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError, match=f"cannot {right} .*needs the {right} right") as err:
        block.check()
    assert secret not in str(err.value) and secret not in caplog.text
    admin = server.client()
    assert not admin.list_objects_v2(Bucket=bucket).get("Contents"), "the probe was left behind"
