"""Object names <-> backups, the manifest written last, and listing a cluster's backups."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from etcd_backup.certificate import Certificate
from etcd_backup.compression import Compression, unknown
from etcd_backup.errors import ConfigError, NotFound
from etcd_backup.storage.base import Storage
from etcd_backup.verify import VerifyReport

MANIFEST_SUFFIX = ".manifest.json"
VERIFIED_SUFFIX = ".verified.json"
MANIFEST_FORMAT = 1
TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"
LONGEST_BACKUP = timedelta(hours=6)  # the snapshot task's timeout: no backup attempt writes for longer
EXTENSIONS: dict[str, str] = {"tar.gz": ".db.tar.gz", "zstd": ".db.zst", "gzip": ".db.gz", "none": ".db"}

_NAME = re.compile(
    r"^(?P<cluster>.+?)-backup-etcd-(?P<version>\d+\.\d+\.\d+[0-9A-Za-z.+-]*?)"
    r"-(?P<time>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})"
    r"\.db(?P<ext>\.tar\.gz|\.zst|\.gz)?(?P<age>\.age)?$"
)
_COMPRESSION_BY_EXT: dict[str | None, Compression] = {".tar.gz": "tar.gz", ".zst": "zstd", ".gz": "gzip", None: "none"}


def current_tool_version() -> str:
    """This tool's version as installed, for manifests."""
    try:
        return version("etcd-backup")
    except PackageNotFoundError:
        return "0.1.0"


@dataclass(frozen=True)
class ParsedName:
    """What an object name says: cluster, etcd version, UTC time, compression, encryption."""

    prefix: str
    cluster_id: str
    etcd_version: str
    time: datetime
    compression: Compression
    encrypted: bool


