"""Pytest plugin: etcd clusters (`etcd_cluster`, `make_etcd_cluster`) and master nodes (`fleet`, `make_fleet`)."""

import contextlib
import os
import shutil
import time

import pytest

from ..prefect_fixtures import register_secret
from . import fleet_net
from .etcd_cluster import EtcdCluster
from .nodes import Fleet
from .pki import make_pki


@pytest.fixture(scope="session")
def fleet_pki(tmp_path_factory):
    """The session's CA and etcd certificate (ca.pem, etcd.pem, etcd-key.pem) for every fleet IP."""
    pki = make_pki(tmp_path_factory.mktemp("pki"), fleet_net())
    register_secret("the etcd client key (etcd-key.pem)", pki.key.read_text())
    return pki


@pytest.fixture
def etcd_version(request):
    """The etcd version under test: "3.5.1" unless parametrized indirectly."""
    return getattr(request, "param", "3.5.1")


def start(thing, stack: contextlib.ExitStack):
    """Start a cluster or fleet, timing it; the stack stops it and frees its disk (64 MB WAL files, binaries)."""
    stack.callback(shutil.rmtree, thing.workdir, ignore_errors=True)
    stack.callback(thing.stop)
    started = time.monotonic()
    register_secret("the master nodes' SSH private key", getattr(thing, "ssh_private_key", None))
    thing.start()
    thing.start_seconds = time.monotonic() - started
    return thing


def require_root() -> None:
    """Skip (a failure in CI, where skips fail the run) when master nodes cannot be built."""
    if os.geteuid() != 0:
        pytest.skip(reason="master nodes need root: mount namespaces and sshd on port 22 of the node IPs")


@pytest.fixture
def make_etcd_cluster(tmp_path_factory, fleet_pki, etcd_version):
    """Factory `make(members=3, version=etcd_version)` -> started EtcdCluster; all stopped at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda members=3, version=None: start(
            EtcdCluster(tmp_path_factory.mktemp("etcd"), fleet_pki, members, version or etcd_version), stack
        )


@pytest.fixture
def etcd_cluster(make_etcd_cluster):
    """A healthy 3-member host-process etcd cluster of `etcd_version` with TLS."""
    return make_etcd_cluster()


@pytest.fixture
def make_fleet(tmp_path_factory, fleet_pki, etcd_version):
    """Factory `make(size=3, version=etcd_version)` -> started Fleet of master nodes; all stopped at teardown."""
    require_root()
    with contextlib.ExitStack() as stack:
        yield lambda size=3, version=None: start(
            Fleet(tmp_path_factory.mktemp("fleet"), fleet_pki, size, version or etcd_version), stack
        )


@pytest.fixture(scope="module")
def module_fleet(tmp_path_factory, fleet_pki):
    """One 3.5.1 fleet shared by a module's tests that change only their own files."""
    require_root()
    with contextlib.ExitStack() as stack:
        yield start(Fleet(tmp_path_factory.mktemp("fleet"), fleet_pki), stack)


@pytest.fixture
def fleet(make_fleet):
    """Three master nodes (etcd1..etcd3 on 127.0.N.11..) running etcd `etcd_version` under systemctl."""
    return make_fleet()
