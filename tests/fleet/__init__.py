"""Test fleet: real etcd clusters and UK8S-like master nodes on one machine.

Addresses: every fleet IP is 127.0.N.x with N = FLEET_NET (env, default 0) plus the
pytest-xdist worker index (gw0 -> +0, gw1 -> +1, ...), so give concurrent runs FLEET_NET
values further apart than their worker counts. Within a process, clusters and fleets get
blocks 127.0.N.11.., .21.., .31.. (a block whose ports 22/2379/2380 are busy is skipped).

- etcd_cluster.EtcdCluster: host-process etcd members with client and peer TLS (no root).
- nodes.Fleet / nodes.MasterNode: master nodes = sshd per IP in its own mount namespace,
  etcd run by the systemctl stand-in (see nodes.py for the rules restore code must follow).
- data.fill: Kubernetes-like keys and values, fast.
- fixtures: fleet_pki, etcd_version, etcd_cluster, make_etcd_cluster, fleet, make_fleet.
"""

import os
import re


def fleet_net() -> int:
    """Return N of the 127.0.N.x addresses this process may use."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    match = re.fullmatch(r"gw(\d+)", worker)
    return int(os.environ.get("FLEET_NET", "0")) + (int(match.group(1)) if match else 0)
