"""Benchmark: our streaming backup vs `etcdctl snapshot save` and the runbook's save + tar czf + upload.

Run from the project root:  FLEET_NET=40 .venv/bin/python -m bench.backup_bench --size-mb 256 512
It starts a single-member etcd (TLS) and SeaweedFS, fills etcd with Kubernetes-like values up to the
size, then runs, interleaved --repeat times (fastest counts; the machine is shared): (a) etcdctl
snapshot save to local disk, (b) the runbook's way: etcdctl snapshot save, tar czf, boto3 upload_file
to SeaweedFS, (c) our pipeline (zstd) to SeaweedFS in a child process whose peak RSS (VmHWM) is
reported, also with age encryption, and once with tar.gz; with --baseline, (c) from another checkout too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fleet import fleet_net  # noqa: E402
from tests.fleet.data import fill  # noqa: E402
from tests.fleet.etcd_cluster import EtcdCluster  # noqa: E402
from tests.fleet.pki import make_pki  # noqa: E402
from tests.servers.seaweedfs import SeaweedFS  # noqa: E402

MAX_CONCURRENCY = int(os.environ.get("BENCH_S3_CONCURRENCY", "4"))  # S3Storage default: 4 parts of 8 MiB in flight
CHILD = """
import json, sys, time
from etcd_backup import etcd
from etcd_backup.pipeline import backup
from etcd_backup.storage.s3 import S3Storage
a = json.loads(sys.argv[1])
access = etcd.EtcdAccess(endpoints=a["endpoints"], ca=open(a["ca"]).read(), cert=open(a["cert"]).read(),
                         key=open(a["key"]).read())
storage = S3Storage(a["bucket"], "ours", endpoint_url=a["endpoint"], access_key=a["access_key"],
                    secret_key=a["secret_key"], max_concurrency=a["max_concurrency"])
