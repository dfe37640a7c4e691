"""Prefect blocks for backup storage: UFile, any S3, an SSH server, a local directory.

Each block builds the core Storage (`build()`) and can prove it has the rights the
backup flow needs (`check()`: upload, list, download, delete of a tiny probe object).
"""

from __future__ import annotations

import io
import os
import secrets
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from etcd_backup.errors import StorageError
from etcd_backup.storage.base import Storage

PROBE_PREFIX = ".etcd-backup-probe-"
LOGO = "https://raw.githubusercontent.com/etcd-io/etcd/main/logos/etcd-glyph-color.png"


class StorageBlock(Block):
    """Common behaviour of the storage blocks (not registered on its own)."""

    _block_schema_capabilities = ["build-storage"]

    def build(self) -> Storage:
        """The core Storage this block describes."""
        raise NotImplementedError

    def check(self) -> str:
        """Prove upload, list, download and delete work; raises StorageError naming the missing right."""
        with self.build() as storage:
            return probe_rights(storage)


class UFileStorage(StorageBlock):
    """UCloud UFile (US3) through its S3 API; the token needs upload, download, delete and list rights."""

    _block_type_name = "UFile Storage"
    _block_type_slug = "ufile-storage"
    _description = (
        "Backups in a UCloud UFile bucket. Create a UFile token with upload, download, "
        "delete and list rights on the bucket; its public/private keys go here."
    )
    _logo_url = LOGO

    public_key: str = Field(description="UFile token public key (the S3 access key)")
    private_key: SecretStr = Field(description="UFile token private key (the S3 secret key)")
    region: str = Field(description="UFile region id, e.g. cn-bj, cn-sh2, hk")
    bucket: str = Field(description="UFile bucket (storage space) name")
    prefix: str = Field(default="", description="folder inside the bucket for this cluster's backups")
    internal: bool = Field(default=False, description="use the internal endpoint (inside UCloud; plain HTTP)")
    endpoint_url: str | None = Field(default=None, description="override the endpoint (proxies, tests)")

    def build(self) -> Storage:
        """A core UFileStorage on the bucket."""
        from etcd_backup.storage.s3 import ufile_storage

        secret, where = self.private_key.get_secret_value(), (self.region, self.bucket, self.prefix)
        return ufile_storage(self.public_key, secret, *where, internal=self.internal, endpoint_url=self.endpoint_url)


class S3Storage(StorageBlock):
    """Any S3-compatible object storage (AWS, MinIO, SeaweedFS, Ceph, ...)."""

    _block_type_name = "S3 Storage"
    _block_type_slug = "s3-storage"
    _description = "Backups in any S3-compatible bucket; the credentials need put, get, list and delete."
    _logo_url = LOGO

    endpoint_url: str | None = Field(default=None, description="S3 endpoint; empty for AWS")
    region: str | None = Field(default=None, description="region name, e.g. us-east-1")
    bucket: str = Field(description="bucket name")
    prefix: str = Field(default="", description="folder inside the bucket for this cluster's backups")
    access_key_id: str = Field(description="access key id")
    secret_access_key: SecretStr = Field(description="secret access key")
    addressing_style: Literal["path", "virtual", "auto"] = Field(default="path", description="bucket addressing")
    verify_tls: bool = Field(default=True, description="verify the server's TLS certificate")
    ca_bundle: str | None = Field(default=None, description="CA bundle: a file path on the worker or PEM text")

    def build(self) -> Storage:
        """A core S3Storage on the bucket."""
        from etcd_backup.storage.s3 import S3Storage as Core

        return Core(
            self.bucket,
            self.prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key=self.access_key_id,
            secret_key=self.secret_access_key.get_secret_value(),
            addressing_style=self.addressing_style,
            verify=(self.ca_bundle or True) if self.verify_tls else False,
        )


