"""Benchmark: continuous backup (follower, segments, replay) next to the plain tools.

Run from the checkout:  FLEET_NET=20 .venv/bin/python -m bench.continuous_bench [part ...]
Parts (default: all):
  catchup    N revisions already in etcd, followed from the first: our follower alone, our follower + segments
             uploaded to a local directory, and `etcdctl watch --rev` into a file (events per second each);
  writer     the segment writer alone on synthetic revisions (the follower's downstream ceiling);
  sustained  a steady write load at rising rates: does the follower keep up (lag), its peak RSS;
  rpo        a steady load, the follower process SIGKILLed at random moments (>= 10 times, restarted each
             time from the last uploaded segment): acknowledged writes not yet uploaded at the kill (RPO);
  rpo-cluster the same, but every etcd member is SIGKILLed (the follower then uploads what it received);
  requests   storage requests per hour under a steady load and idle (S3, SeaweedFS);
  replay     a full backup, 10,000 revisions after it: plain snapshot restore vs the point-in-time rebuild
             (restore + replay + checks + snapshot file, as restore_cluster(to_revision=...) does).
Every follower runs in its own process (its peak RSS is its own); loads run in another process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from pyetcd import etcdrpc  # noqa: E402

from etcd_backup import etcd, pipeline  # noqa: E402
from etcd_backup.continuous import runner  # noqa: E402
from etcd_backup.continuous.catalog import Catalog  # noqa: E402
from etcd_backup.continuous.chain import list_segments  # noqa: E402
from etcd_backup.continuous.names import lineage_of  # noqa: E402
from etcd_backup.continuous.rebuild import rebuild  # noqa: E402
from etcd_backup.scratch import ScratchEtcd  # noqa: E402
from etcd_backup.storage.local import LocalStorage  # noqa: E402
from tests.continuous_helpers import revision_now  # noqa: E402
from tests.fleet import fleet_net  # noqa: E402
from tests.fleet.binaries import find_binaries  # noqa: E402
from tests.fleet.data import fill  # noqa: E402
from tests.fleet.etcd_cluster import EtcdCluster  # noqa: E402
from tests.fleet.pki import make_pki  # noqa: E402
from tests.servers.seaweedfs import SeaweedFS  # noqa: E402

CLUSTER = "uk8s-bench"
HERE = [sys.executable, "-m", "bench.continuous_bench"]


# ---------------------------------------------------------------- child processes


def _access(spec: dict) -> etcd.EtcdAccess:
    return etcd.EtcdAccess(
        tuple(spec["endpoints"]),
        ca=Path(spec["ca"]).read_text(),
        cert=Path(spec["cert"]).read_text(),
        key=Path(spec["key"]).read_text(),
        timeout=5,
    )


def _storage(spec: dict):
    if spec.get("s3"):
        from etcd_backup.storage.s3 import S3Storage

        s3 = spec["s3"]
        return S3Storage(
            s3["bucket"], "b", endpoint_url=s3["endpoint"], access_key=s3["access_key"], secret_key=s3["secret_key"]
        )
    return LocalStorage(spec["store"])


class Counting:
    """A Storage that counts the calls made to it (one call = one request for objects below 8 MiB)."""

    def __init__(self, inner):
        self.inner, self.counts = inner, {"put": 0, "open": 0, "list": 0, "stat": 0, "delete": 0}

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in self.counts:

            def counted(*args, **kw):
                self.counts[name] += 1
                return attr(*args, **kw)

            return counted
        return attr


def child_follow(spec: dict) -> None:
    """Run ContinuousBackup; write a JSON status line to spec['status'] every 0.25 s; SIGTERM stops it."""
    from etcd_backup.continuous.runner import ContinuousBackup

    storage = Counting(_storage(spec))
    if spec.get("s3"):  # count real HTTP requests too (a put is PUT + HEAD)
        storage.counts["http"] = 0

        def count_http(**_):
            storage.counts["http"] += 1

        storage.inner._client.meta.events.register("before-send.s3", count_http)
    start = spec.get("start")
    backup = ContinuousBackup(
        _access(spec),
        storage,
        CLUSTER,
        start_revision=start,
        prefix=spec.get("prefix", ""),
        segment_seconds=spec.get("segment_seconds", 2.0),
    )
    signal.signal(signal.SIGTERM, lambda *_: backup.stop())
    began = time.monotonic()
    status = open(spec["status"], "a", buffering=1)

    def report():
        while True:
            lag = backup.lag()
            line = {"t": time.time(), "rss_mb": _rss_mb(), "counts": storage.counts, **lag.__dict__}
            status.write(json.dumps({**line, "elapsed": round(time.monotonic() - began, 3)}) + "\n")
            time.sleep(0.25)

    threading.Thread(target=report, daemon=True).start()
    backup.run()
    status.write(json.dumps({"done": True, "peak_rss_mb": _rss_mb(), "counts": storage.counts}) + "\n")


def child_watch_only(spec: dict) -> None:
    """Our Follower alone (no segments): time to receive revisions start..last."""
    from etcd_backup.continuous.watch import Follower

    follower = Follower(_access(spec), spec["start"])
    began, events = time.monotonic(), 0
    for revision in follower:
        events += len(revision.events)
        if revision.revision >= spec["last"]:
            break
    follower.stop()
    print(json.dumps({"seconds": time.monotonic() - began, "events": events, "peak_rss_mb": _rss_mb()}))


def child_load(spec: dict) -> None:
    """Write at spec['rate'] ops/s (0: as fast as possible) on spec['threads'] threads until SIGTERM or
    spec['revisions'] acknowledged; then dump (revision, ack time) pairs to spec['acks']."""
    access = _access(spec)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    acks: list[tuple[int, float]] = []
    threads = spec.get("threads", 4)
    period = threads / spec["rate"] if spec.get("rate") else 0.0
    limit = spec.get("revisions") or 0

    def work(k: int) -> None:
        rnd = random.Random(k)
        endpoint = access.endpoints[k % len(access.endpoints)]
        with etcd.channel(access, endpoint) as chan:
            kv = etcdrpc.KVStub(chan)
            next_at = time.monotonic()
            while not stop.is_set():
                try:
                    acks.append((_one_write(kv, rnd, k), time.time()))
                except grpc.RpcError:
                    time.sleep(0.05)
                if limit and len(acks) >= limit:
                    stop.set()
                if period:
                    next_at += period
                    time.sleep(max(0.0, next_at - time.monotonic()))

    pool = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    Path(spec["acks"]).write_text(json.dumps(acks))


def _one_write(kv, rnd: random.Random, k: int) -> int:
    """One write like a control plane's: mostly updates of the same keys, some creates, deletes, transactions."""
    value = os.urandom(rnd.randint(100, 1500))
    key = f"/registry/pods/ns{k}/pod-{rnd.randrange(2000):05d}".encode()
    choice = rnd.random()
    if choice < 0.1:
        return kv.DeleteRange(etcdrpc.DeleteRangeRequest(key=key), timeout=5).header.revision
    if choice < 0.2:
        ops = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key + b"/%d" % j, value=value)) for j in range(3)]
        return kv.Txn(etcdrpc.TxnRequest(success=ops), timeout=5).header.revision
    return kv.Put(etcdrpc.PutRequest(key=key, value=value), timeout=5).header.revision


