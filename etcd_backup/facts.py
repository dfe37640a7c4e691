"""Node facts: what each master node holds and runs (etcd files, version, service, data dir, free space)."""

from __future__ import annotations

import logging
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from etcd_backup.cluster import ClusterSpec, MasterNode, NodeLayout
from etcd_backup.errors import EtcdBackupError
from etcd_backup.nodes import Node

log = logging.getLogger(__name__)

FILE_KEYS = ("etcd_bin", "etcdctl_bin", "etcdutl_bin", "etcd_conf", "kubernetes_dir", "certs", "unit")

# One shell script per node; each line it prints is KEY=VALUE. "Missing" means absent or empty.
_SCRIPT = """\
f() {{ k=$1; shift; if "$@"; then echo "$k=1"; else echo "$k=0"; fi; }}
bin() {{ test -s "$1" && test -x "$1"; }}
nonempty_dir() {{ test -d "$1" && test -n "$(ls -A "$1" 2>/dev/null)"; }}
certs() {{ test -s {ca} && test -s {cert} && test -s {key}; }}
f etcd_bin bin {etcd_bin}
f etcdctl_bin bin {etcdctl_bin}
f etcdutl_bin bin {etcdutl_bin}
f etcd_conf test -s {etcd_conf}
f kubernetes_dir nonempty_dir {kubernetes_dir}
f certs certs
f unit test -s {unit}
f data_dir test -d {data_dir}/member
if bin {etcd_bin}; then
  echo "version=$(timeout 10 {etcd_bin} --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -n 1)"
fi
echo "active=$(systemctl is-active etcd 2>/dev/null | head -n 1)"
d={data_dir}
while [ ! -e "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
echo "free=$(df -PB1 "$d" 2>/dev/null | awk 'NR==2 {{print $4}}')"
"""


@dataclass(frozen=True)
class NodeFacts:
    """What one master node holds and runs, as seen over SSH; reachable=False with the error when it was not."""

    name: str
    ip: str
    reachable: bool
    error: str | None = None
    files: dict[str, bool] = field(default_factory=dict)
    etcd_version: str | None = None
    etcd_active: bool = False
    data_dir_present: bool = False
    free_bytes: int | None = None

    @property
    def missing(self) -> list[str]:
        """The file keys that are absent or empty on the node (all of them when unreachable)."""
        return [k for k in FILE_KEYS if not self.files.get(k, False)]


def script(layout: NodeLayout) -> str:
    """The shell script that checks one node's facts in one SSH command."""
    paths = {
        k: shlex.quote(getattr(layout, k))
        for k in (
            "etcd_bin",
            "etcdctl_bin",
            "etcdutl_bin",
            "etcd_conf",
            "kubernetes_dir",
            "ca",
            "cert",
            "key",
            "unit",
            "data_dir",
        )
    }
    return _SCRIPT.format(**paths)


def parse(member: MasterNode, output: str) -> NodeFacts:
    """NodeFacts from the script's KEY=VALUE output."""
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    free = values.get("free", "").strip()
    return NodeFacts(
        name=member.name,
        ip=member.ip,
        reachable=True,
        files={k: values.get(k) == "1" for k in FILE_KEYS},
        etcd_version=values.get("version", "").strip() or None,
        etcd_active=values.get("active", "").strip() == "active",
        data_dir_present=values.get("data_dir") == "1",
        free_bytes=int(free) if free.isdigit() else None,
    )


def probe(spec: ClusterSpec, member: MasterNode, text: str, what: str, *, timeout: float) -> str | NodeFacts:
    """Run a read-only script on one node in one SSH command: its output, or unreachable NodeFacts (never raises)."""
    node = Node.of(spec, member)
    node.connect_timeout = timeout
    log.info("%s: step facts: %s", node, what)
    try:
        with node:
            return node.run(text, timeout=timeout, check=False).stdout
    except EtcdBackupError as exc:
        log.warning("%s: step facts: unreachable: %s", node, exc.message)
        return NodeFacts(name=member.name, ip=member.ip, reachable=False, error=exc.message)


def gather_one(spec: ClusterSpec, member: MasterNode, *, timeout: float = 30.0) -> NodeFacts:
    """The facts of one node; an unreachable node (or unknown host key) gives reachable=False, never an exception."""
    out = probe(spec, member, script(spec.layout), "checking etcd files, version, service, data dir", timeout=timeout)
    return out if isinstance(out, NodeFacts) else parse(member, out)


def gather(spec: ClusterSpec, *, timeout: float = 30.0) -> list[NodeFacts]:
    """The facts of every node of the cluster, checked concurrently, in spec order."""
    if not spec.nodes:
        return []
    with ThreadPoolExecutor(max_workers=len(spec.nodes)) as pool:
        return list(pool.map(lambda m: gather_one(spec, m, timeout=timeout), spec.nodes))