class SSHServerStorage(StorageBlock):
    """A directory on any SSH server; the account needs read and write rights there."""

    _block_type_name = "SSH Server Storage"
    _block_type_slug = "ssh-server-storage"
    _description = (
        "Backups in a directory on an SSH server (SFTP). The account must be able to read, "
        "write and delete in the directory. The host key is verified against known_hosts."
    )
    _logo_url = LOGO

    host: str = Field(description="SSH server host name or IP")
    port: int = Field(default=22, description="SSH port")
    user: str = Field(description="login user")
    password: SecretStr | None = Field(default=None, description="password (or use a private key)")
    private_key: SecretStr | None = Field(default=None, description="OpenSSH private key text")
    directory: str = Field(description="directory that holds the backups")
    known_hosts: str = Field(description="known_hosts lines for the server (ssh-keyscan -p PORT HOST)")
    host_fingerprint: str | None = Field(default=None, description="or pin the host key: SHA256:...")

    def build(self) -> Storage:
        """A core SFTPStorage on the directory."""
        from etcd_backup.storage.sftp import SFTPStorage

        key = self.private_key.get_secret_value() if self.private_key else None
        password = self.password.get_secret_value() if self.password else None
        pins = {"known_hosts": self.known_hosts or None, "host_fingerprint": self.host_fingerprint}
        return SFTPStorage(self.host, self.port, self.user, self.directory, private_key=key, password=password, **pins)


class LocalStorage(StorageBlock):
    """A directory on the machine that runs the flows (development, or a mounted NAS)."""

    _block_type_name = "Local Directory Storage"
    _block_type_slug = "local-directory-storage"
    _description = "Backups in a directory on the worker's own file system (a mounted NAS, or development)."
    _logo_url = LOGO

    directory: str = Field(description="absolute path of the backup directory on the worker")

    @field_validator("directory")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not os.path.isabs(v):
            raise ValueError(f"{v!r} is a relative path; give the absolute path of the backup directory")
        return v

    def build(self) -> Storage:
        """A core LocalStorage on the directory."""
        from etcd_backup.storage.local import LocalStorage as Core

        return Core(self.directory)


STORAGE_BLOCKS = (UFileStorage, S3Storage, SSHServerStorage, LocalStorage)


def load_storage(ref: str) -> StorageBlock:
    """Load a storage block by '<block-type-slug>/<name>', e.g. 'ufile-storage/prod'; ConfigError names the problem."""
    from blocks.loading import load_block, require

    block = load_block(ref, what="storage block")
    kinds = ", ".join(b.get_block_type_slug() for b in STORAGE_BLOCKS)
    return require(block, ref, StorageBlock, "storage block", f"a storage block ({kinds})")  # type: ignore[return-value]


def probe_rights(storage: Storage) -> str:
    """Put, list, get and delete one tiny object; the error names the first right that is missing."""
    key = PROBE_PREFIX + secrets.token_hex(8)
    payload = b"etcd-backup storage check " + key.encode()
    where = storage.describe()
    _step(where, "upload (put)", lambda: storage.put(key, io.BytesIO(payload)))
    try:
        listed = _step(where, "list", lambda: [o.key for o in storage.list(PROBE_PREFIX)])
        if key not in listed:
            raise StorageError(
                f"missing right: list (the probe {key} was uploaded but not listed) on {where}", step="check"
            )
        got = _step(where, "download (get)", lambda: _read_all(storage, key))
        if got != payload:
            raise StorageError(f"download returned different bytes for the probe {key} on {where}", step="check")
    except StorageError:
        _forget(storage, key)
        raise
    _step(where, "delete", lambda: storage.delete([key]))
    if key in _step(where, "list", lambda: [o.key for o in storage.list(PROBE_PREFIX)]):
        raise StorageError(f"missing right: delete (the probe {key} is still there) on {where}", step="check")
    return f"{where}: upload, list, download and delete work"


def _step(where: str, right: str, fn):
    """Run one probe step; a failure names the right the step needs."""
    try:
        return fn()
    except StorageError as exc:
        err = StorageError(
            f"cannot {right} on {where} (needs the {right.split()[0]} right): {exc.message}", step="check"
        )
        err.transient = exc.transient
        raise err from None


def _forget(storage: Storage, key: str) -> None:
    """Best-effort removal of the probe after another step failed."""
    try:
        storage.delete([key])
    except StorageError:
        pass


def _read_all(storage: Storage, key: str) -> bytes:
    with storage.open(key) as f:
        return f.read()
