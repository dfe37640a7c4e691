"""Helpers of the continuous backup tests: a write load that records what etcd acknowledged, and key digests."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from pyetcd import etcdrpc

from etcd_backup import etcd
from etcd_backup.continuous.runner import ContinuousBackup
from etcd_backup.storage.local import LocalStorage


def access_of(cluster, timeout: float = 5.0) -> etcd.EtcdAccess:
    """EtcdAccess with the fleet's TLS material for every member of a test cluster."""
    return etcd.EtcdAccess(
        tuple(cluster.endpoints),
        ca=cluster.ca.read_text(),
        cert=cluster.cert.read_text(),
        key=cluster.key.read_text(),
        timeout=timeout,
    )


def digest(access: etcd.EtcdAccess, endpoint: str, revision: int = 0) -> tuple[str, int]:
    """sha256 over every key, value, create/mod revision, version and lease at revision (0: now), and the count."""
    h = hashlib.sha256()
    count, start = 0, b"\0"
    with etcd.channel(access, endpoint) as chan:
        kv = etcdrpc.KVStub(chan)
        while True:
            request = etcdrpc.RangeRequest(key=start, range_end=b"\0", revision=revision, limit=500)
            resp = kv.Range(request, timeout=30)
            for item in resp.kvs:
                for part in (item.key, item.value):
                    h.update(len(part).to_bytes(8, "big") + part)
                h.update(b"%d/%d/%d/%d;" % (item.create_revision, item.mod_revision, item.version, item.lease))
                count += 1
            if not resp.more or not resp.kvs:
                return h.hexdigest(), count
            start = resp.kvs[-1].key + b"\0"


def revision_now(access: etcd.EtcdAccess, endpoint: str) -> int:
    """The revision a member reports now."""
    with etcd.channel(access, endpoint) as chan:
        request = etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)
        return etcdrpc.KVStub(chan).Range(request, timeout=10).header.revision


_RUNNING: list[WriteLoad] = []  # loads not stopped yet (a failed test must not leave one writing to the next cluster)


@pytest.fixture(autouse=True)
def stop_write_loads():
    """After each test (also a failed one): stop every write load it started, before the next test's cluster."""
    yield
    for load in list(_RUNNING):
        load.stop()


