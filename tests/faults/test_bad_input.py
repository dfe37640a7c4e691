"""Bad input that reaches the core: hostile archives, the wrong age identity, a manifest that is not JSON, bad keys.

Each case is refused with a clear error, and nothing is written where the snapshot would go.
"""

from __future__ import annotations

import io
import tarfile

import pytest
from pyrage import x25519

from etcd_backup import catalog, pipeline
from etcd_backup.errors import BackupCorrupt, ConfigError
from etcd_backup.storage.local import LocalStorage

pytestmark = pytest.mark.faults
KEY = "uk8s-bad-backup-etcd-3.3.17-2020-02-11T03-56-12.db.tar.gz"


def _tar(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, target
    return info


@pytest.mark.parametrize(
    "member, data, reason",
    [
        (_member("../../etc/passwd", size=4), b"root", "path that leaves the archive"),
        (_member("/var/lib/etcd/x.db", size=4), b"root", "path that leaves the archive"),
        (_member("snap.db", tarfile.SYMTYPE, target="/etc/shadow"), b"", "is a link"),
        (_member("snap.db", tarfile.LNKTYPE, target="other.db"), b"", "is a link"),
        (_member("dev", tarfile.CHRTYPE), b"", "is not a regular file"),
    ],
)
def test_a_tar_with_paths_outside_or_links_is_refused(tmp_path, member, data, reason):
    store = LocalStorage(tmp_path / "store")
    store.put(KEY, io.BytesIO(_tar(member, data)))
    with pytest.raises(BackupCorrupt, match=reason):
        pipeline.fetch_snapshot(store, KEY, tmp_path / "out.db")
    assert not (tmp_path / "out.db").exists() and not (tmp_path / "out.db.tmp").exists()
    assert not (tmp_path / "etc").exists()


def test_an_age_file_with_the_wrong_identity_is_refused(tmp_path):
    store = LocalStorage(tmp_path / "store")
    right, wrong = x25519.Identity.generate(), x25519.Identity.generate()
    key = "uk8s-bad-backup-etcd-3.5.1-2024-01-01T00-00-00.db.zst.age"
    import pyrage

    store.put(key, io.BytesIO(pyrage.encrypt(b"not even a snapshot", [right.to_public()])))
    with pytest.raises(BackupCorrupt, match="cannot decrypt: no matching identity"):
        pipeline.fetch_snapshot(store, key, tmp_path / "out.db", identities=[str(wrong)])
    with pytest.raises(ConfigError, match="neither an age secret key nor an SSH private key"):
        pipeline.fetch_snapshot(store, key, tmp_path / "out.db", identities=["AGE-PUBLIC-KEY-not-a-secret"])
    assert not (tmp_path / "out.db").exists()


def test_a_manifest_that_is_not_json_makes_the_backup_incomplete_not_a_crash(tmp_path):
    store = LocalStorage(tmp_path / "store")
    key = "uk8s-bad-backup-etcd-3.5.1-2024-01-01T00-00-00.db.zst"
    store.put(key, io.BytesIO(b"x"))
    store.put(catalog.manifest_key(key), io.BytesIO(b"{not json"))
    with pytest.raises(ConfigError, match="is not valid"):
        catalog.read_manifest(store, key)
    [listed] = catalog.list_backups(store, "uk8s-bad")
    assert not listed.complete and listed.manifest_stored and listed.manifest is None


@pytest.mark.parametrize("key", ["../up.db.zst", "a/../../b.db", "/abs/x.db", "a//b.db", "./x.db"])
def test_keys_that_leave_the_storage_root_are_refused(tmp_path, key):
    store = LocalStorage(tmp_path / "store")
    with pytest.raises(ConfigError, match="invalid object key"):
        pipeline.fetch_snapshot(store, key, tmp_path / "out.db")
    assert not (tmp_path / "out.db").exists()
