"""Pytest fixtures for the scale tests: a throwaway PostgreSQL and a Prefect server with two workers on it."""

from __future__ import annotations

import secrets

import pytest

from tests.servers.postgres import PostgresServer
from tests.servers.prefect_cluster import PrefectCluster

WORKER_LIMIT = 6  # flow-run processes per worker: runs beyond it wait on the server, not in a process
# Tests mark a silent run Crashed after 60 s without a heartbeat (workers beat every 30 s; 90 s in production).
ZOMBIE_AFTER_SECONDS = 60


@pytest.fixture(scope="session")
def postgres_server():
    """A running throwaway PostgreSQL cluster (Debian's postgresql package)."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prefect_cluster(postgres_server, tmp_path_factory):
    """A Prefect server on a fresh PostgreSQL database, a process pool and two online workers."""
    url = postgres_server.create_database(f"prefect_{secrets.token_hex(4)}")
    cluster = PrefectCluster(tmp_path_factory.mktemp("prefect-cluster"), url)
    try:
        cluster.start(workers=2, limit=WORKER_LIMIT)
        cluster.crash_silent_runs(after_seconds=ZOMBIE_AFTER_SECONDS)
        yield cluster
    finally:
        cluster.stop()
