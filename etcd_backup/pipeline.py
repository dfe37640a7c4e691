"""The backup stream (etcd snapshot -> check -> compress -> encrypt -> storage, manifest last) and read-back."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from etcd_backup import etcd
from etcd_backup.catalog import Backup, BackupRecord, Manifest, format_key, manifest_key, parse_key, read_manifest
from etcd_backup.certificate import Certificate, source_certificate
from etcd_backup.compression import COMPRESSIONS, DECODE_ERRORS, Compression, compressor, decompressor, unknown
from etcd_backup.encryption import DECRYPT_ERRORS, Encryptor, decrypting_reader, parse_identities, parse_recipients
from etcd_backup.errors import BackupCorrupt, ConfigError, EtcdUnavailable, NotFound
from etcd_backup.hashing import HashingReader
from etcd_backup.snapshot import SnapshotCheck
from etcd_backup.storage.base import Storage
from etcd_backup.storage.stream import Pipe

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
PROGRESS_EVERY = 64 << 20


def backup(
    access: etcd.EtcdAccess,
    storage: Storage,
    *,
    cluster_id: str,
    prefix: str = "",
    compression: Compression = "zstd",
    recipients: Iterable[str] = (),
    on_progress: Progress | None = None,
    now: datetime | None = None,
    level: int | None = None,
    sources: Iterable[str] | None = None,
) -> BackupRecord:
    """Stream a snapshot of the cluster into storage, verified, with its manifest written last.

    `sources` is the member order to try (default: etcd.pick_sources, leader first).
    """
    if compression not in COMPRESSIONS:
        raise unknown(compression)
    recipient_keys = [r.strip() for r in recipients]
    parsed = parse_recipients(recipient_keys)
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    template = _Job(access, storage, cluster_id, prefix, compression, recipient_keys, parsed, when, on_progress, level)
    errors = []
    for endpoint in sources or etcd.pick_sources(access):
        try:
            return replace(template, endpoint=endpoint).run()
        except EtcdUnavailable as exc:
            errors.append(exc)
    raise etcd.all_failed("every source member failed", errors, step="backup")


@dataclass
class _Job:
    """One attempt to back up from one endpoint."""

    access: etcd.EtcdAccess
    storage: Storage
    cluster_id: str
    prefix: str
    compression: Compression
    recipient_keys: list[str]
    recipients: list
    when: datetime
    on_progress: Progress | None
    level: int | None
    endpoint: str = ""
    error: BaseException | None = None

    def run(self) -> BackupRecord:
        """Stream, check and store the snapshot, then write the manifest."""
        started = time.monotonic()
        st = etcd.status(self.access, self.endpoint)
        member = _member_name(self.access, st.member_id)
        rev_before, _ = etcd.key_count(self.access, self.endpoint)
        key = format_key(self.cluster_id, st.version, self.when, self.compression, bool(self.recipients), self.prefix)
        with etcd.SnapshotStream(self.access, self.endpoint, st.db_size) as stream:
            rev_after, keys = etcd.key_count(self.access, self.endpoint)  # the snapshot's read tx is open now
            certifying = _certify(self.access, self.endpoint, rev_before, rev_after)  # beside the stream
            stored, check = self._store(key, stream, member)
        certificate = _certificate(certifying, self.endpoint)
        record = BackupRecord(
            cluster=self.cluster_id,
            key=key,
            **_digests(stored, check),
            revision=rev_after,
            revision_exact=rev_before == rev_after,
            revision_low=rev_before,
            etcd_cluster_id=f"{st.cluster_id:x}" if st.cluster_id else "",
            certificate=certificate,
            key_count=keys,
            etcd_version=st.version,
            source_member=member,
            source_endpoint=self.endpoint,
            created=self.when,
            compression=self.compression,
            encryption="age" if self.recipients else None,
            recipients=self.recipient_keys,
            duration_seconds=0.0,
            ratio=round(check.size / stored.size, 3) if stored.size else 0.0,
        )
        try:
            self.storage.put(manifest_key(key), io.BytesIO(Manifest(**record.model_dump()).to_json()))
        except BaseException:
            _forget(self.storage, key)
            raise
        return record.model_copy(update={"duration_seconds": round(time.monotonic() - started, 3)})

    def _store(self, key: str, stream: etcd.SnapshotStream, member: str) -> tuple[HashingReader, SnapshotCheck]:
        """Run the producer thread into a pipe that storage.put reads; nothing visible unless all went well."""
        out = Pipe()
        stored = HashingReader(out)  # hashed on the reading side: spreads the work over both threads
        check = SnapshotCheck(f"{member} ({self.endpoint})")
        member_name = key.rpartition("/")[2].removesuffix(".age").removesuffix(".tar.gz")
        thread = threading.Thread(
            target=self._produce, args=(stream, check, out, member_name), name="backup-producer", daemon=True
        )
        thread.start()
        try:
            self.storage.put(key, stored)
        except BaseException:
            cause = self.error  # set before the producer aborted the pipe, so the put failed because of it
            out.stop_reading()
            stream.close()
            thread.join()
            _forget(self.storage, key)
            if cause is not None:
                raise cause from None
            raise
        thread.join()
        if self.error is not None:  # a backend that swallowed the pipe's error
            _forget(self.storage, key)
            raise self.error
        return stored, check

    def _produce(self, stream, check: SnapshotCheck, out: Pipe, member_name: str) -> None:
        try:
            self._encode(stream, check, out, member_name)
            out.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            out.abort(exc)

    def _encode(self, stream, check: SnapshotCheck, out: Pipe, member_name: str) -> None:
        encryptor = Encryptor(out, self.recipients) if self.recipients else None
        try:
            writer = compressor(
                self.compression, encryptor or out, raw_size=stream.total, member=member_name, level=self.level
            )
            reported = 0
            for chunk in stream:
                check.update(chunk)
                writer.write(chunk)
                if self.on_progress and check.size - reported >= PROGRESS_EVERY:
                    reported = check.size
                    self.on_progress(check.size, stream.total)
            check.finish(step="backup")
            if check.size != stream.total:
                raise BackupCorrupt(
                    f"snapshot has {check.size} bytes, etcd announced {stream.total}",
                    step="backup",
                    node=stream.endpoint,
                )
            writer.close()
        except BrokenPipeError:
            if encryptor:  # the encrypting thread failed first: report its error
                encryptor.close()
            raise
        if encryptor:
            encryptor.close()
        if self.on_progress:
            self.on_progress(check.size, stream.total)


def _certify(access: etcd.EtcdAccess, endpoint: str, low: int, high: int) -> Future:
    """Compute the restorability certificate (HashKV, key count) of revisions low..high in a thread of its own."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="certify")
    try:
        return pool.submit(source_certificate, access, endpoint, low, high)
    finally:
        pool.shutdown(wait=False)