def _rss_mb() -> float:
    text = Path("/proc/self/status").read_text()
    return round(int(text.split("VmHWM:")[1].split()[0]) / 1024, 1)


# ---------------------------------------------------------------- parent helpers


class Bench:
    """One TLS etcd cluster (and optionally SeaweedFS) in a temporary directory."""

    def __init__(self, workdir: Path, members: int = 1, version: str = "3.5.1", s3: bool = False):
        self.workdir = workdir
        self.cluster = EtcdCluster(workdir / "etcd", make_pki(workdir / "pki", fleet_net()), members, version).start()
        self.weed = SeaweedFS(str(workdir / "weed")).start() if s3 else None
        self.s3 = None
        if self.weed:
            bucket = self.weed.make_bucket()
            self.s3 = {
                "bucket": bucket,
                "endpoint": self.weed.endpoint,
                "access_key": self.weed.access_key,
                "secret_key": self.weed.secret_key,
            }
        self.store = workdir / "store"
        self.access = _access(self.spec())

    def spec(self, **extra) -> dict:
        c = self.cluster
        base = {"endpoints": c.endpoints, "ca": str(c.ca), "cert": str(c.cert), "key": str(c.key)}
        return {**base, "store": str(self.store), "s3": self.s3, **extra}

    def storage(self):
        return _storage(self.spec())

    def child(self, mode: str, **extra) -> subprocess.Popen:
        return subprocess.Popen([*HERE, "--child", mode, "--spec", json.dumps(self.spec(**extra))], cwd=ROOT)

    def revision(self) -> int:
        return max(revision_now(self.access, e) for e in self.access.endpoints)

    def close(self) -> None:
        if self.weed:
            self.weed.stop()
        self.cluster.stop()


