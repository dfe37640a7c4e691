"""Replay segments into an etcd restored from the full snapshot, so it reaches the source's exact revision.

Each source revision becomes one transaction on the target, in order; the target must sit at
`base_revision` (the snapshot's own revision) and nothing else may write to it, so after every
transaction its revision must equal the source revision replayed: anything else stops the replay.
Each segment is read whole (at most segment_mb of records), checked (stored and raw size and sha256
against its manifest, revisions consecutive and matching the manifest) before any of its revisions is
applied; the next segment is fetched while the current one is applied.

Leases: a PUT that carried lease L in the source is written with lease L in the target. Leases that
exist in the snapshot are reused; a lease granted after the snapshot is granted again in the target
with the same id and `lease_ttl` seconds (the watch shows lease ids, never TTLs; the default is an
hour, Kubernetes' event TTL, the main user of leases). Why not without leases: Kubernetes events would
then never expire and pile up in the restored cluster. Why not the source's remaining time: nobody
recorded it. While replaying, every lease is kept alive, so that none expires in the target and deletes
keys at a revision the source never had; the source's own expirations are DELETE events and are
replayed at their exact revisions. After the whole-cluster restore every lease runs its full TTL again
from the start of the restored cluster, as after any snapshot restore.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import grpc
from pyetcd import etcdrpc

from etcd_backup import etcd
from etcd_backup.continuous import records
from etcd_backup.continuous.chain import Segment, chain_for
from etcd_backup.continuous.errors import ReplayMismatch, SegmentCorrupt
from etcd_backup.continuous.leases import LeaseKeeper, leases_in_use
from etcd_backup.continuous.manifest import SegmentManifest, read_segment_manifest
from etcd_backup.continuous.names import lineage_of
from etcd_backup.continuous.segment import load_segment
from etcd_backup.continuous.timeline import from_ns
from etcd_backup.continuous.txn import operations
from etcd_backup.encryption import parse_identities
from etcd_backup.errors import ConfigError, EtcdUnavailable, NotFound
from etcd_backup.storage.base import Storage

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did: from which revision to which, how much, with which segments and leases."""

    base_revision: int
    revision: int
    revisions_applied: int
    events_applied: int
    segments: list[str]
    leases_granted: int
    leases_kept: int
    seconds: float
    received: datetime | None = None  # when the follower received the target revision (None: no segment replayed)


def replay(
    target: etcd.EtcdAccess,
    storage: Storage,
    segments: Sequence[Segment],
    *,
    base_revision: int,
    to_revision: int,
    identities: Iterable[str | bytes] = (),
    lease_ttl: int = 3600,
    max_txn_ops: int = 128,
    on_progress: Progress | None = None,
    keeper: LeaseKeeper | None = None,
) -> ReplayResult:
    """Apply the segments' revisions base_revision+1..to_revision to target, one transaction per revision.

    Pass a LeaseKeeper to keep the target's leases alive after replay (e.g. until it is snapshotted): the
    caller then closes it; without one, leases are kept alive only while replay runs.
    """
    started = time.monotonic()
    chosen, ids = _prepare(segments, base_revision, to_revision, identities)
    endpoint = target.endpoints[0]
    _expect_revision(target, endpoint, base_revision)
    owned = keeper is None
    keeper = keeper or LeaseKeeper(target, endpoint)
    loader = _Loader(storage, chosen, ids)
    applier = _Applier(target, endpoint, keeper, base_revision, lease_ttl, max_txn_ops)
    try:
        for lease_id in leases_in_use(target, endpoint):
            keeper.adopt(lease_id)
        for manifest, revisions in loader:
            applier.apply_segment(manifest, revisions, to_revision, on_progress)
            if applier.revision >= to_revision:
                break
    finally:
        loader.close()
        if owned:
            keeper.close()
        applier.close()
    if applier.revision != to_revision:
        raise SegmentCorrupt(f"segments end at revision {applier.revision}, before {to_revision}", step="replay")
    _expect_revision(target, endpoint, to_revision)
    return ReplayResult(
        base_revision=base_revision,
        revision=applier.revision,
        revisions_applied=applier.revision - base_revision,
        events_applied=applier.events,
        segments=[s.key for s in chosen],
        leases_granted=keeper.granted,
        leases_kept=keeper.kept,
        seconds=round(time.monotonic() - started, 3),
        received=from_ns(applier.received_ns) if applier.received_ns else None,
    )


def verify_segments(
    storage: Storage,
    segments: Sequence[Segment],
    *,
    base_revision: int,
    to_revision: int,
    identities: Iterable[str | bytes] = (),
) -> list[SegmentManifest]:
    """Read and check every segment replay would use (as replay does), applying nothing: for a dry run."""
    chosen, ids = _prepare(segments, base_revision, to_revision, identities)
    loader = _Loader(storage, chosen, ids)
    try:
        return [manifest for manifest, _ in loader]
    finally:
        loader.close()


