"""The demo, started as a new user would (twice, on a busy port), and every flow run from its API like the UI does."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.fleet.fixtures import require_root
from tests.servers.seaweedfs import free_port

pytestmark = [
    pytest.mark.operator,
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.fleet,
    pytest.mark.xdist_group("demo"),  # one demo for the module, on one worker
]


def _demo(*args, **kw) -> list[str]:
    return [sys.executable, "-m", "deployments.demo", *args]


def _env() -> dict:
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_HOME"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo started in its own directory on a free port; yields (dir, port, process, output path)."""
    require_root()
    tmp_path = tmp_path_factory.mktemp("demo")
    directory, port, out = tmp_path / "demo", free_port(), tmp_path / "demo.out"
    proc = _start(directory, port, out)
    try:
        yield directory, port, proc, out
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a demo as Ctrl-C would (its own handler stops what it started)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)


def _start(directory, port, out, *extra) -> subprocess.Popen:
    proc = subprocess.Popen(
        _demo("--dir", str(directory), "--port", str(port), "--keys", "300", *extra),
        env=_env(),
        stdout=open(out, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while "export PREFECT_API_AUTH_STRING=" not in out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-4000:]
        time.sleep(1)
    return proc


def _exports(out) -> dict[str, str]:
    found = {}
    for line in out.read_text().splitlines():
        if line.strip().startswith("export "):
            key, value = line.strip().removeprefix("export ").split("=", 1)
            found[key] = value.strip("'")
    return found


def test_a_second_demo_is_refused_and_deletes_nothing(demo):
    directory, port, proc, out = demo
    before = sorted(p.relative_to(directory) for p in (directory / "backups").rglob("*"))
    assert before
    started = time.monotonic()
    second = subprocess.run(
        _demo("--dir", str(directory), "--port", str(free_port()), "--fresh"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1
    assert f"a demo is already running in {directory} (PID {proc.pid}, UI http://127.0.0.1:{port})" in second.stderr
    assert "nothing was changed" in second.stderr and time.monotonic() - started < 30
    assert sorted(p.relative_to(directory) for p in (directory / "backups").rglob("*")) == before
    assert proc.poll() is None


def test_a_busy_port_fails_at_once_in_the_terminal(demo, tmp_path):
    _, port, _, _ = demo
    started = time.monotonic()
    other = subprocess.run(
        _demo("--dir", str(tmp_path / "other"), "--port", str(port)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 1 and time.monotonic() - started < 30
    assert f"port {port} on 127.0.0.1 is already in use" in other.stderr


def test_the_demo_keeps_its_secrets_to_itself(demo):
    directory, port, _, out = demo
    exports = _exports(out)
    assert exports["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
    auth = exports["PREFECT_API_AUTH_STRING"]
    home = directory / "prefect"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "prefect.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "secrets" / "block-encryption.key").stat().st_mode) == 0o600
    with sqlite3.connect(home / "prefect.db") as db:
        keys = [row[0] for row in db.execute("select key from configuration")]
    assert "ENCRYPTION_KEY" not in keys  # the block-secret key lives outside the database
    url = exports["PREFECT_API_URL"]
    assert httpx.post(f"{url}/flows/filter", json={}, timeout=10).status_code == 401
    assert httpx.post(f"{url}/flows/filter", json={}, auth=tuple(auth.split(":", 1)), timeout=10).status_code == 200
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}


def _run(name: str, exports: dict, **parameters):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = {
        PREFECT_API_URL: exports["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: exports["PREFECT_API_AUTH_STRING"],
    }
    with temporary_settings(settings):
        return run_deployment(name, parameters=parameters, timeout=900)


def _break(directory, what: str) -> str:
    run = subprocess.run(
        _demo("--dir", str(directory), "--break", what), env=_env(), capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_every_flow_works_from_the_demo(demo):
    directory, _, _, out = demo
    exports = _exports(out)
    diagnosis = _run("etcd-diagnose/demo", exports)
    assert diagnosis.state.is_completed(), diagnosis.state.message
    refused = _run("etcd-restore-cluster/demo", exports, dry_run=True)
    assert refused.state.is_failed()
    assert "3 of 3" in refused.state.message and "\n" not in refused.state.message
    dry = _run("etcd-restore-cluster/demo", exports, dry_run=True, force=True)
    assert dry.state.is_completed(), dry.state.message

    assert "quorum lost: etcd on etcd2 and etcd3 crashed" in _break(directory, "quorum")
    restored = _run("etcd-restore-cluster/demo", exports, confirm=True)
    assert restored.state.is_completed(), restored.state.message

    assert "member etcd3 failed" in _break(directory, "member")
    replaced = _run("etcd-restore-member/demo", exports, failed_node="etcd3", confirm=True)
    assert replaced.state.is_completed(), replaced.state.message
    assert _run("etcd-diagnose/demo", exports).state.is_completed()


def test_a_restarted_demo_keeps_its_data_and_fresh_starts_over(demo, tmp_path):
    directory, port, proc, out = demo
    backups = {p.name for p in (directory / "backups").iterdir()}
    _stop(proc)
    again = _start(directory, port, tmp_path / "again.out")
    try:
        exports = _exports(tmp_path / "again.out")
        assert backups <= {p.name for p in (directory / "backups").iterdir()}
        listed = _run("etcd-list-backups/demo", exports)  # blocks still decrypt with the kept key
        assert listed.state.is_completed(), listed.state.message
    finally:
        _stop(again)
    fresh = _start(directory, port, tmp_path / "fresh.out", "--fresh")
    try:
        assert not backups & {p.name for p in (directory / "backups").iterdir()}  # earlier backups deleted
    finally:
        _stop(fresh)