def format_key(
    cluster_id: str,
    etcd_version: str,
    when: datetime,
    compression: str = "tar.gz",
    encrypted: bool = False,
    prefix: str = "",
) -> str:
    """The object key for a backup, in the runbook's naming (e.g. uk8s-x-backup-etcd-3.3.17-...db.tar.gz)."""
    if compression not in EXTENSIONS:
        raise unknown(compression)
    if not cluster_id or "/" in cluster_id:
        raise ConfigError(f"cluster id {cluster_id!r} must be non-empty and contain no '/'")
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    name = f"{cluster_id}-backup-etcd-{etcd_version}-{when.strftime(TIME_FORMAT)}{EXTENSIONS[compression]}"
    if encrypted:
        name += ".age"
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def parse_key(key: str) -> ParsedName | None:
    """Parse a key made by format_key (or by the old UK8S plugin); None for foreign objects."""
    prefix, _, name = key.rpartition("/")
    match = _NAME.match(name)
    if not match:
        return None
    try:
        when = datetime.strptime(match["time"], TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return ParsedName(
        prefix=prefix,
        cluster_id=match["cluster"],
        etcd_version=match["version"],
        time=when,
        compression=_COMPRESSION_BY_EXT[match["ext"]],
        encrypted=bool(match["age"]),
    )


class Manifest(BaseModel):
    """The JSON record written after a backup's object; its presence makes the backup complete."""

    format: int = MANIFEST_FORMAT
    tool_version: str = current_tool_version()
    cluster: str
    key: str
    size: int
    sha256: str
    raw_size: int
    raw_sha256: str
    # revision and key_count: a serializable count on the source member right after the snapshot's first
    # chunk arrived (its read transaction is open then); revision_exact: a count just before the snapshot
    # request saw the same revision, so the snapshot holds exactly this revision.
    revision: int
    revision_exact: bool
    # revision_low: a count just before the snapshot request: the snapshot holds a revision in [revision_low, revision]
    # (None in manifests written before it was recorded); etcd_cluster_id: etcd's own cluster id (hex), which a
    # whole-cluster restore changes, so segments followed after a restore never mix with older ones
    revision_low: int | None = None
    etcd_cluster_id: str = ""
    key_count: int
    etcd_version: str
    source_member: str
    source_endpoint: str
    created: datetime
    compression: Compression
    encryption: str | None = None
    recipients: list[str] = []
    # what the source held at the snapshot's revision (etcd's HashKV, key count): None when it could not be read
    certificate: Certificate | None = None

    def to_json(self) -> bytes:
        """Serialise for storage."""
        return self.model_dump_json(indent=2).encode()


class Verification(BaseModel):
    """The result of restoring a backup into a scratch etcd, stored as `<name>.verified.json` next to its manifest."""

    key: str
    verified_at: datetime
    report: VerifyReport

    @property
    def ok(self) -> bool:
        """True when the backup restored and matched its certificate."""
        return self.report.ok


class BackupRecord(Manifest):
    """What one backup run stored: its manifest plus what the run adds (duration, compression ratio)."""

    duration_seconds: float
    ratio: float

    @property
    def manifest_key(self) -> str:
        """Where the manifest of this backup lives."""
        return manifest_key(self.key)

    @property
    def encrypted(self) -> bool:
        """True when the object is age-encrypted."""
        return bool(self.encryption)

    def __getitem__(self, field: str) -> Any:
        """record["key"] as well as record.key, for callers that read the run's result as a mapping."""
        return getattr(self, field)


def manifest_key(key: str) -> str:
    """The key of the manifest that belongs to a backup object."""
    return key + MANIFEST_SUFFIX


def verified_key(key: str) -> str:
    """The key of the verification record that belongs to a backup object."""
    return key + VERIFIED_SUFFIX


def write_verification(storage: Storage, key: str, report: VerifyReport, when: datetime | None = None) -> Verification:
    """Store the result of verifying backup key next to its manifest."""
    record = Verification(key=key, verified_at=when or datetime.now(UTC), report=report)
    storage.put(verified_key(key), io.BytesIO(record.model_dump_json(indent=2).encode()))
    return record


def read_verification(storage: Storage, key: str) -> Verification | None:
    """The last verification of backup key, or None when it was never verified (or the record is unreadable)."""
    try:
        with storage.open(verified_key(key)) as f:
            record = Verification.model_validate_json(f.read(1 << 20))
    except (NotFound, ValidationError, ValueError):
        return None
    return record if record.key == key else None


def read_manifest(storage: Storage, key: str) -> Manifest:
    """Read and validate the manifest of backup key; NotFound when it is missing."""
    return read_described(storage, key, Manifest, lambda text: ConfigError(text, step="read manifest"))


M = TypeVar("M", bound=BaseModel)


def read_described(storage: Storage, key: str, model: type[M], fail: Callable[[str], Exception]) -> M:
    """Read the JSON manifest of key as model; fail(message) when unreadable or about another object."""
    with storage.open(manifest_key(key)) as f:
        data = f.read(1 << 20)
    try:
        manifest = model.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        raise fail(f"manifest {manifest_key(key)} is not valid: {exc.__class__.__name__}") from None
    if getattr(manifest, "key", None) != key:
        raise fail(f"manifest {manifest_key(key)} describes {getattr(manifest, 'key', None)}")
    return manifest


@dataclass(frozen=True)
class Backup:
    """One backup object of a cluster as found in storage."""

    key: str
    cluster_id: str
    time: datetime
    size: int
    compression: Compression
    encrypted: bool
    complete: bool
    legacy: bool
    manifest: Manifest | None = None
    manifest_stored: bool = False  # a manifest object exists, valid or not
    verification: Verification | None = None
    problem: str | None = None  # why a backup that has a manifest fails it (None: fine, or no manifest at all)

    @property
    def manifest_key(self) -> str:
        """Where this backup's manifest lives (or would live)."""
        return manifest_key(self.key)


def list_backups(storage: Storage, cluster_id: str, prefix: str = "") -> list[Backup]:
    """The backups of cluster_id under prefix, oldest first; foreign objects are skipped."""
    prefix = prefix.strip("/")
    names = (f"{prefix}/" if prefix else "") + f"{cluster_id}-backup-etcd-"  # not other clusters', not segments
    objects = {o.key: o for o in storage.list(names)}
    backups = []
    for key, info in objects.items():
        parsed = parse_key(key)
        if parsed is None or parsed.cluster_id != cluster_id or parsed.prefix != prefix:
            continue
        manifest, problem = None, None
        if manifest_key(key) in objects:
            try:
                manifest = read_manifest(storage, key)
            except (ConfigError, NotFound) as exc:
                problem = f"its manifest cannot be read ({exc.message})"
        if manifest is not None and manifest.size != info.size:
            problem = f"its size {info.size} differs from the {manifest.size} bytes its manifest records"
        legacy = manifest is None and problem is None and parsed.compression == "tar.gz" and not parsed.encrypted
        backups.append(
            Backup(
                key=key,
                cluster_id=cluster_id,
                time=parsed.time,
                size=info.size,
                compression=parsed.compression,
                encrypted=parsed.encrypted,
                complete=manifest is not None and problem is None,
                legacy=legacy,
                manifest=manifest,
                manifest_stored=manifest_key(key) in objects,
                verification=read_verification(storage, key) if verified_key(key) in objects else None,
                problem=problem,
            )
        )
    return sorted(backups, key=lambda b: (b.time, b.key))
