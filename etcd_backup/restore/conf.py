"""etcd.conf for a restored member: the runbook's rewrite loop, plus the new cluster's token and member list."""

from __future__ import annotations

import re

CLUSTER_KEYS = ("ETCD_NAME", "ETCD_INITIAL_CLUSTER", "ETCD_INITIAL_CLUSTER_TOKEN", "ETCD_INITIAL_CLUSTER_STATE")


def _key(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip()


def replace_ip(line: str, old: str, new: str) -> str:
    """The runbook's `sed s/OLD_IP/NEW_IP/g`, but only on whole addresses (10.0.0.1 never matches 10.0.0.11)."""
    if old == new:
        return line
    return re.sub(rf"(?<![0-9.]){re.escape(old)}(?![0-9])", new, line)


def rewrite_conf(
    text: str, *, name: str, source_ip: str, node_ip: str, initial_cluster: str, token: str, state: str = "existing"
) -> str:
    """etcd.conf for member `name` at node_ip, made from a config written for source_ip.

    Like the runbook's loop: ETCD_NAME becomes the member's name and the source node's IP
    becomes this node's everywhere else. ETCD_INITIAL_CLUSTER is the restored member list,
    ETCD_INITIAL_CLUSTER_TOKEN the restore's fresh token, and ETCD_INITIAL_CLUSTER_STATE
    "existing": etcd ignores all three once its data dir holds a WAL (as after
    `snapshot restore`), and "existing" keeps a later start on an emptied data dir from
    founding a second cluster.
    """
    values = {
        "ETCD_NAME": name,
        "ETCD_INITIAL_CLUSTER": f'"{initial_cluster}"',
        "ETCD_INITIAL_CLUSTER_TOKEN": f'"{token}"',
        "ETCD_INITIAL_CLUSTER_STATE": f'"{state}"',
    }
    lines, seen = [], set()
    for line in text.splitlines():
        key = _key(line)
        if key in values:
            lines.append(f"{key}={values[key]}")
            seen.add(key)
        else:
            lines.append(replace_ip(line, source_ip, node_ip))
    lines += [f"{key}={values[key]}" for key in CLUSTER_KEYS if key not in seen]
    return "\n".join(lines) + "\n"
