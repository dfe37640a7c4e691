"""A restore waiting for its cluster's lock says, every LOCK_REPORT_SECONDS, what holds it (real Prefect server)."""

from __future__ import annotations

import threading

import pytest

from tests.waiting import wait_until

pytestmark = [pytest.mark.restore]


def test_a_restore_waiting_for_the_cluster_lock_says_what_holds_it_then_takes_it(prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Running

    from flows import locks
    from flows.backup import backup_etcd
    from flows.restore_member import restore_member

    monkeypatch.setattr(locks, "LOCK_REPORT_SECONDS", 1)
    name = locks.cluster_lock("lk")
    locks.ensure_limit(name, 1)
    slot = locks.held(name, 600)  # a run that died holding it: nothing of lk runs
    slot.__enter__()
    ended: list[BaseException] = []
    restore = threading.Thread(target=lambda: _run(restore_member, ended, cluster="lk", failed_node="n1"))
    restore.start()
    try:
        wait_until(lambda: "still waiting for lock etcd-cluster-lk" in _logs(), "the first report")
        assert "no backup or restore of lk is running: a run that died holding it" in _logs()
        assert "delete etcd-cluster-lk under Concurrency in the UI" in _logs()
        with get_client(sync_client=True) as client:  # now a backup of lk is running
            backup = client.create_flow_run(backup_etcd, parameters={"cluster": "lk"}, state=Running())
        wait_until(lambda: f"etcd-backup run {backup.name!r} holds it" in _logs(), "the backup named")
        assert not ended and restore.is_alive()  # still waiting: nothing of the restore ran
    finally:
        slot.__exit__(None, None, None)
        restore.join(120)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(backup.id, Cancelled(), force=True)
    wait_until(lambda: "lock etcd-cluster-lk taken after" in _logs(), "the lock taken")
    assert ended and "lk" in str(ended[0])  # then the restore went on, to its first check: no block named lk


def _logs() -> str:
    """The log lines of the restore of lk, as the UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["etcd-restore-member"])))
        ids = [r.id for r in runs if r.parameters.get("cluster") == "lk"]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200) if ids else []
    return "\n".join(log.message for log in logs)


def _run(flow, ended: list, **parameters) -> None:
    try:
        flow(**parameters)
    except BaseException as exc:  # noqa: BLE001 - the test reads it
        ended.append(exc)
