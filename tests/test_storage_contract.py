"""One contract, every backend: S3 (SeaweedFS), UFile (through the UFile-rules proxy), SFTP (sshd), local."""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc

import pytest

from etcd_backup.errors import ConfigError, NotFound, StorageError, TransientStorageError
from etcd_backup.storage.local import LocalStorage
from etcd_backup.storage.s3 import S3Storage, ufile_endpoint, ufile_storage
from etcd_backup.storage.sftp import SFTPStorage
from tests.servers.fixtures import make_sftp
from tests.servers.seaweedfs import free_port

pytestmark = pytest.mark.storage

MiB = 1024 * 1024
BIG = 100 * 1000 * 1000
MEMORY_BOUND = 64 * MiB  # S3 holds at most max_concurrency+1 parts of 8 MiB; nothing may grow with the object


class PseudoRandom:
    """A deterministic byte stream of a given size that is never in memory as a whole.

    Like a pipe, it returns short reads (at most 1 MiB), and it can fail after fail_after bytes.
    """

    def __init__(self, size: int, seed: int = 1, fail_after: int | None = None):
        self.left, self.sent, self.fail_after = size, 0, fail_after
        self.random = random.Random(seed)

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise RuntimeError("source failed mid-stream")
        size = self.left if size is None or size < 0 else size
        size = min(size, self.left, MiB)
        self.left -= size
        self.sent += size
        return self.random.randbytes(size)


def digest(stream) -> tuple[str, int]:
    """sha256 and length of everything read from stream, 1 MiB at a time."""
    sha, total = hashlib.sha256(), 0
    while chunk := stream.read(MiB):
        sha.update(chunk)
        total += len(chunk)
    return sha.hexdigest(), total


def put_bytes(storage, key: str, data: bytes):
    return storage.put(key, PseudoBytes(data))


