"""What a restore needs to know about each node beyond etcd_backup.facts: its etcd.conf, kube services and files."""

from __future__ import annotations

import base64
import binascii
import posixpath
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from etcd_backup import facts
from etcd_backup.cluster import ClusterSpec, MasterNode, NodeLayout
from etcd_backup.restore import commands as c
from etcd_backup.restore.leftovers import MARKER

KUBE_SERVICES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
CONTROL_PLANE_FILES = ("hyperkube", "kubectl", "kubeconfig", "apiserver_conf")
IFCFG = ("ifcfg-lo:internal", "ifcfg-lo:external")
TOOLS = ("zstd",)  # optional tools a restore can use on the node (zstd: the snapshot travels compressed)

_SCRIPT = """\
f() {{ k=$1; shift; if "$@"; then echo "$k=1"; else echo "$k=0"; fi; }}
bin() {{ test -s "$1" && test -x "$1"; }}
if test -s {etcd_conf}; then echo "conf=$(base64 -w0 {etcd_conf})"; fi
echo "etcd_enabled=$(systemctl is-enabled etcd 2>/dev/null | head -n 1)"
for u in {services}; do echo "active.$u=$(systemctl is-active $u 2>/dev/null | head -n 1)"; done
f hyperkube bin {hyperkube}
f kubectl bin {kubectl}
f kubeconfig test -s {kubeconfig}
f apiserver_conf test -s {apiserver_conf}
f ifcfg-lo:internal test -s {network}/ifcfg-lo:internal
f ifcfg-lo:external test -s {network}/ifcfg-lo:external
f zstd command -v zstd
units() {{ cd {unit_dir} 2>/dev/null && for u in kube-*.service; do test -s "$u" && echo "$u"; done; }}
echo "kube_units=$(units | tr '\\n' ' ')"
echo "unfinished=$(for d in {restore_home}/etcd-restore-*; do test -e "$d/{marker}" && printf '%s ' "$d"; done)"
"""


@dataclass(frozen=True)
class RestoreFacts:
    """A node's facts (etcd_backup.facts.NodeFacts) plus its etcd.conf text and Kubernetes control-plane state."""

    node: facts.NodeFacts
    conf_text: str | None = None
    etcd_enabled: bool = False
    kube_active: tuple[str, ...] = ()
    files: dict[str, bool] = field(default_factory=dict)
    kube_units: tuple[str, ...] = ()
    unfinished: tuple[str, ...] = ()  # run dirs of restores that changed the node and never finished

    @property
    def name(self) -> str:
        """The node's etcd member name."""
        return self.node.name

    @property
    def missing(self) -> list[str]:
        """The etcd files the node lacks (etcdutl is optional: 3.3/3.4 have none)."""
        return [k for k in self.node.missing if k != "etcdutl_bin"]

    @property
    def has_control_plane(self) -> bool:
        """True when hyperkube, kubectl, the kubeconfig, the apiserver config and kube-* units are all there."""
        return all(self.files.get(k) for k in CONTROL_PLANE_FILES) and bool(self.kube_units)


def script(layout: NodeLayout) -> str:
    """The shell script that reads one node's restore facts in one SSH command."""
    return _SCRIPT.format(
        etcd_conf=shlex.quote(layout.etcd_conf),
        services=" ".join(KUBE_SERVICES),
        hyperkube=shlex.quote(layout.hyperkube),
        kubectl=shlex.quote(layout.kubectl),
        kubeconfig=shlex.quote(posixpath.join(layout.kubeconfig_dir, "config")),
        apiserver_conf=shlex.quote(layout.apiserver_conf),
        network=shlex.quote(layout.network_scripts),
        unit_dir=shlex.quote(layout.unit_dir),
        restore_home=shlex.quote(posixpath.dirname(c.data_home(layout.data_dir))),
        marker=MARKER,
    )


def parse(base: facts.NodeFacts, output: str) -> RestoreFacts:
    """RestoreFacts from the base facts and the script's KEY=VALUE output."""
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    try:
        conf = base64.b64decode(values["conf"]).decode(errors="replace") if values.get("conf") else None
    except binascii.Error:
        conf = None
    return RestoreFacts(
        node=base,
        conf_text=conf,
        etcd_enabled=values.get("etcd_enabled", "").strip() == "enabled",
        kube_active=tuple(u for u in KUBE_SERVICES if values.get(f"active.{u}", "").strip() == "active"),
        files={k: values.get(k) == "1" for k in (*CONTROL_PLANE_FILES, *IFCFG, *TOOLS)},
        kube_units=tuple(values.get("kube_units", "").split()),
        unfinished=tuple(values.get("unfinished", "").split()),
    )


def gather_one(spec: ClusterSpec, member: MasterNode, *, timeout: float = 30.0) -> RestoreFacts:
    """A node's base and restore facts from one SSH command (only the error when it is unreachable)."""
    out = facts.probe(
        spec,
        member,
        facts.script(spec.layout) + script(spec.layout),
        "etcd files, version, service, data dir, etcd.conf, kube services",
        timeout=timeout,
    )
    if isinstance(out, facts.NodeFacts):
        return RestoreFacts(node=out)
    return parse(facts.parse(member, out), out)


def gather(spec: ClusterSpec, *, timeout: float = 30.0) -> list[RestoreFacts]:
    """The restore facts of every node, checked concurrently, in spec order."""
    with ThreadPoolExecutor(max_workers=max(1, len(spec.nodes))) as pool:
        return list(pool.map(lambda m: gather_one(spec, m, timeout=timeout), spec.nodes))
