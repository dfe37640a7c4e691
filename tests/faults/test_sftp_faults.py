"""SSH server faults: the link dropped mid-upload, a full disk, an unknown or changed host key, no rights.

Real OpenSSH sshd (tests/servers/sshd_server.py) on this machine, so the tests can also look at its
directory directly; a TCP relay in front of it drops the link; a small tmpfs plays the full disk.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from blocks import SSHServerStorage
from etcd_backup.errors import StorageError, TransientStorageError
from etcd_backup.pipeline import backup
from etcd_backup.storage.sftp import SFTPStorage
from flows.backup import backup_etcd
from tests.faults.checks import access_of, assert_restorable, backup_keys, key_digest, save_block, save_cluster, visible
from tests.servers.sshd_server import USER
from tests.servers.tcp_proxy import TCPProxy

pytestmark = [pytest.mark.faults, pytest.mark.storage]
CLUSTER = "uk8s-sftpfaults"


def sftp(sshd, directory: str, port: int | None = None, **changes) -> SFTPStorage:
    """An SFTPStorage on directory of the backup sshd (or through a relay on port)."""
    fields = dict(private_key=sshd.private_key, known_hosts=sshd.known_hosts(port))
    return SFTPStorage(sshd.host, port or sshd.port, sshd.user, directory, **{**fields, **changes})


@pytest.fixture
def directory(backup_sshd) -> Path:
    """A fresh directory the backup user owns on the sshd."""
    path = Path(backup_sshd.directory) / f"f-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    account = pwd.getpwnam(USER)
    os.chown(path, account.pw_uid, account.pw_gid)
    return path


def temp_files(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if ".tmp-" in p.name]


def test_a_link_dropped_mid_upload_leaves_no_file_and_the_retry_removes_the_temp(
    module_etcd, backup_sshd, directory, tmp_path
):
    before = key_digest(module_etcd)
    with TCPProxy(backup_sshd.host, backup_sshd.port) as relay, sftp(backup_sshd, str(directory), relay.port) as store:
        earlier = backup(access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")
        relay.cut_after(4 << 20)
        with pytest.raises(TransientStorageError, match="connection to .* lost"):
            backup(access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")
        (left,) = temp_files(directory)  # the server kept what it had; nobody could remove it
        assert visible(sftp(backup_sshd, str(directory))) == backup_keys(earlier.key)
        relay.heal()
        time.sleep(1)  # a new backup name (names have one-second resolution)
        record = backup(access_of(module_etcd), store, cluster_id=CLUSTER, compression="none")  # Prefect's retry
        assert temp_files(directory) == []
        assert visible(store) == backup_keys(earlier.key, record.key)
        assert_restorable(store, CLUSTER, [earlier.key, record.key], tmp_path)
    assert left.startswith(".uk8s-sftpfaults-backup-etcd-") and key_digest(module_etcd) == before


def test_the_next_run_removes_temp_files_only_once_stale(backup_sshd, directory):
    dead, fresh = directory / ".a.db.zst.tmp-0123456789ab", directory / ".b.db.zst.tmp-ba9876543210"
    for path in (dead, fresh):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 7 * 3600
    os.utime(dead, (hours_ago, hours_ago))  # a dropped upload of a run long ago; `fresh` may be a live writer's
    with sftp(backup_sshd, str(directory)) as store:
        store.put("c.db.zst", __import__("io").BytesIO(b"next run"))
        assert sorted(p.name for p in directory.iterdir()) == [fresh.name, "c.db.zst"]
        assert visible(store) == {"c.db.zst"}


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` mounted on path, owned by the backup user; unmounted afterwards."""
    account = pwd.getpwnam(USER)
    options = f"size={size},mode=0700,uid={account.pw_uid},gid={account.pw_gid}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "faults-disk", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _ssh_block(sshd, directory: Path, **changes) -> str:
    fields = dict(
        host=sshd.host,
        port=sshd.port,
        user=sshd.user,
        private_key=sshd.private_key,
        directory=str(directory),
        known_hosts=sshd.known_hosts(),
    )
    return save_block(SSHServerStorage(**{**fields, **changes}))


def test_a_full_disk_fails_clearly_removes_the_partial_file_and_prunes_nothing(
    prefect_api, module_etcd, backup_sshd, directory, tmp_path
):
    cluster = save_cluster(module_etcd, CLUSTER)
    with small_disk(directory, "9m"):
        ref = _ssh_block(backup_sshd, directory)
        earlier = backup_etcd(cluster=cluster, storage=ref, keep=1)  # ~6.5 MB of zstd: the second does not fit
        with pytest.raises(StorageError) as failed:
            backup_etcd(cluster=cluster, storage=ref, keep=1)
        message = str(failed.value)
        assert "no space left on 127.0.0.1" in message and str(directory) in message, message
        assert not failed.value.transient
        assert temp_files(directory) == []  # the partial file is gone: the space is free again
        with sftp(backup_sshd, str(directory)) as store:
            assert visible(store) == backup_keys(earlier.key)
            assert_restorable(store, CLUSTER, [earlier.key], tmp_path)


def _new_key(tmp_path: Path, sshd) -> tuple[str, str]:
    """A fresh ed25519 key: (private key text, a known_hosts line claiming it is the sshd's host key)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kind, blob = (tmp_path / "k.pub").read_text().split()[:2]
    return (tmp_path / "k").read_text(), f"[{sshd.host}]:{sshd.port} {kind} {blob}\n"


@pytest.mark.parametrize("case", ["unknown host key", "changed host key", "no write right", "wrong login key"])
def test_refused_access_fails_clearly_at_once_and_writes_nothing(case, module_etcd, backup_sshd, directory, tmp_path):
    with sftp(backup_sshd, str(directory)) as good:
        earlier = backup(access_of(module_etcd), good, cluster_id=CLUSTER)
    target, changes, expected = directory, {}, ""
    private, known = _new_key(tmp_path, backup_sshd)
    if case == "unknown host key":
        changes = {"known_hosts": ""}
        expected = f"host key {backup_sshd.fingerprint} of [127.0.0.1]:{backup_sshd.port} is not in known_hosts"
    elif case == "changed host key":
        changes, expected = {"known_hosts": known}, f"host key of {USER}@127.0.0.1:{backup_sshd.port} changed"
    elif case == "wrong login key":
        changes, expected = {"private_key": private}, f"authentication failed for {USER}@127.0.0.1"
    else:  # a directory the user may read but not write (root's, holding a copy of the earlier backup)
        target = Path(backup_sshd.base) / f"ro-{secrets.token_hex(4)}"
        target.mkdir(mode=0o755)
        for key in backup_keys(earlier.key):
            shutil.copy(directory / key, target / key)
            (target / key).chmod(0o644)
        expected = f"permission denied for {USER} on 127.0.0.1"
    before = sorted(p.name for p in target.iterdir())
    with sftp(backup_sshd, str(target), **changes) as store, pytest.raises(StorageError) as failed:
        backup(access_of(module_etcd), store, cluster_id=CLUSTER)
    assert expected in str(failed.value), str(failed.value)
    assert not failed.value.transient and "PRIVATE KEY" not in str(failed.value)
    assert sorted(p.name for p in target.iterdir()) == before
    with sftp(backup_sshd, str(target)) as store:
        assert_restorable(store, CLUSTER, [earlier.key], tmp_path)
