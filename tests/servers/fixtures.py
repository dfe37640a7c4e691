"""Pytest fixtures for the storage servers: SeaweedFS (S3), the UFile proxy, the backup sshd."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from etcd_backup.storage.base import Storage
from etcd_backup.storage.local import LocalStorage
from etcd_backup.storage.s3 import S3Storage, ufile_storage
from etcd_backup.storage.sftp import SFTPStorage
from tests.prefect_fixtures import register_secret
from tests.servers.seaweedfs import SeaweedFS
from tests.servers.sshd_server import BackupSSHD
from tests.servers.tcp_proxy import TCPProxy
from tests.servers.ufile_proxy import MiB, UFileProxy

BACKENDS = ["s3", "ufile", "sftp", "local"]
UFILE_PUT_LIMIT = 16 * MiB  # far below UFile's 1 GB so that tests prove multipart is used


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A running SeaweedFS S3 server (endpoint, access_key, secret_key, make_bucket())."""
    server = SeaweedFS(str(tmp_path_factory.mktemp("seaweedfs"))).start()
    register_secret("the S3 secret key", server.secret_key)
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweedfs) -> str:
    """The name of a fresh, empty bucket."""
    return seaweedfs.make_bucket()


@pytest.fixture(scope="session")
def _ufile_proxy_server(seaweedfs):
    with UFileProxy(seaweedfs.endpoint, put_limit=UFILE_PUT_LIMIT) as proxy:
        yield proxy


@pytest.fixture
def ufile_proxy(_ufile_proxy_server) -> UFileProxy:
    """The UFile-rules proxy in front of SeaweedFS, with no rejections or faults recorded yet."""
    _ufile_proxy_server.reset()
    yield _ufile_proxy_server
    _ufile_proxy_server.heal()


@pytest.fixture(scope="session")
def backup_sshd():
    """A running backup SSH server (host, port, user, password, private_key, known_hosts(), directory)."""
    server = BackupSSHD().start()
    register_secret("the backup server's SSH private key", server.private_key)
    register_secret("the backup server's SSH password", server.password)
    yield server
    server.cleanup()


def make_s3(seaweedfs: SeaweedFS, bucket: str, endpoint: str | None = None) -> S3Storage:
    """An S3Storage on bucket at SeaweedFS (or at a proxy in front of it)."""
    return S3Storage(
        bucket,
        "backups",
        endpoint_url=endpoint or seaweedfs.endpoint,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
    )


def make_ufile(seaweedfs: SeaweedFS, bucket: str, proxy: UFileProxy) -> S3Storage:
    """A UFile storage speaking to SeaweedFS through the UFile proxy."""
    return ufile_storage(
        seaweedfs.access_key, seaweedfs.secret_key, "cn-bj", bucket, "backups", endpoint_url=proxy.endpoint
    )


def make_sftp(sshd: BackupSSHD, port: int | None = None, directory: str | None = None, **auth) -> SFTPStorage:
    """An SFTPStorage in directory (default: a fresh subdirectory), logging in by key unless auth says otherwise."""
    auth = auth or {"private_key": sshd.private_key, "known_hosts": sshd.known_hosts(port)}
    directory = directory or f"{sshd.directory}/t-{secrets.token_hex(4)}"
    return SFTPStorage(sshd.host, port or sshd.port, sshd.user, directory, **auth)


@pytest.fixture(params=BACKENDS)
def storage_backend(request, tmp_path) -> Storage:
    """A fresh, empty Storage of each kind: s3, ufile (through the proxy), sftp, local.

    For ufile, teardown also checks that the UFile-rules proxy refused nothing the backend did.
    """
    kind = request.param
    if kind == "s3":
        storage = make_s3(request.getfixturevalue("seaweedfs"), request.getfixturevalue("s3_bucket"))
    elif kind == "ufile":
        proxy = request.getfixturevalue("ufile_proxy")
        storage = make_ufile(request.getfixturevalue("seaweedfs"), request.getfixturevalue("s3_bucket"), proxy)
    elif kind == "sftp":
        storage = make_sftp(request.getfixturevalue("backup_sshd"))
    else:
        storage = LocalStorage(tmp_path / "store")
    yield storage
    storage.close()
    if kind == "ufile":
        assert request.getfixturevalue("ufile_proxy").rejections == [], "UFile would have refused these requests"


@dataclass
class FlakyBackend:
    """A storage whose server can vanish mid-transfer (cut_after) and come back (heal)."""

    storage: Storage
    cut_after: Callable[[int], None]
    heal: Callable[[], None]


@pytest.fixture(params=["s3", "ufile", "sftp"])
def flaky_backend(request) -> FlakyBackend:
    """Each remote backend behind a relay that can drop every connection after N bytes."""
    kind = request.param
    if kind == "ufile":
        proxy = request.getfixturevalue("ufile_proxy")
        storage = make_ufile(request.getfixturevalue("seaweedfs"), request.getfixturevalue("s3_bucket"), proxy)
        yield FlakyBackend(storage, proxy.cut_after, proxy.heal)
        storage.close()
        assert proxy.rejections == [], "UFile would have refused these requests"
        return
    if kind == "s3":
        seaweedfs = request.getfixturevalue("seaweedfs")
        relay = TCPProxy("127.0.0.1", int(seaweedfs.endpoint.rsplit(":", 1)[1])).start()
        storage = make_s3(seaweedfs, request.getfixturevalue("s3_bucket"), f"http://127.0.0.1:{relay.port}")
    else:
        sshd = request.getfixturevalue("backup_sshd")
        relay = TCPProxy(sshd.host, sshd.port).start()
        storage = make_sftp(sshd, relay.port)
    yield FlakyBackend(storage, relay.cut_after, relay.heal)
    storage.close()
    relay.stop()
