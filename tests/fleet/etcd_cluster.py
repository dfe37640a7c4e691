"""Real etcd clusters as host processes with TLS everywhere (no root, no SSH)."""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyetcd

from . import addresses, procs
from .binaries import EtcdBinaries, find_binaries
from .pki import Pki

__all__ = ["EtcdBinaries", "EtcdCluster", "Member", "find_binaries", "etcdctl_env"]


@dataclass
class Member(addresses.EtcdURLs):
    """One etcd member: name "etcd1".., its IP, URLs and data dir."""

    name: str
    ip: str
    data_dir: Path
    log: Path
    process: subprocess.Popen | None = None


def etcdctl_env(pki: Pki, endpoints: list[str]) -> dict:
    """Return an environment for etcdctl v3 with the fleet's TLS files and `endpoints`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env.update(ETCDCTL_API="3", ETCDCTL_CACERT=str(pki.ca), ETCDCTL_CERT=str(pki.cert), ETCDCTL_KEY=str(pki.key))
    if endpoints:
        env["ETCDCTL_ENDPOINTS"] = ",".join(endpoints)
    return env


def run_etcdctl(binary: Path, pki: Pki, endpoints: list[str], args) -> subprocess.CompletedProcess:
    """Run etcdctl `args` (endpoints from the environment unless `--endpoints` is among them)."""
    if any(str(a).startswith("--endpoints") for a in args):
        endpoints = []
    env = etcdctl_env(pki, endpoints)
    return subprocess.run([str(binary), *map(str, args)], env=env, capture_output=True, text=True, timeout=120)


class EtcdCluster:
    """A running etcd cluster of host processes on 127.0.N.x with client and peer TLS."""

    def __init__(self, workdir: Path, pki: Pki, size: int = 3, version: str = "3.5.1", token: str = "etcd-cluster"):
        self.workdir = workdir
        self.binaries = find_binaries(version)
        self.version = version
        self.ca, self.cert, self.key = pki.ca, pki.cert, pki.key
        self.pki = pki
        self.token = token
        self._ips = addresses.allocate(size)
        workdir.mkdir(parents=True, exist_ok=True)
        self.members = [
            Member(f"etcd{k + 1}", ip, workdir / f"etcd{k + 1}", workdir / f"etcd{k + 1}.log")
            for k, ip in enumerate(self._ips)
        ]

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member."""
        return [m.client_url for m in self.members]

    def _argv(self, member: Member) -> list:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        tls = [f"--cert-file={self.cert}", f"--key-file={self.key}", f"--trusted-ca-file={self.ca}"]
        peer = [f"--peer-cert-file={self.cert}", f"--peer-key-file={self.key}", f"--peer-trusted-ca-file={self.ca}"]
        return [
            self.binaries.etcd,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.token}",
            "--logger=zap",
            *tls,
            "--client-cert-auth",
            *peer,
            "--peer-client-cert-auth",
        ]

    def start(self, timeout: float = 60) -> "EtcdCluster":
        """Start every member at once and wait until all are healthy."""
        for k in range(len(self.members)):
            self.start_member(k, wait=False)
        self.wait_healthy(timeout)
        return self

    def start_member(self, i: int, wait: bool = True, timeout: float = 60) -> None:
        """Start member `i` again (its data dir is reused) and, by default, wait until healthy."""
        member = self.members[i]
        if member.process is not None and member.process.poll() is None:
            return
        member.process = procs.spawn(self._argv(member), member.log)
        if wait:
            self.wait_healthy(timeout)

    def stop_member(self, i: int) -> None:
        """Stop member `i` (SIGTERM, SIGKILL after 10 s); its data dir stays."""
        member = self.members[i]
        if member.process is not None:
            procs.kill(member.process.pid)
            member.process = None

    def stop(self) -> None:
        """Kill every member at once (no graceful shutdown: data dirs are for throwing away) and free the IPs."""
        procs.kill_all([m.process.pid for m in self.running()], timeout=0)
        for member in self.members:
            member.process = None
        addresses.release(self._ips)

    def running(self) -> list[Member]:
        """Members whose process runs."""
        return [m for m in self.members if m.process is not None and m.process.poll() is None]

    def etcdctl(self, *args) -> subprocess.CompletedProcess:
        """Run etcdctl (v3 API, TLS) against every member's endpoint."""
        return run_etcdctl(self.binaries.etcdctl, self.pki, self.endpoints, args)

    def client(self, i: int = 0, timeout: float = 10):
        """Return a pyetcd client with TLS for member `i`."""
        return pyetcd.client(
            host=self.members[i].ip,
            port=2379,
            ca_cert=str(self.ca),
            cert_cert=str(self.cert),
            cert_key=str(self.key),
            timeout=timeout,
        )

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait until every running member reports healthy; fail with the logs of the others."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            urls = [m.client_url for m in self.running()]
            out = self.etcdctl(
                f"--endpoints={','.join(urls)}", "endpoint", "health", "--dial-timeout=1s", "--command-timeout=2s"
            )
            if out.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"etcd {self.version} not healthy after {timeout}s:\n{out.stdout}{out.stderr}" + self._tails()
                )
            time.sleep(0.1)

    def _check_alive(self) -> None:
        dead = [m for m in self.members if m.process is not None and m.process.poll() is not None]
        if dead:
            raise RuntimeError(f"etcd {self.version} member(s) {[m.name for m in dead]} exited" + self._tails(dead))

    def _tails(self, members=None) -> str:
        return "".join(f"\n--- {m.name} log tail ---\n{procs.log_tail(m.log)}" for m in members or self.members)