class PseudoBytes:
    """A readable over bytes (a stand-in for a small pipe)."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, size: int = -1) -> bytes:
        size = len(self.data) if size is None or size < 0 else size
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def keys(storage, prefix: str = "") -> list[str]:
    return [info.key for info in storage.list(prefix)]


@pytest.mark.slow
def test_100mb_round_trip_is_byte_exact_in_bounded_memory(storage_backend):
    expected = digest(PseudoRandom(BIG))
    tracemalloc.start()
    try:
        info = storage_backend.put("cluster-a/big.db", PseudoRandom(BIG))
        with storage_backend.open("cluster-a/big.db") as stream:
            got = digest(stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.size == BIG
    assert got == expected
    assert peak < MEMORY_BOUND, f"{storage_backend.kind} buffered {peak / MiB:.0f} MiB for a {BIG / MiB:.0f} MiB object"


def test_small_object_round_trip_and_stat(storage_backend):
    info = put_bytes(storage_backend, "c/one.db", b"hello etcd")
    assert (info.key, info.size) == ("c/one.db", 10)
    assert info.modified.tzinfo is not None
    assert storage_backend.stat("c/one.db").size == 10
    with storage_backend.open("c/one.db") as stream:
        assert stream.read() == b"hello etcd"


def test_put_replaces_an_existing_object(storage_backend):
    put_bytes(storage_backend, "c/one.db", b"first version")
    put_bytes(storage_backend, "c/one.db", b"second")
    with storage_backend.open("c/one.db") as stream:
        assert stream.read() == b"second"
    assert keys(storage_backend) == ["c/one.db"]


def test_empty_object(storage_backend):
    assert put_bytes(storage_backend, "c/empty", b"").size == 0
    with storage_backend.open("c/empty") as stream:
        assert stream.read() == b""


def test_list_rules(storage_backend):
    for key in ("a/1", "a/2", "a/b/3", "ab/4", "z"):
        put_bytes(storage_backend, key, key.encode())
    assert keys(storage_backend) == ["a/1", "a/2", "a/b/3", "ab/4", "z"]
    assert keys(storage_backend, "a/") == ["a/1", "a/2", "a/b/3"]
    assert keys(storage_backend, "a") == ["a/1", "a/2", "a/b/3", "ab/4"]
    assert keys(storage_backend, "a/b") == ["a/b/3"]
    assert keys(storage_backend, "a/b/3") == ["a/b/3"]
    assert keys(storage_backend, "missing/") == []
    assert keys(storage_backend, "missing/deeper/") == []
    assert {i.key: i.size for i in storage_backend.list("a/b/")} == {"a/b/3": 5}


def test_missing_objects(storage_backend):
    with pytest.raises(NotFound):
        storage_backend.stat("nope/x.db")
    with pytest.raises(NotFound):
        storage_backend.open("nope/x.db")
    storage_backend.delete(["nope/x.db"])
    storage_backend.delete([])


def test_delete_removes_what_exists(storage_backend):
    for key in ("d/1", "d/2", "d/3"):
        put_bytes(storage_backend, key, b"x")
    storage_backend.delete(["d/1", "d/3", "d/never-was"])
    assert keys(storage_backend) == ["d/2"]
    with pytest.raises(NotFound):
        storage_backend.stat("d/1")


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "c/.one.db.tmp-1a2b"])
def test_bad_keys_are_refused(storage_backend, key):
    with pytest.raises(ConfigError):
        put_bytes(storage_backend, key, b"x")


@pytest.mark.faults
@pytest.mark.slow
def test_failed_source_leaves_no_object(storage_backend):
    with pytest.raises(RuntimeError, match="source failed"):
        storage_backend.put("c/broken.db", PseudoRandom(40 * MiB, fail_after=20 * MiB))
    assert keys(storage_backend) == []
    with pytest.raises(NotFound):
        storage_backend.stat("c/broken.db")


@pytest.mark.faults
@pytest.mark.slow
def test_server_gone_mid_transfer_leaves_no_object(flaky_backend):
    storage = flaky_backend.storage
    flaky_backend.cut_after(20 * MiB)
    with pytest.raises(TransientStorageError) as caught:
        storage.put("c/cut.db", PseudoRandom(64 * MiB))
    assert caught.value.transient
    flaky_backend.heal()
    assert keys(storage) == []
    put_bytes(storage, "c/after.db", b"back again")
    assert keys(storage) == ["c/after.db"]


def test_partial_uploads_are_never_listed(storage_backend, request):
    put_bytes(storage_backend, "p/done.db", b"complete")
    kind = storage_backend.kind
    if kind in ("s3", "ufile"):
        client = request.getfixturevalue("seaweedfs").client()
        bucket = storage_backend.bucket
        upload = client.create_multipart_upload(Bucket=bucket, Key="backups/p/partial.db")
        client.upload_part(
            Bucket=bucket, Key="backups/p/partial.db", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 8 * MiB
        )
    else:
        root = storage_backend.root if kind == "local" else storage_backend.directory
        with open(os.path.join(root, "p", ".partial.db.tmp-0123456789ab"), "wb") as half:
            half.write(b"half")
    assert keys(storage_backend) == ["p/done.db"]
    assert keys(storage_backend, "p/") == ["p/done.db"]


@pytest.mark.parametrize("kind", ["s3", "ufile", "sftp"])
def test_wrong_credentials_fail_clearly_without_the_secret(kind, seaweedfs, s3_bucket, ufile_proxy, backup_sshd):
    secret = "wrong-secret-c0ffee-" + kind
    if kind == "s3":
        storage = S3Storage(
            s3_bucket, endpoint_url=seaweedfs.endpoint, access_key=seaweedfs.access_key, secret_key=secret
        )
    elif kind == "ufile":
        storage = ufile_storage(seaweedfs.access_key, secret, "cn-bj", s3_bucket, endpoint_url=ufile_proxy.endpoint)
    else:
        storage = make_sftp(
            backup_sshd, directory=backup_sshd.directory, password=secret, known_hosts=backup_sshd.known_hosts()
        )
    for attempt in (lambda: keys(storage), lambda: put_bytes(storage, "x.db", b"x")):
        with pytest.raises(StorageError) as caught:
            attempt()
        error = caught.value
        assert not error.transient
        assert "access denied" in str(error) or "authentication failed" in str(error)
        assert secret not in str(error) and secret not in repr(error)
    storage.close()
    assert ufile_proxy.rejections == []


@pytest.mark.faults
@pytest.mark.parametrize("kind", ["s3", "ufile", "sftp"])
def test_unreachable_endpoint_is_transient(kind, backup_sshd):
    port = free_port()
    if kind == "s3":
        storage = S3Storage(
            "bucket", endpoint_url=f"http://127.0.0.1:{port}", access_key="a", secret_key="b", connect_timeout=2
        )
    elif kind == "ufile":
        storage = ufile_storage("a", "b", "cn-bj", "bucket", endpoint_url=f"http://127.0.0.1:{port}")
    else:
        storage = SFTPStorage(
            "127.0.0.1",
            port,
            "etcdbackup",
            "/backups",
            password="x",
            known_hosts=backup_sshd.known_hosts(port),
            timeout=5,
        )
    with pytest.raises(TransientStorageError) as caught:
        keys(storage)
    assert str(port) in str(caught.value)


def test_missing_bucket_is_a_clear_permanent_error(seaweedfs):
    storage = S3Storage(
        "no-such-bucket-here",
        endpoint_url=seaweedfs.endpoint,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
    )
    with pytest.raises(StorageError) as caught:
        keys(storage)
    assert not caught.value.transient
    assert "no-such-bucket-here does not exist" in str(caught.value)


def test_s3_lists_across_pages(seaweedfs, s3_bucket):
    storage = S3Storage(
        s3_bucket,
        "paged",
        endpoint_url=seaweedfs.endpoint,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        page_size=2,
    )
    for n in range(5):
        put_bytes(storage, f"k{n}", b"x")
    assert keys(storage) == [f"k{n}" for n in range(5)]


@pytest.mark.slow
def test_ufile_uploads_in_fixed_8mib_parts(seaweedfs, s3_bucket, ufile_proxy):
    storage = ufile_storage(
        seaweedfs.access_key, seaweedfs.secret_key, "cn-bj", s3_bucket, endpoint_url=ufile_proxy.endpoint
    )
    size = 20 * MiB + 123  # above the proxy's 16 MiB PutObject limit
    storage.put("c/multi.db", PseudoRandom(size))
    parts = [r for r in ufile_proxy.requests if r.startswith("PUT ") and "partNumber=" in r]
    assert len(parts) == 3
    assert ufile_proxy.rejections == []
    with storage.open("c/multi.db") as stream:
        assert digest(stream) == digest(PseudoRandom(size))


@pytest.mark.parametrize("region", ["", "CN-BJ", "s3-cn-bj.ufileos.com", "cn bj", "cn-bj/"])
def test_ufile_region_is_validated(region):
    with pytest.raises(ConfigError, match="region"):
        ufile_storage("pub", "priv", region, "bucket")


def test_ufile_endpoints():
    assert ufile_endpoint("cn-bj") == "https://s3-cn-bj.ufileos.com"
    assert ufile_endpoint("idn-jakarta", internal=True) == "http://internal.s3-idn-jakarta.ufileos.com"
    assert (
        ufile_storage("pub", "priv", "hk", "bucket", "p").describe() == "ufile://bucket/p/ at https://s3-hk.ufileos.com"
    )


def test_local_files_and_directories_are_private(tmp_path):
    storage = LocalStorage(tmp_path / "store")
    put_bytes(storage, "c/one.db", b"secret etcd data")
    assert (tmp_path / "store/c/one.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "store/c").stat().st_mode & 0o077 == 0


def by_password(sshd) -> dict:
    """Log in with the password, the host key pinned by fingerprint."""
    return {"password": sshd.password, "host_fingerprint": sshd.fingerprint}


def test_sftp_files_are_private(backup_sshd):
    storage = make_sftp(backup_sshd, directory=f"{backup_sshd.directory}/private")
    put_bytes(storage, "c/one.db", b"secret etcd data")
    assert os.stat(f"{backup_sshd.directory}/private/c/one.db").st_mode & 0o777 == 0o600
    storage.close()


@pytest.mark.parametrize("subdir", ["", "/deeper"])
def test_sftp_unwritable_directory_names_host_and_path(backup_sshd, subdir):
    directory = backup_sshd.readonly_directory + subdir
    storage = make_sftp(backup_sshd, directory=directory, **by_password(backup_sshd))
    with pytest.raises(StorageError) as caught:
        put_bytes(storage, "c/one.db", b"x")
    assert not caught.value.transient
    assert "permission denied" in str(caught.value)
    assert backup_sshd.host in str(caught.value) and backup_sshd.readonly_directory in str(caught.value)
    storage.close()


def test_sftp_password_login_with_pinned_fingerprint(backup_sshd):
    storage = make_sftp(backup_sshd, directory=f"{backup_sshd.directory}/pw", **by_password(backup_sshd))
    put_bytes(storage, "one.db", b"x")
    assert keys(storage) == ["one.db"]
    storage.close()


@pytest.mark.parametrize("pinned", [None, "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
def test_sftp_unknown_host_key_is_refused_clearly(backup_sshd, pinned):
    storage = make_sftp(
        backup_sshd, directory=backup_sshd.directory, private_key=backup_sshd.private_key, host_fingerprint=pinned
    )
    with pytest.raises(StorageError) as caught:
        keys(storage)
    assert not caught.value.transient
    assert "not in known_hosts" in str(caught.value) and backup_sshd.fingerprint in str(caught.value)
