"""Pure recovery rules shared by diagnose, the whole-cluster restore and the member replacement.

- quorum: a majority of the cluster's members answer a linearizable read;
- a health entry belongs to the node whose client host and port it names, whether the
  endpoint is written with the node's IP or with a host name that resolves to it;
- the source of files (the retained node, or the healthy node of a replacement) is
  the one node rule below, with the reason each other node is not eligible.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from etcd_backup.cluster import ClusterSpec, MasterNode
from etcd_backup.restore.facts import RestoreFacts

OK = "ok"
NOT_CHECKED = "not checked"
Resolver = Callable[[str], frozenset[str]]  # host name -> its IP addresses


@functools.lru_cache(maxsize=256)
def resolve(host: str) -> frozenset[str]:
    """The IP addresses a host name resolves to (the IP itself for an address; empty when it does not resolve)."""
    try:
        return frozenset({str(ipaddress.ip_address(host.strip("[]")))})
    except ValueError:
        pass
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except OSError:
        return frozenset()


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """(host, port) of an endpoint URL or host:port, lower-cased, brackets of IPv6 removed."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return (parts.hostname or "").lower(), parts.port or default_port


def is_node_endpoint(spec: ClusterSpec, node: MasterNode, endpoint: str, resolver: Resolver | None = None) -> bool:
    """True when the endpoint is the node's client endpoint: same port, host the node's IP or resolving to it."""
    host, port = host_port(endpoint, spec.layout.client_port)
    if port != spec.layout.client_port:
        return False
    ip = str(ipaddress.ip_address(node.ip.strip("[]")))
    return host == ip or ip in (resolver or resolve)(host)


def node_health(spec: ClusterSpec, health: dict[str, str], resolver: Resolver | None = None) -> dict[str, str]:
    """Per node name its endpoint's health ('ok' or the error); 'not checked' when no endpoint is the node's."""
    found = {}
    for node in spec.nodes:
        states = [s for e, s in health.items() if is_node_endpoint(spec, node, e, resolver)]
        found[node.name] = OK if OK in states else (states[0] if states else NOT_CHECKED)
    return found


def healthy_nodes(spec: ClusterSpec, health: dict[str, str], resolver: Resolver | None = None) -> list[str]:
    """The names of the nodes whose member answers a linearizable read, in spec order."""
    return [name for name, state in node_health(spec, health, resolver).items() if state == OK]


def answering(spec: ClusterSpec, health: dict[str, str], resolver: Resolver | None = None) -> int:
    """How many members answer: each node once however many endpoints name it, plus answering endpoints of no node."""
    foreign = [
        e for e, s in health.items() if s == OK and not any(is_node_endpoint(spec, n, e, resolver) for n in spec.nodes)
    ]
    return len(healthy_nodes(spec, health, resolver)) + len(foreign)


def has_quorum(
    spec: ClusterSpec, health: dict[str, str], members: int | None = None, resolver: Resolver | None = None
) -> bool:
    """True when more than half of the members (default: the spec's nodes) answer a linearizable read."""
    count = members if members is not None else len(spec.nodes)
    return answering(spec, health, resolver) > count // 2


def source_problem(f: RestoreFacts, *, healthy: bool | None = None, control_plane: bool = False) -> str | None:
    """Why a node cannot be the source of etcd files (None when it can).

    It must be reachable over SSH (host key verified), hold etcd, etcdctl, /etc/etcd with a
    readable etcd.conf, /etc/kubernetes with the certificates and the unit; when `healthy`
    is asked, its member must answer; with `control_plane`, it must hold the kube files.
    """
    if not f.node.reachable:
        return f"not reachable over SSH: {f.node.error or 'unknown error'}"
    if healthy is False:
        return "its etcd member does not answer health checks"
    if f.missing:
        return "it lacks " + ", ".join(f.missing)
    if not f.conf_text:
        return "its etcd.conf cannot be read"
    if control_plane and not f.has_control_plane:
        return "it lacks hyperkube, kubectl, ~/.kube, the apiserver config or the kube-* units"
    return None


def rank(f: RestoreFacts) -> tuple:
    """Sort key of eligible sources, best first: running etcd, the Kubernetes control plane, a data dir."""
    return (not f.node.etcd_active, not f.has_control_plane, not f.node.data_dir_present)


def choose_source(
    facts: list[RestoreFacts],
    *,
    wanted: str | None = None,
    exclude: tuple[str, ...] = (),
    healthy: dict[str, bool] | None = None,
    control_plane: bool = False,
) -> tuple[RestoreFacts | None, dict[str, str]]:
    """The source node (the wanted one when given, else the best eligible one) and why each other node is not.

    `healthy` maps node names to whether their member answers; when given, only healthy
    nodes are eligible (a member replacement copies from a working member).
    """
    reasons: dict[str, str] = {}
    eligible = []
    for f in facts:
        if f.name in exclude:
            continue
        why = source_problem(
            f, healthy=None if healthy is None else healthy.get(f.name, False), control_plane=control_plane
        )
        if why:
            reasons[f.name] = why
        else:
            eligible.append(f)
    if wanted:
        chosen = next((f for f in facts if wanted in (f.name, f.node.ip) and f.name not in exclude), None)
        return (chosen if chosen is not None and chosen.name not in reasons else None), reasons
    return (min(eligible, key=rank) if eligible else None), reasons
