"""Put/get throughput and peak RSS of each storage backend against the plain tool, on real servers.

    python bench/storage_bench.py --size-mb 512

Starts SeaweedFS, the UFile-rules proxy and the backup sshd (needs root), writes one
pseudo-random file, then times every transfer in a child process (so peak RSS is that
transfer's own): our backends vs `boto3 upload_file/download_file`, `scp` and `cp`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etcd_backup.storage.local import LocalStorage  # noqa: E402
from etcd_backup.storage.s3 import S3Storage, ufile_storage  # noqa: E402
from etcd_backup.storage.sftp import SFTPStorage  # noqa: E402

MiB = 1024 * 1024


def make_storage(kind: str, cfg: dict):
    """Build the backend under test from the servers' settings."""
    if kind == "s3":
        return S3Storage(cfg["bucket"], "bench", endpoint_url=cfg["s3"], access_key=cfg["ak"], secret_key=cfg["sk"])
    if kind == "ufile":
        return ufile_storage(cfg["ak"], cfg["sk"], "cn-bj", cfg["bucket"], "bench-ufile", endpoint_url=cfg["proxy"])
    if kind == "sftp":
        return SFTPStorage(
            "127.0.0.1",
            cfg["ssh_port"],
            cfg["ssh_user"],
            cfg["ssh_dir"],
            private_key=Path(cfg["ssh_key"]).read_text(),
            known_hosts=cfg["known_hosts"],
        )
    return LocalStorage(cfg["local_dir"])


def child(op: str, kind: str, cfg: dict) -> None:
    """Run one transfer in this process (our backend, or boto3's managed transfer for 'boto3')."""
    if kind == "boto3":
        import boto3
        from boto3.s3.transfer import TransferConfig

        client = boto3.client(
            "s3",
            endpoint_url=cfg["s3"],
            aws_access_key_id=cfg["ak"],
            aws_secret_access_key=cfg["sk"],
            region_name="us-east-1",
        )
        transfer = TransferConfig(multipart_chunksize=8 * MiB, max_concurrency=4, preferred_transfer_client="classic")
        if op == "put":
            client.upload_file(cfg["source"], cfg["bucket"], "plain/boto3.bin", Config=transfer)
        else:
            client.download_file(cfg["bucket"], "plain/boto3.bin", cfg["target"], Config=transfer)
        return
    storage = make_storage(kind, cfg)
    if op == "put":
        with open(cfg["source"], "rb") as source:
            storage.put("bench.bin", source)
    else:
        with storage.open("bench.bin") as stream, open(cfg["target"], "wb") as out:
            while chunk := stream.read(MiB):
                out.write(chunk)
    storage.close()


def measure(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, VmHWM summed over the process tree, sampled) of a command."""
    import psutil

    began = time.monotonic()
    process = subprocess.Popen(command, env=env)
    peaks: dict[int, int] = {}
    while process.poll() is None:
        try:
            tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for proc in tree:
            peaks[proc.pid] = max(peaks.get(proc.pid, 0), _hwm_kib(proc.pid))
        time.sleep(0.02)
    seconds = time.monotonic() - began
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {process.returncode}")
    return seconds, sum(peaks.values()) / 1024


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def plain_command(op: str, kind: str, cfg: dict) -> list[str]:
    """The plain tool's command line for a backend's transfer."""
    if kind in ("s3", "ufile"):
        return [sys.executable, __file__, "--child", op, "boto3"]
    if kind == "sftp":
        ssh = [
            "scp",
            "-q",
            "-i",
            cfg["ssh_key"],
            "-o",
            f"UserKnownHostsFile={cfg['known_hosts_file']}",
            "-o",
            "BatchMode=yes",
            "-P",
            str(cfg["ssh_port"]),
        ]
        remote = f"{cfg['ssh_user']}@127.0.0.1:{cfg['ssh_dir']}/plain.bin"
        return ssh + ([cfg["source"], remote] if op == "put" else [remote, cfg["target"]])
    local = os.path.join(cfg["local_dir"], "plain.bin")
    return ["cp", cfg["source"], local] if op == "put" else ["cp", local, cfg["target"]]


def write_source(path: Path, size: int) -> None:
    rng = random.Random(7)
    with open(path, "wb") as out:
        for offset in range(0, size, MiB):
            out.write(rng.randbytes(min(MiB, size - offset)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--backends", default="s3,ufile,sftp,local")
    parser.add_argument("--child", nargs=2, metavar=("OP", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, json.loads(os.environ["STORAGE_BENCH"]))

    from tests.servers.seaweedfs import SeaweedFS
    from tests.servers.sshd_server import BackupSSHD
    from tests.servers.ufile_proxy import UFileProxy

    size = args.size_mb * MiB
    work = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    write_source(work / "source.bin", size)
    with SeaweedFS(str(work / "weed")) as weed, UFileProxy(weed.endpoint) as proxy, BackupSSHD() as sshd:
        (work / "known_hosts").write_text(sshd.known_hosts())
        cfg = dict(
            s3=weed.endpoint,
            proxy=proxy.endpoint,
            ak=weed.access_key,
            sk=weed.secret_key,
            bucket=weed.make_bucket("bench"),
            ssh_port=sshd.port,
            ssh_user=sshd.user,
            ssh_dir=sshd.directory,
            ssh_key=sshd.key_path,
            known_hosts=sshd.known_hosts(),
            known_hosts_file=str(work / "known_hosts"),
            local_dir=str(work / "local"),
            source=str(work / "source.bin"),
            target=str(work / "target.bin"),
        )
        env = dict(os.environ, STORAGE_BENCH=json.dumps(cfg))
        print(f"SeaweedFS started in {weed.start_seconds:.1f}s; object {args.size_mb} MiB")
        print(
            f"{'backend':8} {'op':4} {'ours MB/s':>10} {'RSS MiB':>8} {'plain':>10} {'plain MB/s':>10} {'RSS MiB':>8}"
        )
        for kind in args.backends.split(","):
            for op in ("put", "get"):
                ours = measure([sys.executable, __file__, "--child", op, kind], env)
                plain = measure(plain_command(op, kind, cfg), env)
                tool = {"s3": "boto3", "ufile": "boto3", "sftp": "scp", "local": "cp"}[kind]
                print(
                    f"{kind:8} {op:4} {size / MiB / ours[0]:10.0f} {ours[1]:8.0f} {tool:>10} "
                    f"{size / MiB / plain[0]:10.0f} {plain[1]:8.0f}",
                    flush=True,
                )
        if proxy.rejections:
            print("UFile proxy rejections:", *proxy.rejections, sep="\n  ")
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
