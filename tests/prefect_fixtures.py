"""A real Prefect API for the test session (prefect_test_harness, fresh database)."""

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(scope="session")
def prefect_api():
    """Start Prefect's own server once per session and point the client at it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def local_prefect_server(tmp_path_factory):
    """A real `prefect server start` (scheduler on) on a free port, shared by a module; yields LocalPrefectServer."""
    from deployments.local_server import LocalPrefectServer
    from tests.servers.seaweedfs import free_port

    server = LocalPrefectServer(tmp_path_factory.mktemp("prefect-home"), port=free_port(), scheduler_seconds=5)
    yield server.start()
    server.stop()
