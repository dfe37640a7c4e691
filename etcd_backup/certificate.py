"""The restorability certificate: etcd's own HashKV and the key count at a snapshot's revision, and comparing two.

HashKV(R) is etcd's corruption-check hash: crc32c over the MVCC key bucket up to revision R, from the compaction
in force on. It was checked equal on a source member and on a single member restored from its snapshot (3.5.1 and
3.4.23, 3.4 snapshots restored by 3.5.1 too; with updates, deletes, transactions, expired leases, compactions and
defrag in the history). It depends on the compaction revision, so a source compacted after the snapshot hashes
differently: the restored copy is then compacted to the same revision before hashing (it is thrown away anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
from pydantic import BaseModel
from pyetcd import etcdrpc

from etcd_backup import etcd
from etcd_backup.errors import EtcdUnavailable

T = TypeVar("T")
HASH_KIND = "etcd-hashkv"  # etcd's HashKV (crc32c of the MVCC key bucket up to the revision)
MAX_WINDOW = 32  # revisions hashed at most when writes raced the snapshot (one HashKV: ~0.25 s per GB of db)
KUBERNETES_ROOT = "/registry/"
KUBERNETES_PREFIXES = ("/registry/namespaces/",)
HASH_TIMEOUT = 300.0  # seconds HashKV may take on a large database


class Point(BaseModel):
    """HashKV and key count at one revision, with the compaction revision in force when the hash was taken."""

    revision: int
    key_count: int
    hash: int
    compact_revision: int  # -1: never compacted


class Certificate(BaseModel):
    """What a snapshot holds: HashKV and key count at its revision, or at each revision racing writes may have left.

    The top-level fields are the point at `revision` (the highest revision the snapshot may hold); `window` has the
    points of the lower revisions down to `revision_low` when writes raced the snapshot (empty when exact), and
    `window_complete` is false when the window was too wide (or compacted) to hash every revision of it.
    """

    format: int = 1
    hash_kind: str = HASH_KIND
    revision: int
    revision_low: int
    key_count: int
    hash: int
    compact_revision: int
    window: list[Point] = []
    window_complete: bool = True
    etcd_version: str
    member: str

    @property
    def exact(self) -> bool:
        """True when the snapshot's revision is known exactly."""
        return self.revision_low == self.revision

    def points(self) -> list[Point]:
        """Every recorded point, highest revision first."""
        top = Point(
            revision=self.revision, key_count=self.key_count, hash=self.hash, compact_revision=self.compact_revision
        )
        return [top, *self.window]

    def point(self, revision: int) -> Point | None:
        """The recorded point at revision, if any."""
        return next((p for p in self.points() if p.revision == revision), None)


def source_certificate(
    access: etcd.EtcdAccess, endpoint: str, revision_low: int, revision_high: int, max_window: int = MAX_WINDOW
) -> Certificate:
    """Certificate of a snapshot taken from endpoint whose revision lies in [revision_low, revision_high].

    Call it right after the snapshot started (revisions as counted just before the snapshot request and right
    after its first chunk): HashKV needs revisions the member has not compacted yet.
    """
    if not 0 < revision_low <= revision_high:
        raise ValueError(f"bad revision window [{revision_low}, {revision_high}]")
    with etcd.channel(access, endpoint) as chan:
        version = _rpc(endpoint, "certificate", lambda: _member_version(chan, access.timeout))
        top = _point(chan, endpoint, revision_high)
        if top is None:
            message = f"revision {revision_high} was compacted before its hash could be taken"
            raise EtcdUnavailable(message, step="certificate", node=endpoint)
        window: list[Point] = []
        complete = revision_high - revision_low < max_window
        for revision in range(revision_high - 1, revision_low - 1, -1) if complete else ():
            found = _point(chan, endpoint, revision)
            if found is None:  # compacted meanwhile: lower revisions are too
                complete = False
                break
            window.append(found)
    return Certificate(
        revision=top.revision,
        revision_low=revision_low,
        key_count=top.key_count,
        hash=top.hash,
        compact_revision=top.compact_revision,
        window=window,
        window_complete=complete,
        etcd_version=version,
        member=endpoint,
    )


def restored_certificate(
    access: etcd.EtcdAccess, endpoint: str, revision: int, compact_revision: int | None = None
) -> Certificate:
    """Certificate of a restored copy at its snapshot's revision (reads at that revision: later lease expiries do not
    count); first compacts the copy to compact_revision when the source's hash was taken after that compaction."""
    with etcd.channel(access, endpoint) as chan:
        version = _rpc(endpoint, "certificate", lambda: _member_version(chan, access.timeout))
        if compact_revision is not None and 0 < compact_revision < revision:
            _compact(chan, endpoint, compact_revision, access.timeout)
        found = _point(chan, endpoint, revision)
    if found is None:
        message = f"revision {revision} is compacted on the restored copy"
        raise EtcdUnavailable(message, step="certificate", node=endpoint)
    return Certificate(
        revision=found.revision,
        revision_low=found.revision,
        key_count=found.key_count,
        hash=found.hash,
        compact_revision=found.compact_revision,
        etcd_version=version,
        member=endpoint,
    )