def _certificate(certifying: Future, endpoint: str) -> Certificate | None:
    """The certificate, or None (with a warning) when the member could not give it: the backup stays good."""
    try:
        return certifying.result()
    except EtcdUnavailable as exc:
        log.warning("%s: no restorability certificate for this backup: %s", endpoint, exc)
        return None


def _member_name(access: etcd.EtcdAccess, member_id: int) -> str:
    try:
        for m in etcd.members(access):
            if m.id == member_id:
                return m.name
    except EtcdUnavailable:
        pass
    return f"{member_id:x}"


def _forget(storage: Storage, key: str) -> None:
    """Best effort: remove a backup object that must not stay."""
    try:
        storage.delete([key])
    except Exception:  # noqa: BLE001 - the original error matters more
        pass


@dataclass(frozen=True)
class VerifyResult:
    """A backup read back end to end: stored and raw sizes and digests checked, with its manifest (None: legacy)."""

    key: str
    size: int
    sha256: str
    raw_size: int
    raw_sha256: str
    manifest: Manifest | None = field(default=None, repr=False)

    @property
    def legacy(self) -> bool:
        """True for an object without a manifest (the old plugin's *.db.tar.gz, a plain .db)."""
        return self.manifest is None

    @property
    def revision(self) -> int | None:
        """The revision the manifest records, if there is one."""
        return self.manifest.revision if self.manifest else None

    @property
    def key_count(self) -> int | None:
        """The key count the manifest records, if there is one."""
        return self.manifest.key_count if self.manifest else None

    @property
    def etcd_version(self) -> str | None:
        """The etcd version of the source member, if the manifest says."""
        return self.manifest.etcd_version if self.manifest else None


