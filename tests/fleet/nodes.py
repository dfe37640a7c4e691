"""UK8S-like master nodes on one machine: an sshd per node IP in its own mount namespace.

Inside a node (over SSH) the paths in layout.MOUNTS are the node's own: its host dir
N/<path> is bind-mounted there, and /usr/bin/systemctl is the fleet's stand-in. Rules
for code that changes a node (as restore does):
- A mounted path can never be renamed, replaced or removed (EBUSY): write files in place
  (`cat >`, sftp put, `cp` onto it), copy directory *contents* (`scp -r /etc/etcd host:/etc/etcd`
  would create /etc/etcd/etcd because /etc/etcd always exists). /var/lib and /root are mounted
  whole, so /var/lib/etcd can be moved aside or removed like on a real machine.
- "Missing" on a node means absent or empty: a bare node has an empty /etc/etcd, and empty
  non-executable files at /usr/bin/etcd, etcdctl, etcdutl, /usr/local/bin/hyperkube, kubectl.
  After copying a binary there, `chmod 755` it. Test with `test -s` / `test -x` or run the tool
  (`etcdutl version` exits 126 on a 3.4 node), never `test -e` or `command -v` (they see the placeholder).
- Writing /usr/bin/etcd while that node's etcd runs fails with "Text file busy", as on a real node.
- /tmp and the rest of the file system are shared by all nodes and the host: put per-node
  files under /root, /var/lib or /etc/etcd.
- Each node's etcd is started by `systemctl start etcd` with Type=notify semantics: it
  blocks until the member serves (for a new or restored cluster: until quorum forms).
"""

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pyetcd

from etcd_backup.cluster import ClusterSpec, SSHAccess
from etcd_backup.cluster import MasterNode as ClusterNode

from . import addresses, namespace, procs
from .binaries import find_binaries
from .etcd_cluster import run_etcdctl
from .layout import MOUNTS, write_bare, write_master


class MasterNode(addresses.EtcdURLs):
    """One master node: name "etcd1".. (also its ETCD_NAME), IP, and its files under `root`."""

    def __init__(self, fleet: "Fleet", name: str, ip: str, root: Path):
        self.fleet, self.name, self.ip, self.root = fleet, name, ip, root
        self.host_key = ""
        self.sshd_pid: int | None = None
        self.namespace: str | None = None

    def __repr__(self) -> str:
        return f"MasterNode({self.name}, {self.ip})"

    @property
    def state(self) -> Path:
        """The fleet's control dir for this node (sshd files, systemctl state and logs)."""
        return self.root / ".state"

    def path(self, node_path: str) -> Path:
        """Return the host path of `node_path` (which must lie in one of the node's own mounted paths)."""
        for mount in MOUNTS:
            if node_path == mount or node_path.startswith(mount.rstrip("/") + "/"):
                return self.root / node_path.lstrip("/")
        raise ValueError(f"{node_path} is shared with the host on node {self.name}, not one of {list(MOUNTS)}")

    def ssh(self, cmd: str, check: bool = True, timeout: float = 180, input: str | None = None):
        """Run `cmd` as root on the node with OpenSSH (host key checked); return the CompletedProcess."""
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.fleet.ssh_key_path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.fleet.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            f"{self.fleet.ssh_user}@{self.ip}",
            cmd,
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and out.returncode != 0:
            raise RuntimeError(
                f"ssh {self.name} ({self.ip}) {cmd!r} exited {out.returncode}:\n{out.stdout}{out.stderr}"
            )
        return out

    def client(self, timeout: float = 10):
        """Return a pyetcd client (TLS) to this node's etcd member."""
        pki = self.fleet.pki
        return pyetcd.client(
            host=self.ip,
            port=2379,
            ca_cert=str(pki.ca),
            cert_cert=str(pki.cert),
            cert_key=str(pki.key),
            timeout=timeout,
        )

    def systemctl_log(self) -> list[str]:
        """Lines "<iso time> <verb> [--now] <unit>" recorded by the node's systemctl stand-in."""
        log = self.state / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

    def etcd_log(self) -> str:
        """The tail of the node's etcd log (what `systemctl start etcd` ran)."""
        return procs.log_tail(self.state / "etcd.log")

    def start_sshd(self) -> None:
        """Write fresh sshd files (a new host key) and start sshd in a new mount namespace."""
        self.host_key = namespace.write_sshd_files(self.state, self.ip, self.fleet.ssh_public_key)
        self.sshd_pid, self.namespace = namespace.start_sshd(self.root, self.ip)

    def kill_all(self) -> None:
        """Kill every process of the node (sshd, SSH sessions, etcd); the mounts go with them."""
        if self.namespace:
            namespace.kill_namespace(self.namespace)
        self.sshd_pid = self.namespace = None

    def kill_etcd(self) -> None:
        """Kill the node's etcd at once, like a crash (pid file, process group)."""
        pid_file = self.state / "etcd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if self.namespace and pid in namespace.members(self.namespace):
                procs.kill_all([pid], timeout=0)
            pid_file.unlink(missing_ok=True)


