"""Fixtures of the fault suite: etcd clusters shared by a module, filled once."""

from __future__ import annotations

import contextlib

import pytest

from tests.fleet.data import fill
from tests.fleet.etcd_cluster import EtcdCluster
from tests.fleet.fixtures import start


def _filled(tmp_path_factory, fleet_pki, keys: int, size: int):
    """A one-member etcd 3.5.1 holding `keys` Kubernetes-like keys of `size` bytes, stopped on the way out."""
    with contextlib.ExitStack() as stack:
        cluster = start(EtcdCluster(tmp_path_factory.mktemp("etcd"), fleet_pki, 1, "3.5.1"), stack)
        client = cluster.client(0)
        fill(client, keys, size)
        client.close()
        yield cluster


@pytest.fixture(scope="module")
def module_etcd(tmp_path_factory, fleet_pki):
    """A one-member etcd with ~13 MB of data, for a module's tests that only read it."""
    yield from _filled(tmp_path_factory, fleet_pki, 1200, 10_000)


@pytest.fixture(scope="module")
def small_etcd(tmp_path_factory, fleet_pki):
    """A one-member etcd with a little data, for a module's tests that only read it."""
    yield from _filled(tmp_path_factory, fleet_pki, 200, 1000)