def verify(storage: Storage, key_or_backup: str | Backup, identities: Iterable[str | bytes] = ()) -> VerifyResult:
    """Stream a backup back; check stored size/sha256 against its manifest, decode it, check raw sha256 and trailer."""
    return _read_back(storage, _key_of(key_or_backup), list(identities), sink=None)


def fetch_snapshot(
    storage: Storage, backup: str | Backup, dest_path: str | Path, identities: Iterable[str | bytes] = ()
) -> VerifyResult:
    """Write the verified raw snapshot to dest_path (via dest_path.tmp, renamed only when every check passed)."""
    dest = Path(dest_path)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with open(tmp, "wb") as sink:
            result = _read_back(storage, _key_of(backup), list(identities), sink=sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _key_of(key_or_backup: str | Backup) -> str:
    return key_or_backup.key if isinstance(key_or_backup, Backup) else key_or_backup


def _read_back(storage: Storage, key: str, identities: list, sink: BinaryIO | None) -> VerifyResult:
    parsed = parse_key(key)
    try:
        manifest = read_manifest(storage, key)
    except NotFound:
        manifest = None
    if manifest is not None:
        compression, encrypted = manifest.compression, bool(manifest.encryption)
    elif parsed is not None:
        compression, encrypted = parsed.compression, parsed.encrypted
    else:
        raise BackupCorrupt("not a backup name and no manifest", step="verify", node=key)
    ids = parse_identities(identities) if encrypted else []
    if encrypted and not ids:
        raise ConfigError(f"{key} is encrypted; give an age identity to read it", step="verify")
    check = SnapshotCheck(key)
    with storage.open(key) as source:
        stored = HashingReader(source)
        inner = decrypting_reader(stored, ids) if encrypted else stored
        try:
            raw = decompressor(compression, inner)
            while chunk := raw.read(1 << 20):
                check.update(chunk)
                if sink is not None:
                    sink.write(chunk)
            while inner.read(1 << 20):  # the rest (tar padding, age end), so digests cover everything
                pass
        except DECODE_ERRORS + DECRYPT_ERRORS as exc:
            raise BackupCorrupt(f"cannot decode: {exc.__class__.__name__}: {exc}", step="verify", node=key) from None
        finally:
            if isinstance(inner, Pipe):
                inner.stop_reading()  # lets the decrypting thread end if we stopped early
    _compare(key, manifest, stored, check)
    return VerifyResult(key=key, **_digests(stored, check), manifest=manifest)


def _digests(stored: HashingReader, check: SnapshotCheck) -> dict:
    """Sizes and sha256 of the stored object and of the raw snapshot, as both records name them."""
    return {"size": stored.size, "sha256": stored.sha256, "raw_size": check.size, "raw_sha256": check.sha256}


def _compare(key: str, manifest: Manifest | None, stored: HashingReader, check: SnapshotCheck) -> None:
    if manifest is not None:
        if (stored.size, stored.sha256) != (manifest.size, manifest.sha256):
            raise BackupCorrupt("stored object differs from its manifest (size or sha256)", step="verify", node=key)
        if (check.size, check.sha256) != (manifest.raw_size, manifest.raw_sha256):
            raise BackupCorrupt("decoded snapshot differs from its manifest (size or sha256)", step="verify", node=key)
    check.finish(step="verify")