class Fleet:
    """N master nodes (3 or 5) running a UK8S-style etcd cluster with TLS, reachable over SSH."""

    ssh_user = "root"

    def __init__(self, workdir: Path, pki, size: int = 3, version: str = "3.5.1"):
        self.workdir, self.pki, self.etcd_version = workdir, pki, version
        self.binaries = find_binaries(version)
        self.ssh_private_key, self.ssh_public_key = namespace.ssh_keypair()
        self.ssh_key_path = workdir / "id_ed25519"
        self.known_hosts_path = workdir / "known_hosts"
        self._ips = addresses.allocate(size)
        self.nodes = [MasterNode(self, f"etcd{k + 1}", ip, workdir / f"etcd{k + 1}") for k, ip in enumerate(self._ips)]

    @property
    def known_hosts(self) -> str:
        """known_hosts text with every node's current host key."""
        return "".join(f"{node.ip} {node.host_key}\n" for node in self.nodes if node.host_key)

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every node's etcd."""
        return [node.client_url for node in self.nodes]

    def spec(self, cluster_id: str = "uk8s-fleet", known_hosts: str | None = None) -> ClusterSpec:
        """The ClusterSpec an operator would write for this fleet (its current host keys unless told otherwise)."""
        return ClusterSpec(
            cluster_id=cluster_id,
            ca_pem=self.pki.ca.read_text(),
            cert_pem=self.pki.cert.read_text(),
            key_pem=self.pki.key.read_text(),
            nodes=[ClusterNode(name=n.name, ip=n.ip) for n in self.nodes],
            ssh=SSHAccess(
                private_key=self.ssh_private_key, known_hosts=self.known_hosts if known_hosts is None else known_hosts
            ),
        )

    def node(self, name_or_ip: str) -> MasterNode:
        """Return the node with that name ("etcd2") or IP."""
        return next(n for n in self.nodes if name_or_ip in (n.name, n.ip))

    def start(self, timeout: float = 90) -> "Fleet":
        """Build every node, start their sshds, then `systemctl enable --now etcd` on all at once."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ssh_key_path.write_text(self.ssh_private_key)
        self.ssh_key_path.chmod(0o600)
        namespace.prepare_host()
        cluster = {node.name: node.ip for node in self.nodes}
        for node in self.nodes:
            write_master(node.root, node.name, node.ip, cluster, self.pki, self.binaries)
            node.start_sshd()
        self._write_known_hosts()
        self.on_nodes(self.nodes, "systemctl enable --now etcd", timeout)
        self.wait_healthy(timeout)
        return self

    def on_nodes(self, nodes: list[MasterNode], cmd: str, timeout: float = 180) -> None:
        """Run `cmd` over SSH on `nodes` concurrently; fail with every error and the etcd log tails."""
        errors: list[str] = []

        def run(node: MasterNode) -> None:
            out = node.ssh(cmd, check=False, timeout=timeout)
            if out.returncode:
                errors.append(f"{node.name}: {out.stdout}{out.stderr}\n--- etcd log ---\n{node.etcd_log()}")

        threads = [threading.Thread(target=run, args=(node,)) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"{cmd!r} failed on {len(errors)} node(s):\n" + "\n".join(errors))

    def _write_known_hosts(self) -> None:
        self.known_hosts_path.write_text(self.known_hosts)

    def etcdctl(self, *args) -> subprocess.CompletedProcess:
        """Run the fleet version's etcdctl (v3, TLS) on the host against every node's endpoint."""
        return run_etcdctl(self.binaries.etcdctl, self.pki, self.endpoints, args)

    def client(self, timeout: float = 10):
        """Return a pyetcd client (TLS) to the first member that answers."""
        for node in self.nodes:
            client = node.client(timeout)
            try:
                client.status()
                return client
            except Exception:  # noqa: BLE001 - any failure means: try the next member
                client.close()
        raise RuntimeError(f"no etcd member of the fleet answers at {self.endpoints}")

    def wait_healthy(self, timeout: float = 60, nodes: list[MasterNode] | None = None) -> None:
        """Wait until the etcd of every node (or of `nodes`) is healthy; fail with their etcd logs."""
        nodes = nodes or self.nodes
        urls = ",".join(node.client_url for node in nodes)
        deadline = time.monotonic() + timeout
        while True:
            out = self.etcdctl(f"--endpoints={urls}", "endpoint", "health", "--dial-timeout=1s", "--command-timeout=2s")
            if out.returncode == 0:
                return
            if time.monotonic() > deadline:
                logs = "".join(f"\n--- {n.name} etcd log ---\n{n.etcd_log()}" for n in nodes)
                raise RuntimeError(f"fleet etcd not healthy after {timeout}s:\n{out.stdout}{out.stderr}{logs}")
            time.sleep(0.2)

    def fail_member(self, node: MasterNode, damage_data: bool = True) -> None:
        """Crash the node's etcd (SIGKILL) and, by default, corrupt its db and WAL so it cannot start again."""
        node.kill_etcd()
        if damage_data:
            member = node.path("/var/lib/etcd/default.etcd/member")
            for path in list(member.glob("snap/db")) + list(member.glob("wal/*.wal")):
                with open(path, "r+b") as damaged:
                    damaged.write(os.urandom(4096))

    def delete_node(self, node: MasterNode) -> None:
        """Delete the machine: kill all its processes (etcd, sshd) and wipe its whole tree."""
        node.kill_all()
        shutil.rmtree(node.root, ignore_errors=True)
        node.host_key = ""
        self._write_known_hosts()

    def recreate_node(self, node: MasterNode) -> MasterNode:
        """A bare machine at the same IP: sshd with new host keys (known_hosts updated), nothing else."""
        if node.namespace:
            self.delete_node(node)
        write_bare(node.root)
        node.start_sshd()
        self._write_known_hosts()
        return node

    def lose_quorum(self, mode: str = "fail", keep: MasterNode | None = None) -> list[MasterNode]:
        """Fail (mode="fail") or delete and recreate bare (mode="delete") every node but `keep` (default the first)."""
        keep = keep or self.nodes[0]
        lost = [node for node in self.nodes if node is not keep]
        for node in lost:
            if mode == "fail":
                self.fail_member(node)
            elif mode == "delete":
                self.recreate_node(node)
            else:
                raise ValueError(f"lose_quorum mode must be 'fail' or 'delete', not {mode!r}")
        return lost

    def stop(self) -> None:
        """Kill every node's processes (etcd, sshd, sessions) and free the IPs; mounts die with them."""
        for node in self.nodes:
            node.kill_all()
        addresses.release(self._ips)
