"""The execute path of both restore flows, with nodes that only record commands: chains, retries, rollback.

Through a real Prefect API (task runs, retries, wait_for and allow_failure are Prefect's), without SSH.
"""

from __future__ import annotations

import threading

import pytest
from prefect import flow

from etcd_backup.errors import NodeError
from etcd_backup.restore.actions import Run, Step
from etcd_backup.restore.executor import Journal, Runner
from etcd_backup.restore.plan import Plan
from flows.execute import execute
from tests.restore_helpers import task_runs

pytestmark = pytest.mark.restore


class RecordingNode:
    """Runs nothing: records commands; a command listed in `fail` raises (transient ones only once)."""

    def __init__(self, name: str, log: list, fail: dict[str, bool]):
        self.name, self.log, self.fail = name, log, fail
        self.lock = threading.Lock()

    def run(self, cmd: str, timeout: float = 0) -> None:
        with self.lock:
            self.log.append((self.name, cmd))
        if cmd in self.fail:
            transient = self.fail[cmd]
            if transient:
                del self.fail[cmd]
            err = NodeError(f"`{cmd}` failed", step="run", node=self.name)
            err.transient = transient
            raise err

    def close(self) -> None:
        pass


def step(node: str, phase: str, title: str, *, undo: bool = True, repeatable: bool = False) -> Step:
    cmd = f"{title} {node}"
    return Step(node, phase, title, (Run(cmd),), True, (Run(f"undo {cmd}"),) if undo else (), repeatable=repeatable)


@flow(name="execute-test")
def run_plan(plan: Plan, runner: Runner):
    return execute(plan, runner)


def test_a_failure_rolls_back_every_started_step_past_a_failed_undo(prefect_api, tmp_path):
    steps = (
        step("a", "stop", "stop"),
        step("b", "stop", "stop"),
        step("a", "copy", "copy", repeatable=True),  # fails once, transiently: retried
        step("b", "copy", "copy"),
        step("a", "aside", "aside"),
        step("a", "aside", "keep"),  # the second step of node a in this phase: its undo fails
        step("b", "aside", "aside"),  # fails for good: no retry, the plan stops
        step("a", "start", "start"),
    )
    plan = Plan(kind="restore", cluster_id="c", run_id="r", steps=steps)
    log: list = []
    fail = {"copy a": True, "aside b": False, "undo keep a": False}
    runner = Runner({n: RecordingNode(n, log, fail) for n in "ab"}, Journal(tmp_path / "j.jsonl"))
    state = run_plan(plan, runner, return_state=True)
    report = state.result()
    assert not report.ok and report.rolled_back and report.error == "[aside @ b] [run on b] `aside b` failed"
    status = {r.name: (r.status, r.attempts) for r in report.results}
    assert status["copy @ a"] == ("undone", 2)
    assert status["aside @ b"] == ("failed, undone", 1)
    assert status["keep @ a"] == ("undo failed", 1) and status["aside @ a"] == ("undone", 1)
    assert "start @ a" not in status
    assert report.rollback_errors == ["[undo: keep @ a] [run on a] `undo keep a` failed"]
    undone = [cmd for node, cmd in log if cmd.startswith("undo") and node == "a"]
    assert undone == ["undo keep a", "undo aside a", "undo copy a", "undo stop a"]  # newest first, past the failure
    runs = task_runs(state)
    assert runs["aside @ b"].state_type.value == "FAILED" and runs["copy @ a"].run_count == 2
    assert runs["undo: keep @ a"].state_type.value == "FAILED"
    assert runs["undo: stop @ a"].state_type.value == "COMPLETED"
