"""Deployments: the schedule file is checked before anything is deployed; a served deployment fires on its cron."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deployments.config import BackupSchedule, load_schedules
from etcd_backup.errors import ConfigError
from tests.factories import cluster_block
from tests.servers.seaweedfs import free_port

pytestmark = pytest.mark.backup

GOOD = """
[[backup]]
cluster = "prod"
storage = "ufile-storage/prod"
"""


@pytest.mark.parametrize(
    "cron, message",
    [
        ("0 0 * *", "has 4 fields"),
        ("61 0 * * *", "is not valid"),
        ("0 0 * * * *", "has 6 fields"),
        ("every day", "has 2 fields"),
    ],
)
def test_invalid_cron_is_refused_with_a_clear_message(tmp_path, cron, message):
    path = tmp_path / "backups.toml"
    path.write_text(GOOD + f'cron = "{cron}"\n')
    with pytest.raises(ConfigError, match=message):
        load_schedules(path)
    run = subprocess.run(
        [sys.executable, "-m", "deployments", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "error: " in run.stderr and cron in run.stderr and "Traceback" not in run.stderr


def test_schedule_defaults_follow_the_runbook(tmp_path):
    path = tmp_path / "backups.toml"
    path.write_text(GOOD)
    [schedule] = load_schedules(path)
    assert (schedule.cron, schedule.timezone, schedule.keep, schedule.compression) == ("0 0 * * *", "UTC", 7, "zstd")
    assert schedule.parameters() == {
        "cluster": "prod",
        "storage": "ufile-storage/prod",
        "keep": 7,
        "compression": "zstd",
        "encrypt_to": [],
        "notify": None,
    }


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("timezone", "Mars/Olympus", "unknown timezone"),
        ("storage", "prod", "block-type-slug"),
        ("compression", "xz", "not one of"),
        ("keep", 0, "greater than or equal to 1"),
    ],
)
def test_bad_schedule_entries_name_the_problem(field, value, message):
    with pytest.raises(Exception, match=message):
        BackupSchedule(**{"cluster": "prod", "storage": "ufile-storage/prod", field: value})


def test_missing_or_empty_schedule_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_schedules(tmp_path / "nope.toml")
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(ConfigError, match="no \\[\\[backup\\]\\]"):
        load_schedules(tmp_path / "empty.toml")


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` (with its scheduler) on a free port."""
    from deployments.local_server import LocalPrefectServer

    server = LocalPrefectServer(tmp_path / "prefect-home", port=free_port(), scheduler_seconds=5).start()
    yield server
    server.stop()


def _completed_runs(api: str, deployment: str) -> list[dict]:
    found = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "deployments": {"name": {"any_": [deployment]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        },
        timeout=10,
    )
    found.raise_for_status()
    return found.json()


@pytest.mark.slow
def test_served_deployment_fires_on_schedule(prefect_server, etcd_cluster, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks import LocalStorage

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        cluster_block(etcd_cluster, "uk8s-sched").save("sched")
        LocalStorage(directory=str(tmp_path / "backups")).save("sched")
    config = tmp_path / "backups.toml"
    config.write_text(
        '[[backup]]\ncluster = "sched"\nstorage = "local-directory-storage/sched"\ncron = "* * * * *"\nkeep = 2\n'
    )
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "deployments", "serve", "--config", str(config)],
        env={**prefect_server.env(), "PREFECT_RUNNER_POLL_FREQUENCY": "5"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        runs = []
        while not runs and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(5)
            runs = _completed_runs(prefect_server.api_url, "sched")
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(30)
    assert runs, (tmp_path / "serve.log").read_text()[-3000:]
    assert runs[0]["parameters"]["cluster"] == "sched" and runs[0]["auto_scheduled"]
    assert any(p.name.endswith(".db.zst.manifest.json") for p in (tmp_path / "backups").iterdir())


def test_prefect_yaml_is_generated_from_the_example_and_points_at_real_flows_with_valid_parameters():
    import inspect

    import yaml
    from prefect.utilities.importtools import import_object

    from deployments.config import load_config
    from deployments.prefect_yaml import render

    text = open("prefect.yaml").read()
    generated = render(load_config(Path("backups.example.toml")), "etcd-backup", "backups.example.toml")
    assert text == generated, "prefect.yaml is stale: python -m deployments yaml --config backups.example.toml"
    spec = yaml.safe_load(text)
    assert spec["pull"] == [] and "$PWD" not in text  # workers import the package: no machine path
    for deployment in spec["deployments"]:
        flow = import_object(deployment["entrypoint"])  # a module path, as workers load it
        signature = inspect.signature(flow.fn)
        params = deployment.get("parameters") or {}
        assert set(params) <= set(signature.parameters), deployment
        signature.bind_partial(**params)
        for schedule in deployment.get("schedules", []):
            BackupSchedule(cluster="x", storage="a/b", cron=schedule["cron"], timezone=schedule["timezone"])


def test_served_deployments_are_named_after_the_cluster():
    from deployments.serve import all_deployments

    deployments = all_deployments([BackupSchedule(cluster="prod", storage="ufile-storage/prod")])
    names = {(d.flow_name, d.name) for d in deployments}
    assert {
        ("etcd-backup", "prod"),
        ("etcd-diagnose", "prod"),
        ("etcd-restore-cluster", "prod"),
        ("etcd-restore-member", "prod"),
        ("etcd-verify-backup", "prod"),
    } <= names
    [backup] = [d for d in deployments if d.flow_name == "etcd-backup"]
    assert backup.concurrency_limit == 1 and backup.concurrency_options.collision_strategy == "ENQUEUE"
    assert backup.schedules[0].schedule.cron == "0 0 * * *"
    [verify] = [d for d in deployments if d.flow_name == "etcd-verify-backup"]
    assert verify.schedules[0].schedule.cron == "0 6 * * 1" and verify.parameters["backup"] == "latest"
    restores = [d for d in deployments if d.flow_name.startswith("etcd-restore")]
    assert restores and all(d.concurrency_limit is None for d in restores)  # a lease blip must not cancel them
