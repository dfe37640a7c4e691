"""Benchmark: verify_restorable vs the plain `etcdutl snapshot restore` + start of one member until it serves.

Run from the project root:  FLEET_NET=40 .venv/bin/python -m bench.verify_bench --size-mb 256 1024
It starts a single-member etcd 3.5.1 (TLS), fills it with Kubernetes-like values up to the size, takes a
snapshot with its certificate (and times `etcdctl snapshot save` for reference), stops the cluster, then runs
interleaved --repeat times (fastest counts; the machine is shared): (a) the plain tools: `etcdutl snapshot
restore`, start etcd on loopback, poll its /health endpoint every 20 ms until it says true; (b) verify_restorable on
the same file in a child process (restore, start, HashKV and key count at the snapshot's revision, prefix check,
stop, delete).
Peak RSS: etcd's VmHWM in both, and the child Python process's own in (b). Target: b <= 1.5 x a.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etcd_backup import etcd  # noqa: E402
from etcd_backup.certificate import source_certificate  # noqa: E402
from etcd_backup.scratch import find_tools  # noqa: E402
from tests.fleet import fleet_net  # noqa: E402
from tests.fleet.data import fill  # noqa: E402
from tests.fleet.etcd_cluster import EtcdCluster  # noqa: E402
from tests.fleet.pki import make_pki  # noqa: E402

CHILD = """
import json, sys, time
from etcd_backup import scratch
from etcd_backup.certificate import Certificate
from etcd_backup.verify import verify_restorable
etcd_rss = []
close = scratch.ScratchEtcd.close
def measured_close(self):  # etcd's peak RSS, read just before the scratch etcd is stopped
    if self.process is not None:
        etcd_rss.append(int(open(f"/proc/{self.process.pid}/status").read().split("VmHWM:")[1].split()[0]) / 1024)
    close(self)