def _last_status(path: Path) -> dict:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _write_revisions(bench: Bench, count: int, threads: int = 6) -> None:
    acks = bench.workdir / f"acks-{time.monotonic_ns()}.json"
    load = bench.child("load", rate=0, threads=threads, revisions=count, acks=str(acks))
    load.wait()


# ---------------------------------------------------------------- parts


def part_catchup(workdir: Path, revisions: int, version: str) -> dict:
    """Follow N existing revisions from the first one: ours (watch only, and with upload) vs etcdctl watch --rev."""
    bench = Bench(workdir, 1, version)
    try:
        start = bench.revision() + 1
        _write_revisions(bench, revisions)
        last = bench.revision()
        events = _count_events(bench, start, last)
        out = subprocess.run(
            [*HERE, "--child", "watch_only", "--spec", json.dumps(bench.spec(start=start, last=last))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        watch_only = json.loads(out.stdout.strip().splitlines()[-1])
        status = workdir / "catchup.status"
        began = time.monotonic()
        child = bench.child("follow", start=start, status=str(status), segment_seconds=2.0)
        _wait(lambda: _last_status(status).get("received_revision", 0) >= last, 600, "catch-up receive")
        received = time.monotonic() - began
        _wait(lambda: _last_status(status).get("uploaded_revision", 0) >= last, 600, "catch-up upload")
        with_upload = time.monotonic() - began
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        peak = _last_status(status).get("peak_rss_mb")
        plain = _etcdctl_watch(bench, start, events, workdir / "etcdctl-watch.out")
        return {
            "etcd": version,
            "revisions": last - start + 1,
            "events": events,
            "ours_watch_only_s": round(watch_only["seconds"], 2),
            "ours_watch_only_events_per_s": round(events / watch_only["seconds"]),
            "ours_watch_only_peak_rss_mb": watch_only["peak_rss_mb"],
            "ours_process_start_to_all_received_s": round(received, 2),
            "ours_process_start_to_all_uploaded_s": round(with_upload, 2),
            "ours_with_upload_peak_rss_mb": peak,
            "etcdctl_watch_to_file_s": round(plain, 2),
            "etcdctl_watch_events_per_s": round(events / plain),
            "stored_bytes": sum(p.stat().st_size for p in bench.store.rglob("*.evl.zst")),
        }
    finally:
        bench.close()


def _count_events(bench: Bench, start: int, last: int) -> int:
    from etcd_backup.continuous.watch import Follower

    follower, count = Follower(bench.access, start), 0
    for revision in follower:
        count += len(revision.events)
        if revision.revision >= last:
            break
    follower.stop()
    return count


def _etcdctl_watch(bench: Bench, start: int, events: int, out: Path) -> float:
    """`etcdctl watch --rev=start --prefix ''` writing to a file, timed until every event is in the file."""
    c = bench.cluster
    argv = [c.binaries.etcdctl, f"--endpoints={c.endpoints[0]}", f"--cacert={c.ca}", f"--cert={c.cert}"]
    argv += [f"--key={c.key}", "watch", f"--rev={start}", "--prefix", "", "-w", "json"]
    began = time.monotonic()
    with open(out, "wb") as sink:
        proc = subprocess.Popen([str(a) for a in argv], stdout=sink, env={**os.environ, "ETCDCTL_API": "3"})
    seen, offset = 0, 0
    try:
        while seen < events:
            time.sleep(0.05)
            with open(out, "rb") as f:
                f.seek(offset)
                data = f.read()
            complete = data.rfind(b"\n") + 1
            seen += data[:complete].count(b'"kv":')
            offset += complete
            if time.monotonic() - began > 600:
                raise TimeoutError("etcdctl watch")
        return time.monotonic() - began
    finally:
        proc.kill()
        proc.wait()


def part_writer(workdir: Path, revisions: int) -> dict:
    """The writer alone (no etcd): synthetic revisions as fast as add() takes them, into a local directory."""
    from etcd_backup.continuous.records import Event, Revision
    from etcd_backup.continuous.writer import SegmentWriter

    rnd = random.Random(2)
    values = [os.urandom(rnd.randint(100, 1500)) for _ in range(1000)]
    batch = []
    for n in range(1, 10_001):
        event = Event(type=Event.PUT)
        event.kv.key, event.kv.value, event.kv.mod_revision = b"/registry/pods/ns/p-%d" % n, values[n % 1000], n
        batch.append(event.SerializeToString())
    writer = SegmentWriter(LocalStorage(workdir / "store"), CLUSTER, segment_seconds=2.0).start()
    began = time.monotonic()
    for n in range(1, revisions + 1):
        writer.add(Revision(n, time.time_ns(), (batch[n % 10_000],)))
    added = time.monotonic() - began
    writer.close()
    total = time.monotonic() - began
    return {
        "revisions": revisions,
        "add_events_per_s": round(revisions / added),
        "add_and_upload_all_s": round(total, 2),
        "uploads": writer.lag().uploads,
        "peak_rss_mb": _rss_mb(),
    }


def part_sustained(workdir: Path, rates: list[int], seconds: float, version: str) -> list[dict]:
    """A steady load at each rate: the achieved rate, and the follower's lag and peak RSS."""
    bench = Bench(workdir, 1, version)
    results = []
    try:
        for rate in rates:
            status = workdir / f"sustained-{rate}.status"
            acks = workdir / f"sustained-{rate}.acks"
            start = bench.revision() + 1
            child = bench.child("follow", start=start, status=str(status), segment_seconds=2.0)
            _wait(lambda s=status: bool(_last_status(s)), 30, "follower start")
            load = bench.child("load", rate=rate, threads=8, acks=str(acks))
            samples, began = [], time.monotonic()
            while time.monotonic() - began < seconds:
                time.sleep(0.5)
                samples.append(_last_status(status))
            load.send_signal(signal.SIGTERM)
            load.wait(60)
            last = bench.revision()
            drain_began = time.monotonic()
            _wait(lambda s=status, n=last: _last_status(s).get("uploaded_revision", 0) >= n, 300, "drain")
            drain = time.monotonic() - drain_began
            child.send_signal(signal.SIGTERM)
            child.wait(60)
            done = _last_status(status)
            ack_list = json.loads(acks.read_text())
            events = _count_events(bench, start, last)
            results.append(
                {
                    "etcd": version,
                    "target_writes_per_s": rate,
                    "achieved_writes_per_s": round(len(ack_list) / seconds),
                    "events_per_s": round(events / seconds),
                    "max_lag_revisions": max(s.get("revisions", 0) for s in samples),
                    "max_lag_seconds": max(s.get("seconds", 0) for s in samples),
                    "drain_after_load_s": round(drain, 2),
                    "peak_rss_mb": done.get("peak_rss_mb"),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    finally:
        bench.close()
    return results


def part_rpo(workdir: Path, kills: int, rate: int, version: str) -> dict:
    """Kill the follower process at random moments under load; acknowledged writes not in storage at each kill."""

    def kill(bench: Bench, child, status: Path) -> float:
        os.kill(child.pid, signal.SIGKILL)
        killed = time.time()
        child.wait()
        return killed

    return _rpo_under_load(workdir, kills, rate, version, 1, kill, lambda bench, child: None)


def part_rpo_cluster(workdir: Path, kills: int, rate: int, version: str) -> dict:
    """SIGKILL every member at random moments under load; the follower uploads what it got; measure what is missing."""

    def kill(bench: Bench, child, status: Path) -> float:
        bench.cluster.stop()  # SIGKILL every member at once
        killed = time.time()
        _wait(lambda: _flushed_after(status, killed), 60, "flush after the cluster died")
        return killed

    def after(bench: Bench, child) -> None:
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        bench.cluster.start()  # same members, same data dirs

    return {**_rpo_under_load(workdir, kills, rate, version, 2, kill, after), "killed": "cluster"}


def _rpo_under_load(workdir: Path, kills: int, rate: int, version: str, seed: int, kill, after) -> dict:
    """Under a steady write load, start a follower, kill something at a random moment, note what was uploaded."""
    bench = Bench(workdir, 3, version, s3=True)
    storage = bench.storage()
    rnd = random.Random(seed)
    try:
        pipeline.backup(bench.access, storage, cluster_id=CLUSTER)
        acks_path = workdir / "rpo.acks"
        load = bench.child("load", rate=rate, threads=4, acks=str(acks_path))
        kills_at = []
        for n in range(kills):
            status = workdir / f"rpo-{seed}-{n}.status"
            point = start_point(storage, CLUSTER, bench.access)
            child = bench.child("follow", start=point.revision, status=str(status), segment_seconds=2.0)
            time.sleep(rnd.uniform(5, 12))
            killed = kill(bench, child, status)
            uploaded = max((s.last_revision for s in list_segments(storage, CLUSTER).complete), default=0)
            kills_at.append((killed, uploaded))
            after(bench, child)
        load.send_signal(signal.SIGTERM)
        load.wait(60)
        return _rpo_figures(sorted(json.loads(acks_path.read_text())), kills_at, rate, version)
    finally:
        bench.close()


def _flushed_after(status: Path, killed: float) -> bool:
    """The follower reported, after the kill, that nothing waits for upload."""
    last = _last_status(status)
    return last.get("t", 0) > killed + 0.3 and last.get("pending_bytes", 1) == 0


def _rpo_figures(acks: list, kills: list, rate: int, version: str) -> dict:
    lost_s, lost_revisions = [], []
    for killed, uploaded in kills:
        missing = [t for rev, t in acks if rev > uploaded and t <= killed]
        lost_revisions.append(len(missing))
        lost_s.append(round(killed - min(missing), 3) if missing else 0.0)
    q = statistics.quantiles(lost_s, n=10, method="inclusive") if len(lost_s) >= 2 else lost_s
    return {
        "etcd": version,
        "storage": "S3 (SeaweedFS)",
        "segment_seconds": 2.0,
        "write_rate": rate,
        "kills": len(kills),
        "rpo_seconds": lost_s,
        "rpo_writes": lost_revisions,
        "rpo_s_min_median_p90_max": [min(lost_s), statistics.median(lost_s), round(q[-1], 3), max(lost_s)],
    }


def part_requests(workdir: Path, seconds: float, rate: int, version: str) -> dict:
    """Storage calls of the follower under a steady load and when idle, per hour."""
    bench = Bench(workdir, 3, version, s3=True)
    try:
        status = workdir / "requests.status"
        child = bench.child("follow", start=bench.revision() + 1, status=str(status), segment_seconds=2.0)
        _wait(lambda: bool(_last_status(status)), 30, "follower start")
        load = bench.child("load", rate=rate, threads=4, acks=str(workdir / "requests.acks"))
        time.sleep(seconds)
        busy = dict(_last_status(status)["counts"])
        load.send_signal(signal.SIGTERM)
        load.wait(60)
        time.sleep(5)  # the last segment closes
        idle_start = dict(_last_status(status)["counts"])
        time.sleep(seconds)
        idle_end = dict(_last_status(status)["counts"])
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        per_hour = 3600 / seconds
        return {
            "etcd": version,
            "write_rate": rate,
            "busy_per_hour": {k: round(v * per_hour) for k, v in busy.items()},
            "idle_per_hour": {k: round((idle_end[k] - idle_start[k]) * per_hour) for k in idle_end},
        }
    finally:
        bench.close()


def part_replay(workdir: Path, revisions: int, version: str, keys: int, no_fsync: bool) -> dict:
    """Full backup of a filled etcd, then `revisions` more: plain restore vs restore + replay up to the last."""
    bench = Bench(workdir, 1, version)
    storage = bench.storage()
    try:
        client = bench.cluster.client(0, timeout=60)
        fill(client, keys, 2048)
        client.close()
        status = workdir / "replay.status"
        child = bench.child("follow", start=bench.revision() + 1, status=str(status), segment_seconds=2.0)
        _wait(lambda: bool(_last_status(status)), 30, "follower start")
        record = pipeline.backup(bench.access, storage, cluster_id=CLUSTER)
        while bench.revision() < record.revision + revisions:
            _write_revisions(bench, record.revision + revisions - bench.revision() + 50)
        last = bench.revision()
        _wait(lambda: _last_status(status).get("uploaded_revision", 0) >= last, 300, "upload")
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        catalog = Catalog(storage, CLUSTER)
        plan = catalog.plan(to_revision=record.revision + revisions)
        plain = _restore(storage, plan.backup, version, workdir / "plain", no_fsync)
        (workdir / "pitr").mkdir()
        began = time.monotonic()
        rebuilt = rebuild(
            storage, plan, workdir / "pitr" / "snap.db", workdir=workdir / "pitr", etcd_dir=_etcd_dir(version)
        )
        total = time.monotonic() - began
        result = rebuilt.replay
        return {
            "etcd": version,
            "plain_scratch_fsync": not (no_fsync and version.startswith("3.5")),
            "db_keys": keys,
            "backup_stored_mb": round(plan.backup.size / 2**20, 1),
            "revisions_replayed": result.revisions_applied,
            "events_replayed": result.events_applied,
            "segments": len(result.segments),
            "plain_restore_s": round(plain, 2),
            "rebuild_s": round(total, 2),
            "replay_only_s": result.seconds,
            "replay_revisions_per_s": round(result.revisions_applied / result.seconds),
            "rebuilt_revision": rebuilt.revision,
        }
    finally:
        bench.close()


def start_point(storage, cluster_id: str, access: etcd.EtcdAccess):
    """Where the continuous backup of the bench cluster resumes (its lineage is etcd's cluster id now)."""
    status = etcd.status(access, etcd.pick_sources(access)[0])
    return runner.start_point(storage, cluster_id, lineage_of(status.cluster_id))


def _etcd_dir(version: str) -> Path:
    return find_binaries(version).etcd.parent


def _restore(storage, backup, version: str, workdir: Path, no_fsync: bool) -> float:
    """Fetch (verified), snapshot restore, start, first read answered: the plain full-backup restore."""
    workdir.mkdir(parents=True)
    snap = workdir / "snap.db"
    began = time.monotonic()
    pipeline.fetch_snapshot(storage, backup, snap)
    with ScratchEtcd(snap, etcd_dir=_etcd_dir(version), workdir=workdir, no_fsync=no_fsync):
        return time.monotonic() - began


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["catchup", "sustained", "rpo", "requests", "replay"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--version", default="3.5.1", help="etcd version (3.5.1 or 3.4.23)")
    parser.add_argument("--catchup-revisions", type=int, default=100_000)
    parser.add_argument("--rates", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--rpo-rate", type=int, default=500)
    parser.add_argument("--replay-revisions", type=int, default=10_000)
    parser.add_argument("--replay-keys", type=int, default=20_000)
    parser.add_argument("--fsync", action="store_true", help="replay into a scratch etcd that fsyncs (3.5)")
    args = parser.parse_args()
    if args.child:
        {"follow": child_follow, "watch_only": child_watch_only, "load": child_load}[args.child](json.loads(args.spec))
        return
    for part in args.parts:
        with tempfile.TemporaryDirectory(prefix=f"continuous-bench-{part}-") as tmp:
            workdir = Path(tmp)
            if part == "catchup":
                result = part_catchup(workdir, args.catchup_revisions, args.version)
            elif part == "writer":
                result = part_writer(workdir, args.catchup_revisions * 5)
            elif part == "sustained":
                result = part_sustained(workdir, args.rates, args.seconds, args.version)
            elif part == "rpo":
                result = part_rpo(workdir, args.kills, args.rpo_rate, args.version)
            elif part == "rpo-cluster":
                result = part_rpo_cluster(workdir, args.kills, args.rpo_rate, args.version)
            elif part == "requests":
                result = part_requests(workdir, args.seconds * 3, args.rpo_rate, args.version)
            else:
                result = part_replay(workdir, args.replay_revisions, args.version, args.replay_keys, not args.fsync)
            print(json.dumps({part: result}), flush=True)


if __name__ == "__main__":
    main()