started = time.monotonic()
record = backup(access, storage, cluster_id="bench", compression=a["compression"], recipients=a["recipients"])
print(json.dumps({"seconds": time.monotonic() - started, "size": record.size, "raw_size": record.raw_size,
                  "peak_rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024}))
"""


def etcdctl_save(cluster: EtcdCluster, db: Path) -> float:
    """(a): `etcdctl snapshot save` to local disk; seconds taken."""
    started = time.monotonic()
    subprocess.run(
        [
            cluster.binaries.etcdctl,
            f"--endpoints={cluster.endpoints[0]}",
            "--cacert",
            cluster.ca,
            "--cert",
            cluster.cert,
            "--key",
            cluster.key,
            "snapshot",
            "save",
            db,
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    return time.monotonic() - started


def build_etcd(workdir: Path, size_mb: int, value_kb: int) -> EtcdCluster:
    """A single TLS member filled with about size_mb of Kubernetes-like values."""
    cluster = EtcdCluster(workdir / "etcd", make_pki(workdir / "pki", fleet_net()), size=1)
    cluster.start()
    client = cluster.client(0, timeout=60)
    value = value_kb * 1024
    fill(client, size_mb * (1 << 20) // value, value)
    client.close()
    return cluster


def runbook_way(cluster: EtcdCluster, weed: SeaweedFS, bucket: str, workdir: Path) -> tuple[float, int]:
    """etcdctl snapshot save, tar czf, boto3 upload_file: the old plugin's steps."""
    db = workdir / "runbook.db"
    started = time.monotonic()
    etcdctl_save(cluster, db)
    subprocess.run(["tar", "czf", f"{db}.tar.gz", "-C", workdir, db.name], check=True)
    weed.client().upload_file(f"{db}.tar.gz", bucket, "runbook/" + db.name + ".tar.gz")
    seconds = time.monotonic() - started
    size = Path(f"{db}.tar.gz").stat().st_size
    db.unlink()
    Path(f"{db}.tar.gz").unlink()
    return seconds, size


def ours(
    cluster: EtcdCluster, weed: SeaweedFS, bucket: str, compression: str, recipients: list[str], code: Path = ROOT
) -> dict:
    """Our pipeline (from the checkout `code`) in a child process; its own peak RSS is measured there."""
    args = {
        "endpoints": cluster.endpoints,
        "ca": str(cluster.ca),
        "cert": str(cluster.cert),
        "key": str(cluster.key),
        "bucket": bucket,
        "endpoint": weed.endpoint,
        "access_key": weed.access_key,
        "secret_key": weed.secret_key,
        "compression": compression,
        "recipients": recipients,
        "max_concurrency": MAX_CONCURRENCY,
    }
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], check=True, capture_output=True, text=True, cwd=code
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(size_mb: int, value_kb: int, repeat: int, baseline: Path | None = None) -> dict:
    """Build the database, then run a, b, c interleaved `repeat` times (the machine is shared: fastest counts)."""
    from pyrage import x25519

    recipient = str(x25519.Identity.generate().to_public())
    with tempfile.TemporaryDirectory(prefix="backup-bench-") as tmp:
        workdir = Path(tmp)
        cluster = build_etcd(workdir, size_mb, value_kb)
        (workdir / "weed").mkdir()
        weed = SeaweedFS(str(workdir / "weed")).start()
        try:
            bucket = weed.make_bucket()
            runs: dict[str, list] = {"a": [], "b": [], "c": [], "c_age": [], "c_tar": [], "c_baseline": []}
            for _ in range(repeat):
                runs["a"].append(etcdctl_save(cluster, workdir / "plain.db"))
                db_size = (workdir / "plain.db").stat().st_size
                (workdir / "plain.db").unlink()
                runs["c"].append(ours(cluster, weed, bucket, "zstd", []))
                runs["b"].append(runbook_way(cluster, weed, bucket, workdir))
                runs["c_age"].append(ours(cluster, weed, bucket, "zstd", [recipient]))
                if baseline:
                    runs["c_baseline"].append(ours(cluster, weed, bucket, "zstd", [], code=baseline))
            runs["c_tar"].append(ours(cluster, weed, bucket, "tar.gz", []))
        finally:
            weed.stop()
            cluster.stop()
    a, (b, b_size) = min(runs["a"]), min(runs["b"])
    c, c_age, c_tar = (min(runs[k], key=lambda r: r["seconds"]) for k in ("c", "c_age", "c_tar"))
    rss = max(r["peak_rss_mb"] for k in ("c", "c_age", "c_tar") for r in runs[k])
    before = min(runs["c_baseline"], key=lambda r: r["seconds"]) if baseline else None
    return {
        "size_mb": size_mb,
        "db_bytes": db_size,
        "a_etcdctl_save_s": round(a, 2),
        "b_runbook_save_tar_upload_s": round(b, 2),
        "b_size": b_size,
        "c_ours_zstd_s": round(c["seconds"], 2),
        "c_size": c["size"],
        "c_over_a": round(c["seconds"] / a, 2),
        "c_over_b": round(c["seconds"] / b, 2),
        "c_zstd_age_s": round(c_age["seconds"], 2),
        "c_targz_s": round(c_tar["seconds"], 2),
        "c_targz_size": c_tar["size"],
        "peak_rss_mb_max_of_all_c_runs": round(rss),
        "s3_max_concurrency": MAX_CONCURRENCY,
        **(
            {"c_baseline_zstd_s": round(before["seconds"], 2), "c_baseline_peak_rss_mb": round(before["peak_rss_mb"])}
            if before
            else {}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, nargs="+", default=[512], help="database size(s) to build")
    parser.add_argument("--value-kb", type=int, default=8, help="size of each Kubernetes-like value")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of a, b and c; the fastest counts")
    baseline_help = "another checkout (`git worktree add` of an earlier commit): its pipeline runs as c_baseline"
    parser.add_argument("--baseline", type=Path, help=baseline_help)
    args = parser.parse_args()
    for size in args.size_mb:
        print(json.dumps(run(size, args.value_kb, args.repeat, args.baseline)), flush=True)


if __name__ == "__main__":
    main()
