"""One source revision as one etcd transaction: its PUTs and DELETEs, with large deletions folded into ranges."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from pyetcd import etcdrpc

from etcd_backup.continuous import records
from etcd_backup.errors import ConfigError, EtcdUnavailable

PAGE = 10000


def operations(kv: etcdrpc.KVStub, events: Sequence, max_ops: int, timeout: float) -> list[etcdrpc.RequestOp]:
    """The transaction's operations, in event order; above max_ops, deleted keys in a row become one range.

    A source revision may delete thousands of keys (a prefix delete, a lease expiring) but a target
    transaction holds at most --max-txn-ops operations. Deleted keys that are adjacent among the keys
    the target holds (and the keys this revision writes) are deleted by one range operation instead.
    """
    ops = [_op(event) for event in events]
    if len(ops) <= max_ops:
        return ops
    puts = [e for e in events if e.type == records.PUT]
    deleted = sorted({e.kv.key for e in events if e.type == records.DELETE})
    ops = [_op(e) for e in puts] + [
        etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=first, range_end=last + b"\0"))
        for first, last in _runs(deleted, _keys_between(kv, deleted[0], deleted[-1], timeout), {e.kv.key for e in puts})
    ]
    if len(ops) > max_ops:
        raise ConfigError(
            f"revision {events[0].kv.mod_revision} needs {len(ops)} operations in one transaction; "
            f"start the replay etcd with --max-txn-ops >= {len(ops)}",
            step="replay",
        )
    return ops


def _op(event) -> etcdrpc.RequestOp:
    if event.type == records.PUT:
        kv = event.kv
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=kv.key, value=kv.value, lease=kv.lease))
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=event.kv.key))


def _keys_between(kv: etcdrpc.KVStub, first: bytes, last: bytes, timeout: float) -> list[bytes]:
    """Every key the target holds in first..last (inclusive), paged."""
    keys: list[bytes] = []
    start, end = first, last + b"\0"
    while True:
        request = etcdrpc.RangeRequest(key=start, range_end=end, keys_only=True, limit=PAGE)
        try:
            resp = kv.Range(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise EtcdUnavailable(f"{exc.code().name}: {exc.details()}", step="replay") from None
        keys.extend(item.key for item in resp.kvs)
        if not resp.more or not resp.kvs:
            return keys
        start = resp.kvs[-1].key + b"\0"


def _runs(deleted: list[bytes], existing: list[bytes], written: set[bytes]) -> list[tuple[bytes, bytes]]:
    """Maximal runs of deleted keys with no surviving or written key between them, as (first, last)."""
    gone = set(deleted)
    runs: list[tuple[bytes, bytes]] = []
    first = last = None
    for key in sorted(set(existing) | gone | written):
        if key in gone and key not in written:
            first = key if first is None else first
            last = key
            continue
        if first is not None and last is not None:
            runs.append((first, last))
        first = last = None
    if first is not None and last is not None:
        runs.append((first, last))
    return runs
