"""First run: log in to one master, read its certificates and etcd.conf, list the members, build a ClusterSpec."""

from __future__ import annotations

import json
import logging
import shlex
from urllib.parse import urlparse

from pydantic import SecretStr

from etcd_backup.cluster import ClusterSpec, MasterNode, NodeLayout, SSHAccess
from etcd_backup.errors import ConfigError, NodeError
from etcd_backup.nodes import Node, nodes_of

log = logging.getLogger(__name__)


def discover(
    host: str,
    ssh_port: int = 22,
    *,
    access: SSHAccess,
    cluster_id: str,
    layout: NodeLayout | None = None,
    timeout: float = 15.0,
) -> ClusterSpec:
    """Build the cluster's spec from what one master node holds (certs, etcd.conf, member list)."""
    layout = layout or NodeLayout()
    probe = MasterNode(name=host, ip=host, ssh_port=ssh_port)
    with Node(probe, access, layout, connect_timeout=timeout) as node:
        ca = _read_required(node, layout.ca, "CA certificate")
        cert = _read_required(node, layout.cert, "etcd client certificate")
        key = _read_required(node, layout.key, "etcd client key")
        conf = parse_env_file(_read_required(node, layout.etcd_conf, "etcd config"))
        members = _members_from_etcdctl(node, layout, conf) or _members_from_conf(conf, node)
    nodes = sorted((MasterNode(name=n, ip=_ip(p), ssh_port=ssh_port) for n, p, _ in members), key=lambda m: m.name)
    peer_port = urlparse(members[0][1]).port or layout.peer_port
    client_urls = [c for _, _, c in members if c]
    client_port = urlparse(client_urls[0]).port if client_urls else layout.client_port
    layout = layout.model_copy(update={"peer_port": peer_port, "client_port": client_port or layout.client_port})
    return ClusterSpec(
        cluster_id=cluster_id, ca_pem=ca, cert_pem=cert, key_pem=SecretStr(key), nodes=nodes, ssh=access, layout=layout
    )


def check_nodes(spec: ClusterSpec, *, timeout: float = 15.0) -> dict[str, str]:
    """Log in to every master and check the etcd files are there; returns problems by node (empty when all is well)."""
    problems: dict[str, str] = {}
    for node in nodes_of(spec):
        node.connect_timeout = timeout
        try:
            with node:
                missing = [p for p in (spec.layout.etcd_conf, spec.layout.cert, spec.layout.key) if not node.exists(p)]
        except NodeError as exc:
            problems[str(node)] = exc.message
            continue
        if missing:
            problems[str(node)] = "missing " + ", ".join(missing)
    return problems


def parse_env_file(text: str) -> dict[str, str]:
    """Parse an environment file like /etc/etcd/etcd.conf (KEY=value, optional quotes, # comments)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def _read_required(node: Node, path: str, what: str) -> str:
    """Read a text file the first run needs, with a clear error when it is missing."""
    if not node.exists(path):
        raise NodeError(
            f"{what} {path} is missing (is this a master node? set the layout if paths differ)",
            step="discover",
            node=str(node),
        )
    return node.read(path).decode()


def _members_from_etcdctl(node: Node, layout: NodeLayout, conf: dict[str, str]) -> list[tuple[str, str, str]]:
    """Members as (name, peer URL, client URL) from `etcdctl member list` on the node; empty if etcd does not answer."""
    peers = _initial_cluster(conf)
    endpoints = [_client_url(p, layout) for _, p in peers] or [f"https://127.0.0.1:{layout.client_port}"]
    cmd = f"{shlex.quote(layout.etcdctl_bin)} --command-timeout=10s member list -w json"
    result = node.run(cmd, env=layout.etcdctl_env(endpoints), check=False, timeout=60)
    if result.code != 0:
        log.warning(
            "%s: etcdctl member list failed (%s); using ETCD_INITIAL_CLUSTER", node, result.stderr.strip()[-200:]
        )
        return []
    by_peer = {p: n for n, p in peers}
    members = []
    for m in json.loads(result.stdout).get("members", []):
        peer = (m.get("peerURLs") or [""])[0]
        name = m.get("name") or by_peer.get(peer, "")
        if not name or not peer:
            raise NodeError(f"member {m.get('ID')} has no name or peer URL yet", step="discover", node=str(node))
        members.append((name, peer, (m.get("clientURLs") or [""])[0]))
    return members


def _members_from_conf(conf: dict[str, str], node: Node) -> list[tuple[str, str, str]]:
    """Members as (name, peer URL, "") from ETCD_INITIAL_CLUSTER."""
    peers = _initial_cluster(conf)
    if not peers:
        raise NodeError(
            "etcd.conf has no ETCD_INITIAL_CLUSTER and etcd did not answer", step="discover", node=str(node)
        )
    return [(n, p, "") for n, p in peers]


def _initial_cluster(conf: dict[str, str]) -> list[tuple[str, str]]:
    """(name, peer URL) pairs from ETCD_INITIAL_CLUSTER."""
    pairs = []
    for item in conf.get("ETCD_INITIAL_CLUSTER", "").split(","):
        if "=" in item:
            name, url = item.strip().split("=", 1)
            pairs.append((name, url))
    return pairs


def _client_url(peer_url: str, layout: NodeLayout) -> str:
    """The client URL on the same host as a peer URL."""
    u = urlparse(peer_url)
    return f"{u.scheme}://{u.netloc.rsplit(':', 1)[0] if u.port else u.netloc}:{layout.client_port}"


def _ip(url: str) -> str:
    """The host part of a URL."""
    host = urlparse(url).hostname
    if not host:
        raise ConfigError(f"cannot read a host from {url!r}", step="discover")
    return host