@dataclass
class WriteLoad:
    """A steady mixed write load on a thread: puts, updates of the same keys, deletes, multi-key transactions,
    keys on short leases that expire, and now and then a prefix delete of 200 keys in one revision."""

    access: etcd.EtcdAccess
    rate: float = 200.0  # operations per second, about
    lease_ttl: int = 5
    seed: int = 0
    acked: list[tuple[int, float]] = field(default_factory=list)  # (revision, time.time() when etcd answered)
    errors: int = 0
    prefix_rounds: int = 0  # prefix deletes of 200 keys done
    lease_times: list[float] = field(default_factory=list)  # time.time() of each lease grant
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> WriteLoad:
        self._thread = threading.Thread(target=self._run, name="write-load", daemon=True)
        self._thread.start()
        _RUNNING.append(self)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        if self in _RUNNING:
            _RUNNING.remove(self)

    def avoid(self, endpoint: str) -> None:
        """Stop sending to endpoint (before it is killed)."""
        self._avoid = endpoint

    def _run(self) -> None:
        rnd = random.Random(self.seed)
        self._avoid = ""
        n = 0
        self._namespace()
        while not self._stop.is_set():
            endpoint = next(e for e in self._order(n) if e != self._avoid)
            try:
                with etcd.channel(self.access, endpoint) as chan:
                    kv, lease = etcdrpc.KVStub(chan), etcdrpc.LeaseStub(chan)
                    while not self._stop.is_set() and endpoint != self._avoid:
                        n += 1
                        self._one(rnd, kv, lease, n)
                        time.sleep(1 / self.rate)
            except grpc.RpcError:
                self.errors += 1
                time.sleep(0.2)

    def _namespace(self) -> None:
        """A Kubernetes namespace key, as every real cluster has (a rebuilt snapshot must hold one)."""
        for endpoint in self.access.endpoints:
            try:
                with etcd.channel(self.access, endpoint) as chan:
                    request = etcdrpc.PutRequest(key=b"/registry/namespaces/default", value=b"namespace default")
                    resp = etcdrpc.KVStub(chan).Put(request, timeout=5)
                    self.acked.append((resp.header.revision, time.time()))
                    return
            except grpc.RpcError:
                continue

    def _order(self, n: int) -> list[str]:
        endpoints = list(self.access.endpoints)
        return endpoints[n % len(endpoints) :] + endpoints[: n % len(endpoints)]

    def _one(self, rnd: random.Random, kv, lease, n: int) -> None:
        choice = rnd.random()
        if n % 250 == 50:
            self._prefix_round(kv, n)
            return
        if choice < 0.35:
            resp = kv.Put(_put(f"/registry/pods/default/pod-{rnd.randrange(300):04d}", rnd), timeout=5)
        elif choice < 0.55:
            resp = kv.Put(_put(f"/registry/configmaps/kube-system/cm-{rnd.randrange(20)}", rnd), timeout=5)
        elif choice < 0.7:
            key = f"/registry/pods/default/pod-{rnd.randrange(300):04d}".encode()
            resp = kv.DeleteRange(etcdrpc.DeleteRangeRequest(key=key), timeout=5)
        elif choice < 0.85:
            ops = [
                etcdrpc.RequestOp(request_put=_put(f"/registry/deployments/app-{n}-{k}", rnd))
                for k in range(rnd.randint(2, 5))
            ]
            resp = kv.Txn(etcdrpc.TxnRequest(success=ops), timeout=5)
        else:
            granted = lease.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=self.lease_ttl), timeout=5)
            self.lease_times.append(time.time())
            ops = [
                etcdrpc.RequestOp(request_put=_put(f"/registry/events/default/ev-{n}-{k}", rnd, granted.ID))
                for k in range(rnd.randint(1, 3))
            ]
            resp = kv.Txn(etcdrpc.TxnRequest(success=ops), timeout=5)
        self.acked.append((resp.header.revision, time.time()))

    def _prefix_round(self, kv, n: int) -> None:
        prefix = f"/registry/batch/{n}/"
        for start in range(0, 200, 100):
            ops = [
                etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=f"{prefix}{k:04d}".encode(), value=b"x" * 50))
                for k in range(start, start + 100)
            ]
            resp = kv.Txn(etcdrpc.TxnRequest(success=ops), timeout=5)
            self.acked.append((resp.header.revision, time.time()))
        request = etcdrpc.DeleteRangeRequest(key=prefix.encode(), range_end=_prefix_end(prefix.encode()))
        resp = kv.DeleteRange(request, timeout=5)
        self.acked.append((resp.header.revision, time.time()))
        self.prefix_rounds += 1

    def wait_for_variety(self, timeout: float = 90) -> None:
        """From now: wait for a prefix delete and a lease granted that had time to expire (however slow the machine)."""
        began, rounds = time.time(), self.prefix_rounds
        deadline = time.monotonic() + timeout

        def expired() -> bool:
            granted = [t for t in self.lease_times if t > began]
            return bool(granted) and time.time() > granted[0] + self.lease_ttl + 2

        while not (self.prefix_rounds > rounds and expired()):
            assert time.monotonic() < deadline, f"load too slow: {len(self.acked)} writes, {self.errors} errors"
            time.sleep(0.1)


def _put(key: str, rnd: random.Random, lease: int = 0) -> etcdrpc.PutRequest:
    return etcdrpc.PutRequest(key=key.encode(), value=os.urandom(rnd.randint(20, 1500)), lease=lease)


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Run:
    """A ContinuousBackup on a thread."""

    def __init__(self, backup: ContinuousBackup):
        self.backup, self.error, self.summary = backup, None, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert backup.started.wait(30), "the watch did not start"

    def _run(self):
        try:
            self.summary = self.backup.run()
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            self.error = exc

    def drain_and_stop(self, access: etcd.EtcdAccess, timeout: float = 60) -> None:
        """Wait until every revision the cluster has is uploaded, then stop."""
        target = max(revision_now(access, e) for e in access.endpoints if up(access, e))
        deadline = time.monotonic() + timeout
        while self.backup.writer.uploaded_revision < target:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"uploaded {self.backup.lag()} of {target}"
            time.sleep(0.2)
        self.backup.stop()
        self.thread.join(30)
        assert self.error is None, self.error


def up(access: etcd.EtcdAccess, endpoint: str) -> bool:
    try:
        revision_now(access, endpoint)
        return True
    except Exception:  # noqa: BLE001
        return False


def followed(
    cluster, directory: Path, seed: int, cluster_id: str = "uk8s-cont", **options
) -> tuple[etcd.EtcdAccess, LocalStorage, WriteLoad, Run]:
    """A cluster under a write load (seeded) while a ContinuousBackup follows it into directory/store."""
    access = access_of(cluster)
    storage = LocalStorage(directory / "store")
    load = WriteLoad(access, seed=seed).start()
    return access, storage, load, Run(ContinuousBackup(access, storage, cluster_id, start_revision=None, **options))