def _prepare(
    segments: Sequence[Segment], base_revision: int, to_revision: int, identities: Iterable[str | bytes]
) -> tuple[list[Segment], list]:
    """The segments that carry base_revision+1..to_revision in order, and the parsed identities they need."""
    if to_revision < base_revision:
        raise ConfigError(f"target revision {to_revision} is before the snapshot's {base_revision}", step="replay")
    chosen = chain_for(sorted(segments, key=lambda s: (s.first_revision, s.last_revision)), base_revision, to_revision)
    encrypted = any(s.encrypted for s in chosen)
    ids = parse_identities(identities) if encrypted else []
    if encrypted and not ids:
        raise ConfigError("the segments are encrypted; give an age identity to read them", step="replay")
    return chosen, ids


def current_revision(access: etcd.EtcdAccess, endpoint: str) -> int:
    """The target's revision now (a linearizable count-only range)."""
    request = etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)
    try:
        with etcd.channel(access, endpoint) as chan:
            return etcdrpc.KVStub(chan).Range(request, timeout=access.timeout).header.revision
    except grpc.RpcError as exc:
        raise EtcdUnavailable(f"{exc.code().name}: {exc.details()}", step="replay", node=endpoint) from None


def _expect_revision(access: etcd.EtcdAccess, endpoint: str, revision: int) -> None:
    found = current_revision(access, endpoint)
    if found != revision:
        raise ReplayMismatch(f"target is at revision {found}, expected {revision}", step="replay", node=endpoint)


def check_segment(manifest: SegmentManifest, raw: bytes) -> list[records.Revision]:
    """Decode a verified segment and check its revisions are consecutive and match its manifest."""
    revisions = list(records.decode(raw, manifest.key))
    numbers = [r.revision for r in revisions]
    expected = list(range(manifest.first_revision, manifest.last_revision + 1))
    if numbers != expected:
        raise SegmentCorrupt(
            f"holds revisions {numbers[:1]}..{numbers[-1:]} ({len(numbers)}), manifest says "
            f"{manifest.first_revision}..{manifest.last_revision} consecutive",
            step="read segment",
            node=manifest.key,
        )
    if sum(len(r.events) for r in revisions) != manifest.event_count:
        raise SegmentCorrupt("event count differs from its manifest", step="read segment", node=manifest.key)
    return revisions


class _Loader:
    """Fetch, verify and decode the chosen segments in order on a thread, one segment ahead."""

    def __init__(self, storage: Storage, segments: Sequence[Segment], identities: list):
        self.storage, self.segments, self.identities = storage, segments, identities
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segment-loader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for segment in self.segments:
            try:
                manifest = read_segment_manifest(self.storage, segment.key)
                if lineage_of(manifest.etcd_cluster_id) != segment.lineage:
                    raise SegmentCorrupt(
                        f"its manifest names etcd cluster {manifest.etcd_cluster_id}, its name {segment.lineage}",
                        step="read segment",
                        node=segment.key,
                    )
                raw = load_segment(self.storage, manifest, self.identities)
                item: object = (manifest, check_segment(manifest, raw))
            except NotFound:
                item = SegmentCorrupt("segment or its manifest is missing", step="read segment", node=segment.key)
            except BaseException as exc:  # noqa: BLE001 - handed to the replaying thread
                item = exc
            if not self._put(item) or isinstance(item, BaseException):
                return
        self._put(None)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop fetching."""
        self._stop.set()
        self._thread.join(5)


class _Applier:
    """Apply revisions as transactions and check the target's revision after each."""

    def __init__(self, access, endpoint: str, keeper: LeaseKeeper, base: int, lease_ttl: int, max_ops: int):
        self.access, self.endpoint, self.keeper = access, endpoint, keeper
        self.revision, self.events, self.received_ns = base, 0, 0
        self.lease_ttl, self.max_ops = lease_ttl, max_ops
        self._chan_cm = etcd.channel(access, endpoint)
        self.kv = etcdrpc.KVStub(self._chan_cm.__enter__())

    def close(self) -> None:
        """Close the channel."""
        self._chan_cm.__exit__(None, None, None)

    def apply_segment(self, manifest: SegmentManifest, revisions, to_revision: int, on_progress) -> None:
        """Apply this segment's revisions after the current one, up to to_revision."""
        for record in revisions:
            if record.revision <= self.revision:
                continue
            if record.revision != self.revision + 1:
                raise SegmentCorrupt(
                    f"revision {self.revision + 1} is missing (segment starts at {record.revision})",
                    step="replay",
                    node=manifest.key,
                )
            if record.revision > to_revision:
                return
            self._apply(record, manifest.key)
            if on_progress and record.revision % 1000 == 0:
                on_progress(record.revision, to_revision)

    def _apply(self, record: records.Revision, key: str) -> None:
        events = record.decoded()
        for event in events:
            if event.type == records.PUT and event.kv.lease:
                self.keeper.ensure(event.kv.lease, self.lease_ttl)
        ops = operations(self.kv, events, self.max_ops, self.access.timeout)
        try:
            resp = self.kv.Txn(etcdrpc.TxnRequest(success=ops), timeout=self.access.timeout)
        except grpc.RpcError as exc:
            raise EtcdUnavailable(
                f"revision {record.revision} from {key}: {exc.code().name}: {exc.details()}",
                step="replay",
                node=self.endpoint,
            ) from None
        if resp.header.revision != record.revision:
            raise ReplayMismatch(
                f"after replaying revision {record.revision} from {key} the target is at {resp.header.revision}",
                step="replay",
                node=self.endpoint,
            )
        self.revision, self.received_ns = record.revision, record.received_ns
        self.events += len(events)