scratch.ScratchEtcd.close = measured_close
expected = Certificate.model_validate_json(open(sys.argv[2]).read())
started = time.monotonic()
report = verify_restorable(sys.argv[1], expected, workdir=sys.argv[3])
print(json.dumps({"seconds": time.monotonic() - started, "ok": report.ok, "differences": report.differences,
                  "etcd_version": report.etcd_version, "etcd_peak_rss_mb": max(etcd_rss, default=0),
                  "peak_rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024}))
"""


def access_of(cluster: EtcdCluster) -> etcd.EtcdAccess:
    return etcd.EtcdAccess(
        endpoints=cluster.endpoints,
        ca=Path(cluster.ca).read_text(),
        cert=Path(cluster.cert).read_text(),
        key=Path(cluster.key).read_text(),
        timeout=60,
    )


def build(workdir: Path, size_mb: int, value_kb: int) -> tuple[Path, Path, float]:
    """Fill a TLS member to size_mb, snapshot it with its certificate; return (snapshot, certificate, save seconds)."""
    cluster = EtcdCluster(workdir / "etcd", make_pki(workdir / "pki", fleet_net()), size=1)
    cluster.start()
    try:
        client = cluster.client(0, timeout=60)
        client.put("/registry/namespaces/default", "ns")
        fill(client, size_mb * (1 << 20) // (value_kb * 1024), value_kb * 1024)
        client.close()
        access, endpoint = access_of(cluster), cluster.endpoints[0]
        snapshot = workdir / "snap.db"
        before, _ = etcd.key_count(access, endpoint)
        with etcd.SnapshotStream(access, endpoint) as stream, open(snapshot, "wb") as out:
            after, _ = etcd.key_count(access, endpoint)
            certificate = source_certificate(access, endpoint, before, after)
            for chunk in stream:
                out.write(chunk)
        (workdir / "certificate.json").write_text(certificate.model_dump_json())
        started = time.monotonic()
        saved = cluster.etcdctl(f"--endpoints={endpoint}", "snapshot", "save", workdir / "saved.db")
        save_seconds = time.monotonic() - started
        assert saved.returncode == 0, saved.stderr
        (workdir / "saved.db").unlink()
    finally:
        cluster.stop()
    return snapshot, workdir / "certificate.json", save_seconds


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain(snapshot: Path, workdir: Path) -> dict:
    """(a): etcdutl snapshot restore, start etcd, poll its /health endpoint every 20 ms until it says true."""
    tools = find_tools()
    data = workdir / "plain-data"
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    cluster = ["--name=plain", f"--initial-cluster=plain={peer_url}", f"--initial-advertise-peer-urls={peer_url}"]
    started = time.monotonic()
    restore = [tools.etcdutl, "snapshot", "restore", snapshot, f"--data-dir={data}", *cluster]
    subprocess.run(restore, check=True, capture_output=True)
    restored = time.monotonic()
    with open(workdir / "plain.log", "wb") as log:
        process = subprocess.Popen(
            [tools.etcd, f"--data-dir={data}", f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
             f"--listen-peer-urls={peer_url}", *cluster],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        while not healthy(url):
            assert process.poll() is None, (workdir / "plain.log").read_text()[-2000:]
            time.sleep(0.02)
        seconds = time.monotonic() - started
        rss = int(Path(f"/proc/{process.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(data)
    return {"seconds": seconds, "restore_seconds": restored - started, "etcd_peak_rss_mb": rss}


def healthy(url: str) -> bool:
    """etcd's own /health endpoint (what `curl http://127.0.0.1:2379/health` shows) says true."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as response:
            return json.load(response).get("health") == "true"
    except (OSError, ValueError):
        return False


def ours(snapshot: Path, certificate: Path, workdir: Path) -> dict:
    """(b): verify_restorable in a child process (its own peak RSS measured there)."""
    (workdir / "scratch").mkdir(exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(snapshot), str(certificate), str(workdir / "scratch")],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], result["differences"]
    return result


def run(size_mb: int, value_kb: int, repeat: int) -> dict:
    """Build the snapshot, then run a and b interleaved `repeat` times: fastest counts."""
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        workdir = Path(tmp)
        snapshot, certificate, save_seconds = build(workdir, size_mb, value_kb)
        runs: dict[str, list[dict]] = {"a": [], "b": []}
        for _ in range(repeat):
            runs["a"].append(plain(snapshot, workdir))
            runs["b"].append(ours(snapshot, certificate, workdir))
        db_bytes = snapshot.stat().st_size
    a = min(runs["a"], key=lambda r: r["seconds"])
    b = min(runs["b"], key=lambda r: r["seconds"])
    gb = db_bytes / (1 << 30)
    return {
        "size_mb": size_mb,
        "db_bytes": db_bytes,
        "snapshot_save_s": round(save_seconds, 2),
        "a_restore_start_s": round(a["seconds"], 2),
        "a_of_which_restore_s": round(a["restore_seconds"], 2),
        "b_verify_s": round(b["seconds"], 2),
        "b_over_a": round(b["seconds"] / a["seconds"], 2),
        "a_s_per_gb": round(a["seconds"] / gb, 2),
        "b_s_per_gb": round(b["seconds"] / gb, 2),
        "save_s_per_gb": round(save_seconds / gb, 2),
        "a_etcd_peak_rss_mb": round(max(r["etcd_peak_rss_mb"] for r in runs["a"])),
        "b_etcd_peak_rss_mb": round(max(r["etcd_peak_rss_mb"] for r in runs["b"])),
        "b_python_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["b"])),
        "etcd_version": b["etcd_version"],
        "all_a_s": [round(r["seconds"], 2) for r in runs["a"]],
        "all_b_s": [round(r["seconds"], 2) for r in runs["b"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, nargs="+", default=[512], help="database size(s) to build")
    parser.add_argument("--value-kb", type=int, default=8, help="size of each Kubernetes-like value")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of a and b; the fastest counts")
    args = parser.parse_args()
    os.environ.setdefault("ETCDCTL_API", "3")
    for size in args.size_mb:
        print(json.dumps(run(size, args.value_kb, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
