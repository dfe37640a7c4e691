"""A failed run ends with one readable line (what failed, where, what to do), without tracebacks at info level."""

from __future__ import annotations

import io
import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, LogFilter

from blocks import EtcdCluster, LocalStorage
from etcd_backup.errors import ConfigError, StorageError
from etcd_backup.storage.local import LocalStorage as CoreLocalStorage
from flows.backup import backup_etcd, list_backups, prune_backups
from flows.diagnose import diagnose_cluster
from flows.failures import readable_failures
from flows.safety import confirm_or_refuse
from tests.factories import cluster_block

pytestmark = pytest.mark.operator
CLUSTER_ID = "uk8s-failures"


def run_logs(flow_run_id) -> list:
    """Every log record of the run and its task runs, as the UI shows them."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id={"any_": [flow_run_id]}))


@pytest.mark.parametrize(
    "a_flow, params",
    [
        (backup_etcd, {"storage": "local-directory-storage/x"}),
        (list_backups, {"storage": "local-directory-storage/x"}),
        (prune_backups, {"storage": "local-directory-storage/x"}),
        (diagnose_cluster, {}),
    ],
    ids=["backup", "list", "prune", "diagnose"],
)
def test_a_missing_block_ends_the_run_with_one_line(prefect_api, a_flow, params):
    state = a_flow(cluster="no-such-cluster", **params, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"{a_flow.name} failed: cluster block 'no-such-cluster' does not exist on ")
    assert "create it in the Prefect UI (Blocks)" in state.message
    assert "\n" not in state.message and "Flow run encountered an exception" not in state.message
    with pytest.raises(ConfigError):
        state.result()


def test_a_storage_failure_names_storage_path_and_cause_and_logs_no_traceback(prefect_api, tmp_path):
    not_a_dir = tmp_path / "backups"
    not_a_dir.write_text("a file where the backup directory should be")
    name = "failures-list"
    EtcdCluster(cluster_id=CLUSTER_ID, ca_pem="ca", cert_pem="cert", key_pem="key").save(name, overwrite=True)
    LocalStorage(directory=str(not_a_dir)).save(name, overwrite=True)
    state = list_backups(cluster=name, storage=f"local-directory-storage/{name}", return_state=True)
    assert state.is_failed()
    assert state.message == (
        f"etcd-list-backups failed: [local list] local storage file://{not_a_dir}: list of the directory failed: "
        f"{not_a_dir}: Not a directory (a file stands where a directory of the storage should be) "
        "(next: check the storage block (its check() proves every right) and that the storage answers)"
    )
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).state.message == state.message
    logs = run_logs(state.state_details.flow_run_id)
    assert logs and not [log.message for log in logs if "Traceback" in log.message]
    errors = [log.message for log in logs if log.level >= 40]
    assert any(m.startswith("etcd-list-backups failed: [local list]") for m in errors), errors


def test_local_storage_put_under_a_file_says_which_storage_path_and_cause(tmp_path):
    not_a_dir = tmp_path / "backups"
    not_a_dir.write_text("x")
    with pytest.raises(StorageError) as caught:
        CoreLocalStorage(not_a_dir).put("c/one.db", io.BytesIO(b"data"))
    assert caught.value.message == (
        f"local storage file://{not_a_dir}: put of c/one.db failed: {not_a_dir}/c: Not a directory "
        "(a file stands where a directory of the storage should be)"
    )


def test_local_storage_refuses_a_relative_path():
    with pytest.raises(ConfigError, match="'backups' is a relative path; give an absolute path"):
        CoreLocalStorage("backups")
    with pytest.raises(ValueError, match="'backups' is a relative path"):
        LocalStorage(directory="backups")


def test_diagnose_logs_no_worker_thread_timeout_warning(prefect_api, etcd_cluster):
    name = "failures-diagnose"
    cluster_block(etcd_cluster, CLUSTER_ID).save(name, overwrite=True)
    state = diagnose_cluster(cluster=name, return_state=True)
    assert state.is_completed(), state.message
    messages = [log.message for log in run_logs(state.state_details.flow_run_id)]
    assert any("endpoint health" in m for m in messages)
    assert not [m for m in messages if "worker thread" in m or "Timeout of" in m]


@flow(name="confirm-test")
@readable_failures
def confirm_flow(cluster_id: str, timeout: int) -> str:
    """A restore's confirmation step alone."""
    confirm_or_refuse(cluster_id, "Testing the confirmation", timeout=timeout, poll_interval=1)
    return "confirmed"


def test_a_confirmation_timeout_says_nothing_was_changed(prefect_api):
    state = confirm_flow("uk8s-confirm", 3, return_state=True)
    assert state.is_failed()
    expected = (
        "confirm-test failed: [confirm] nobody confirmed within 3 s, so nothing was changed; "
        "start the run again to restore"
    )
    assert state.message == expected
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).state.message == expected


def _paused_run(name: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [name]}))
            if runs and runs[0].state.is_paused():
                return runs[0]
            time.sleep(0.5)
    raise AssertionError(f"flow run {name} did not pause")


def test_the_confirmation_field_is_required_and_labelled(prefect_api):
    from prefect.flow_runs import resume_flow_run
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    name = "confirm-required"
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            state=confirm_flow.with_options(flow_run_name=name)("uk8s-confirm", 120, return_state=True)
        )
    )
    runner.start()
    try:
        paused = _paused_run(name)
        schema = read_flow_run_input(keyset_from_paused_state(paused.state)["schema"], flow_run_id=paused.id)
        assert schema["required"] == ["cluster_name"]
        assert schema["properties"]["cluster_name"]["title"] == "Cluster name (required)"
        resume_flow_run(paused.id, run_input={"cluster_name": "uk8s-confirm"})
    finally:
        runner.join(120)
    assert outcome["state"].is_completed() and outcome["state"].result() == "confirmed"


def test_retention_tiers_reach_the_flows(prefect_api, etcd_cluster, tmp_path):
    name = "failures-tiers"
    cluster_block(etcd_cluster, "uk8s-tiers").save(name, overwrite=True)
    LocalStorage(directory=str(tmp_path / "backups")).save(name, overwrite=True)
    storage = f"local-directory-storage/{name}"
    for _ in range(3):
        backup_etcd(cluster=name, storage=storage, keep={"last": 2, "daily": 1})
        time.sleep(1.1)  # backup names carry the second
    manifests = sorted(p.name for p in (tmp_path / "backups").rglob("*.manifest.json"))
    assert len(manifests) == 2
    would = prune_backups(cluster=name, storage=storage, keep={"last": 1, "daily": 1}, dry_run=True)
    assert len(would) == 1 and would[0] + ".manifest.json" == manifests[0]
    assert prune_backups(cluster=name, storage=storage, keep="keep 2, daily 1") == []


def test_diagnose_names_the_deployment_an_entry_serves(prefect_api):
    from flows.diagnose import deployment_name
    from flows.restore_cluster import restore_cluster

    tags = ["etcd-backup", "cluster:named"]
    restore_cluster.to_deployment(name="named-s3", parameters={"cluster": "named", "storage": "a/b"}, tags=tags).apply()
    assert deployment_name("etcd-restore-cluster", "named") == "named-s3"
    assert deployment_name("etcd-restore-cluster", "other") == "other"