def compare(expected: Certificate, found: Certificate) -> list[str]:
    """The differences between what the source held and what a restored copy holds, in words; empty when equal."""
    if expected.hash_kind != found.hash_kind:
        return [f"hash kinds differ (source {expected.hash_kind}, restored {found.hash_kind}): cannot compare"]
    if not expected.revision_low <= found.revision <= expected.revision:
        held = (
            f"revision {expected.revision}"
            if expected.exact
            else f"a revision from {expected.revision_low} to {expected.revision}"
        )
        return [f"the restored snapshot is at revision {found.revision}, but the source's snapshot was at {held}"]
    point = expected.point(found.revision)
    if point is None:
        return [
            f"no source hash was recorded for revision {found.revision}, the revision the snapshot holds: writes "
            f"raced the snapshot and only {len(expected.points())} of the revisions {expected.revision_low}.."
            f"{expected.revision} were hashed; compare with a live source_certificate at that revision instead"
        ]
    return _differences(point, found)


def _differences(point: Point, found: Certificate) -> list[str]:
    at = f"at revision {point.revision}"
    differences = []
    if found.compact_revision != point.compact_revision:
        differences.append(
            f"compaction differs {at}: the source's hash was taken compacted at {point.compact_revision}, "
            f"the restored copy is compacted at {found.compact_revision}; the hashes are not comparable"
        )
    if found.key_count != point.key_count:
        differences.append(f"key count {at}: source {point.key_count}, restored {found.key_count}")
    if found.hash != point.hash:
        differences.append(
            f"etcd HashKV {at}: source {point.hash:#010x}, restored {found.hash:#010x} "
            "(the keys, values or history differ)"
        )
    return differences


def kubernetes_prefixes(access: etcd.EtcdAccess, endpoint: str, revision: int) -> list[str]:
    """The prefixes to require by default: /registry/namespaces/ when the data has keys under /registry/, else none."""
    with etcd.channel(access, endpoint) as chan:
        found = _count_prefix(chan, endpoint, KUBERNETES_ROOT, revision, access.timeout)
    return list(KUBERNETES_PREFIXES) if found else []


def check_prefixes(
    access: etcd.EtcdAccess, endpoint: str, revision: int, prefixes: Iterable[str] | None = None
) -> list[str]:
    """Differences for each prefix with no key at revision (prefixes None: the Kubernetes default when it applies)."""
    wanted = kubernetes_prefixes(access, endpoint, revision) if prefixes is None else list(prefixes)
    missing = []
    with etcd.channel(access, endpoint) as chan:
        for prefix in wanted:
            if not _count_prefix(chan, endpoint, prefix, revision, access.timeout):
                missing.append(f"no key under {prefix!r} at revision {revision}")
    return missing


def _member_version(chan: grpc.Channel, timeout: float) -> str:
    return etcdrpc.MaintenanceStub(chan).Status(etcdrpc.StatusRequest(), timeout=timeout).version


def _point(chan: grpc.Channel, endpoint: str, revision: int) -> Point | None:
    """HashKV and key count at revision; None when the revision is compacted.

    HashKV refuses the compaction revision itself, which is also the current one after `compact <current>`
    (a restored copy then serves the compaction revision even when its last keys, deleted, went with the
    compaction): HashKV(0), the current revision, covers that case.
    """
    maintenance = etcdrpc.MaintenanceStub(chan)
    try:
        try:
            hashed = maintenance.HashKV(etcdrpc.HashKVRequest(revision=revision), timeout=HASH_TIMEOUT)
        except grpc.RpcError as exc:
            if not _compacted(exc):
                raise
            hashed = maintenance.HashKV(etcdrpc.HashKVRequest(revision=0), timeout=HASH_TIMEOUT)
            if not revision <= hashed.compact_revision == hashed.header.revision:
                return None
            revision = hashed.compact_revision
        count = etcdrpc.KVStub(chan).Range(
            etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True, serializable=True, revision=revision),
            timeout=HASH_TIMEOUT,
        )
    except grpc.RpcError as exc:
        if _compacted(exc):
            return None
        raise _unavailable(exc, f"hash revision {revision}", endpoint) from None
    return Point(revision=revision, key_count=count.count, hash=hashed.hash, compact_revision=hashed.compact_revision)


def _compact(chan: grpc.Channel, endpoint: str, revision: int, timeout: float) -> None:
    request = etcdrpc.CompactionRequest(revision=revision, physical=True)
    try:
        etcdrpc.KVStub(chan).Compact(request, timeout=max(timeout, HASH_TIMEOUT))
    except grpc.RpcError as exc:
        if not _compacted(exc):  # already compacted there or beyond: compare() reports a difference if it matters
            raise _unavailable(exc, f"compact to {revision}", endpoint) from None


def _count_prefix(chan: grpc.Channel, endpoint: str, prefix: str, revision: int, timeout: float) -> int:
    key = prefix.encode()
    request = etcdrpc.RangeRequest(
        key=key, range_end=_prefix_end(key), count_only=True, serializable=True, revision=revision
    )
    return _rpc(endpoint, f"count {prefix}", lambda: etcdrpc.KVStub(chan).Range(request, timeout=timeout).count)


def _prefix_end(key: bytes) -> bytes:
    """The range end that covers every key starting with key (etcd's prefix rule)."""
    end = bytearray(key)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _rpc(endpoint: str, step: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except grpc.RpcError as exc:
        raise _unavailable(exc, step, endpoint) from None


def _compacted(exc: grpc.RpcError) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    return code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (exc.details() or "")


def _unavailable(exc: grpc.RpcError, step: str, endpoint: str) -> EtcdUnavailable:
    code = exc.code().name if hasattr(exc, "code") and exc.code() else "ERROR"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return EtcdUnavailable(f"{code}: {details}", step=step, node=endpoint)
