"""Pytest plugin: etcd clusters (`etcd_cluster`, `make_etcd_cluster`) and master nodes (`fleet`, `make_fleet`)."""

import os
import time

import pytest

from . import fleet_net
from .etcd_cluster import EtcdCluster
from .nodes import Fleet
from .pki import make_pki


@pytest.fixture(scope="session")
def fleet_pki(tmp_path_factory):
    """The session's CA and etcd certificate (ca.pem, etcd.pem, etcd-key.pem) for every fleet IP."""
    return make_pki(tmp_path_factory.mktemp("pki"), fleet_net())


@pytest.fixture
def etcd_version(request):
    """The etcd version under test: "3.5.1" unless parametrized indirectly."""
    return getattr(request, "param", "3.5.1")


@pytest.fixture
def make_etcd_cluster(tmp_path_factory, fleet_pki, etcd_version):
    """Factory `make(members=3, version=etcd_version)` -> started EtcdCluster; all stopped at teardown."""
    clusters = []

    def make(members: int = 3, version: str | None = None) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), fleet_pki, members, version or etcd_version)
        clusters.append(cluster)
        started = time.monotonic()
        cluster.start()
        cluster.start_seconds = time.monotonic() - started
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def etcd_cluster(make_etcd_cluster):
    """A healthy 3-member host-process etcd cluster of `etcd_version` with TLS."""
    return make_etcd_cluster()


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("master nodes need root: mount namespaces and sshd on port 22 of the node IPs")


@pytest.fixture
def make_fleet(tmp_path_factory, fleet_pki, etcd_version):
    """Factory `make(size=3, version=etcd_version)` -> started Fleet of master nodes; all stopped at teardown."""
    _require_root()
    fleets = []

    def make(size: int = 3, version: str | None = None) -> Fleet:
        fleet = Fleet(tmp_path_factory.mktemp("fleet"), fleet_pki, size, version or etcd_version)
        fleets.append(fleet)
        started = time.monotonic()
        fleet.start()
        fleet.start_seconds = time.monotonic() - started
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
def fleet(make_fleet):
    """Three master nodes (etcd1..etcd3 on 127.0.N.11..) running etcd `etcd_version` under systemctl."""
    return make_fleet()
