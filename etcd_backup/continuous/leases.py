"""Leases in the replay target: find the ones its keys carry, grant the source's lease ids, keep all alive.

A lease that expired in the target during replay would delete its keys at a revision the source never
had; the keeper refreshes every lease at a third of its TTL until replay ends, so only the source's own
expirations (replayed as the DELETE events they were) remove keys.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterator

import grpc
from pyetcd import etcdrpc

from etcd_backup import etcd
from etcd_backup.errors import EtcdUnavailable

PAGE = 10000


def leases_in_use(access: etcd.EtcdAccess, endpoint: str) -> set[int]:
    """The lease ids attached to keys in the target (keys only, paged)."""
    found: set[int] = set()
    start = b"\0"
    with etcd.channel(access, endpoint) as chan:
        kv = etcdrpc.KVStub(chan)
        while True:
            request = etcdrpc.RangeRequest(key=start, range_end=b"\0", keys_only=True, limit=PAGE)
            try:
                resp = kv.Range(request, timeout=access.timeout)
            except grpc.RpcError as exc:
                message = f"{exc.code().name}: {exc.details()}"
                raise EtcdUnavailable(message, step="list leases", node=endpoint) from None
            found.update(kv_.lease for kv_ in resp.kvs if kv_.lease)
            if not resp.more or not resp.kvs:
                return found
            start = resp.kvs[-1].key + b"\0"


class LeaseKeeper:
    """Grant leases with given ids and keep every lease it knows alive, on one keep-alive stream."""

    def __init__(self, access: etcd.EtcdAccess, endpoint: str):
        self.access, self.endpoint = access, endpoint
        self._chan_cm = etcd.channel(access, endpoint)
        self._chan = self._chan_cm.__enter__()
        self._lease = etcdrpc.LeaseStub(self._chan)
        self._due: list[tuple[float, int, int]] = []  # (when, lease id, ttl)
        self._known: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost: set[int] = set()  # leases etcd no longer knew when refreshed
        self.granted = 0
        self._call = self._lease.LeaseKeepAlive(self._requests())
        self._reader = threading.Thread(target=self._read, name="lease-keeper", daemon=True)
        self._reader.start()

    def adopt(self, lease_id: int) -> None:
        """Keep an existing lease of the target alive (its TTL asked of etcd)."""
        if lease_id in self._known:
            return
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = self._unary(self._lease.LeaseTimeToLive, request, "lease time-to-live")
        if resp.TTL > 0:
            self._schedule(lease_id, resp.grantedTTL or resp.TTL, resp.TTL)

    def ensure(self, lease_id: int, ttl: int) -> None:
        """Make lease_id exist in the target (granted with ttl seconds unless it exists) and keep it alive."""
        if lease_id in self._known:
            return
        resp = self._unary(self._lease.LeaseGrant, etcdrpc.LeaseGrantRequest(ID=lease_id, TTL=ttl), "lease grant")
        if resp.error:
            self.adopt(lease_id)
            if lease_id in self._known:
                return
            message = f"cannot grant lease {lease_id:x}: {resp.error}"
            raise EtcdUnavailable(message, step="lease grant", node=self.endpoint)
        self.granted += 1
        self._schedule(lease_id, resp.TTL, resp.TTL)

    @property
    def kept(self) -> int:
        """How many leases are kept alive."""
        return len(self._known)

    def close(self) -> None:
        """Stop refreshing and close the stream."""
        self._stop.set()
        self._call.cancel()
        self._reader.join(5)
        self._chan_cm.__exit__(None, None, None)

    def _unary(self, method, request, step: str):
        try:
            return method(request, timeout=self.access.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "exists" in (exc.details() or ""):
                return etcdrpc.LeaseGrantResponse(error=exc.details())
            raise EtcdUnavailable(f"{exc.code().name}: {exc.details()}", step=step, node=self.endpoint) from None

    def _schedule(self, lease_id: int, ttl: int, remaining: int) -> None:
        with self._lock:
            self._known.add(lease_id)
            heapq.heappush(self._due, (time.monotonic() + max(remaining, 1) / 3, lease_id, max(ttl, 1)))

    def _requests(self) -> Iterator[etcdrpc.LeaseKeepAliveRequest]:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            due = []
            with self._lock:
                while self._due and self._due[0][0] <= now:
                    _, lease_id, ttl = heapq.heappop(self._due)
                    heapq.heappush(self._due, (now + ttl / 3, lease_id, ttl))
                    due.append(lease_id)
            for lease_id in due:
                yield etcdrpc.LeaseKeepAliveRequest(ID=lease_id)

    def _read(self) -> None:
        try:
            for resp in self._call:
                if resp.TTL <= 0:
                    self.lost.add(resp.ID)
        except grpc.RpcError:
            pass
