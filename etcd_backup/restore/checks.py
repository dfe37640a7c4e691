"""Checks of a restored cluster run from the flow process: every member healthy, the right members, data counted."""

from __future__ import annotations

import time
from collections.abc import Callable

from etcd_backup import etcd
from etcd_backup.cluster import ClusterSpec
from etcd_backup.errors import EtcdUnavailable, RestoreRefused

POLL = 1.0


def wait_healthy(access: etcd.EtcdAccess, timeout: float) -> dict[str, str]:
    """Wait until every endpoint answers a linearizable read; EtcdUnavailable with each endpoint's state if not."""
    deadline = time.monotonic() + timeout
    while True:
        health = etcd.health(access)
        if all(state == "ok" for state in health.values()):
            return health
        if time.monotonic() > deadline:
            bad = "; ".join(f"{e}: {s}" for e, s in health.items() if s != "ok")
            raise EtcdUnavailable(f"not every member is healthy after {timeout:.0f} s: {bad}", step="wait healthy")
        time.sleep(POLL)


def check_members(access: etcd.EtcdAccess, spec: ClusterSpec) -> list[str]:
    """Raise unless the member list is exactly the spec's nodes with their peer URLs; returns 'name=peer' lines."""
    found = sorted(f"{m.name}={','.join(m.peer_urls)}" for m in etcd.members(access))
    wanted = sorted(f"{n.name}={spec.peer_url(n)}" for n in spec.nodes)
    if found != wanted:
        raise RestoreRefused(f"member list is {found}, expected {wanted}", step="check members")
    return found


def count_data(access: etcd.EtcdAccess) -> dict[str, dict[str, int]]:
    """Per endpoint: the revision and number of keys it serves now."""
    counts = {}
    for endpoint in access.endpoints:
        revision, keys = etcd.key_count(access, endpoint)
        counts[endpoint] = {"revision": revision, "keys": keys}
    return counts


def check_member(access: etcd.EtcdAccess, spec: ClusterSpec, name: str) -> list[str]:
    """Raise unless every member has started and `name` is listed with its peer URL; returns 'name=peer' lines."""
    found = etcd.members(access)
    lines = sorted(f"{m.name or '(unstarted)'}={','.join(m.peer_urls)}" for m in found)
    peer = spec.peer_url(spec.node(name))
    if not any(m.name == name and peer in m.peer_urls for m in found) or any(not m.name for m in found):
        raise RestoreRefused(
            f"member list is {lines}: expected every member started and {name}={peer}", step="check members", node=name
        )
    return lines


def for_plan(
    access: etcd.EtcdAccess, spec: ClusterSpec, failed: str | None = None, health_timeout: float = 180.0
) -> dict[str, Callable[[float], object]]:
    """The checks a plan's check steps name, each a callable(timeout) run from the flow process."""
    found: dict[str, Callable[[float], object]] = {
        "healthy": lambda timeout: wait_healthy(access, max(timeout, health_timeout)),
        "members": lambda timeout: check_members(access, spec),
        "data": lambda timeout: count_data(access),
    }
    if failed:
        found["member"] = lambda timeout: check_member(access, spec, failed)
    return found
