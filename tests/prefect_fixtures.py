"""A real Prefect API for the test session, and a check at its end that no secret reached Prefect.

Fixtures and tests that put a secret into a block (an S3 secret key, an SSH private key or
password, the etcd client key, an age identity, a webhook URL) register it with
`register_secret`. When the session's Prefect server stops, its whole database (logs,
artifacts, flow and task runs with their parameters and state messages, events) and the
local result storage are searched for every registered secret: block documents are
encrypted at rest, so any plain occurrence is a leak and fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

SECRETS: dict[str, str] = {}  # what the secret is -> its text
MIN_FRAGMENT = 24  # lines of a multi-line key at least this long are searched for one by one


def register_secret(what: str, text: str | None) -> None:
    """Remember a secret this session puts into a block, to search for it when the session ends."""
    if text:
        SECRETS[what] = text


def fragments(text: str) -> set[bytes]:
    """The whole secret and each long line of it (a key printed in part is still a leak)."""
    parts = {text.strip()} | {line.strip() for line in text.splitlines() if len(line.strip()) >= MIN_FRAGMENT}
    return {p.encode() for p in parts if p and "-----" not in p}


def find_leaks(places: list[Path]) -> list[str]:
    """'<what> in <file>' for every registered secret found in the files under places."""
    files = [f for place in places if place.exists() for f in (place.rglob("*") if place.is_dir() else [place])]
    leaks = []
    for path in (f for f in files if f.is_file()):
        data = path.read_bytes()
        leaks += [f"{what} in {path.name}" for what, text in SECRETS.items() if any(p in data for p in fragments(text))]
    return leaks


def drain_clients(timeout: float = 60) -> None:
    """Send the logs and events still queued, for at most timeout seconds each; give up on the rest.

    The harness drains them without a deadline on its way out, and a queue whose server is gone (a test's own
    server, stopped) would hang the session there; a queue given up on here is out of the harness's way.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)


@pytest.fixture(scope="session")
def prefect_api():
    """Start Prefect's own server once per session and point the client at it; search it for secrets at the end."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]).parent
        yield
        drain_clients()
        leaks = find_leaks([database, Path(PREFECT_LOCAL_STORAGE_PATH.value())])
        assert not leaks, "secrets reached Prefect's database or result storage: " + "; ".join(leaks)


@pytest.fixture(scope="module")
def local_prefect_server(tmp_path_factory):
    """A real `prefect server start` (scheduler on) on a free port, shared by a module; yields LocalPrefectServer."""
    from deployments.local_server import LocalPrefectServer
    from tests.servers.seaweedfs import free_port

    server = LocalPrefectServer(tmp_path_factory.mktemp("prefect-home"), port=free_port(), scheduler_seconds=5)
    yield server.start()
    server.stop()
