"""Run a restore plan: phase by phase, nodes in parallel, timing every step; on failure undo in reverse order."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from etcd_backup.errors import EtcdBackupError
from etcd_backup.nodes import Node
from etcd_backup.restore.actions import Check, Relay, Run, Step, Upload, Write

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What happened to one step: done, failed, undone or undo failed; how long it took; the error."""

    node: str
    phase: str
    title: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    undo_seconds: float | None = None


@dataclass
class ExecutionReport:
    """The outcome of a plan: every step's result, the first error, whether it was rolled back, check results."""

    ok: bool = True
    results: list[StepResult] = field(default_factory=list)
    error: str | None = None
    rolled_back: bool = False
    rollback_errors: list[str] = field(default_factory=list)
    checks: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0


class Executor:
    """Runs the steps of a plan on Nodes; `checks` maps a Check name to a callable(timeout) run in this process."""

    def __init__(
        self,
        nodes: dict[str, Node],
        snapshot_path: str | None,
        checks: dict[str, Callable[[float], object]] | None = None,
        logger=None,
    ):
        self.nodes, self.snapshot_path, self.checks = nodes, snapshot_path, checks or {}
        self.log = logger or log
        self.report = ExecutionReport()
        self._lock = threading.Lock()

    def run(self, phases: list[tuple[str, list[Step]]]) -> ExecutionReport:
        """Run every phase; on the first failure undo every started destructive step, newest first."""
        started = time.monotonic()
        begun: list[tuple[Step, StepResult]] = []
        for phase, steps in phases:
            self.log.info("phase %s: %d step(s) on %s", phase, len(steps), ", ".join(sorted({s.node for s in steps})))
            errors = self._parallel(steps, begun)
            if errors:
                self.report.ok, self.report.error = False, errors[0]
                self._rollback(begun)
                break
        self.report.seconds = round(time.monotonic() - started, 3)
        return self.report

    def _parallel(self, steps: list[Step], begun: list) -> list[str]:
        """Run the phase's steps, one thread per node; returns the errors."""
        by_node: dict[str, list[Step]] = {}
        for step in steps:
            by_node.setdefault(step.node, []).append(step)
        with ThreadPoolExecutor(max_workers=len(by_node)) as pool:
            outcomes = list(pool.map(lambda node_steps: self._node_steps(node_steps, begun), by_node.values()))
        return [e for e in outcomes if e]

    def _node_steps(self, steps: list[Step], begun: list) -> str | None:
        for step in steps:
            result = StepResult(step.node, step.phase, step.title, "running")
            with self._lock:
                self.report.results.append(result)
                begun.append((step, result))
            t0 = time.monotonic()
            try:
                for action in step.actions:
                    self._act(step, action)
                result.status = "done"
            except Exception as exc:  # noqa: BLE001 - any failure stops the plan and is reported
                result.status, result.error = "failed", _message(exc)
                self.log.error("%s: step %s failed: %s", step.node, step.title, result.error)
                return f"[{step.phase}: {step.title} on {step.node}] {result.error}"
            finally:
                result.seconds = round(time.monotonic() - t0, 3)
        return None

    def _act(self, step: Step, action) -> None:
        """Do one action, logged with the node and step."""
        self.log.info("%s: step %s: %s", step.node, step.title, action.describe())
        if isinstance(action, Check):
            self.report.checks[action.name] = self.checks[action.name](action.timeout)
            return
        node = self.nodes[step.node]
        if isinstance(action, Run):
            node.run(action.cmd, timeout=action.timeout)
        elif isinstance(action, Relay):
            copy = self.nodes[action.source].copy_tree_to if action.tree else self.nodes[action.source].copy_file_to
            copy(node, action.path, action.dest)
        elif isinstance(action, Upload):
            if self.snapshot_path is None:
                raise ValueError("this plan uploads a snapshot but none was fetched")
            node.put_file(self.snapshot_path, action.dest, timeout=3600)
        elif isinstance(action, Write):
            node.write(action.path, action.text, action.mode)

    def _rollback(self, begun: list[tuple[Step, StepResult]]) -> None:
        """Undo the destructive steps that started, phase by phase in reverse; nodes in parallel within a phase."""
        undoable = [(s, r) for s, r in begun if s.destructive and s.undo]
        if not undoable:
            return
        self.report.rolled_back = True
        self.log.warning("rolling back %d step(s)", len(undoable))
        phases: list[list[tuple[Step, StepResult]]] = []
        for item in reversed(undoable):
            if phases and phases[-1][0][0].phase == item[0].phase:
                phases[-1].append(item)
            else:
                phases.append([item])
        for group in phases:
            by_node: dict[str, list] = {}
            for item in group:
                by_node.setdefault(item[0].node, []).append(item)
            with ThreadPoolExecutor(max_workers=len(by_node)) as pool:
                list(pool.map(self._undo_node, by_node.values()))

    def _undo_node(self, items: list[tuple[Step, StepResult]]) -> None:
        for step, result in items:
            t0 = time.monotonic()
            try:
                for action in step.undo:
                    self.log.info("%s: undo %s: %s", step.node, step.title, action.describe())
                    self.nodes[step.node].run(action.cmd, timeout=action.timeout)
                result.status = "undone" if result.status == "done" else result.status + ", undone"
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                msg = f"[undo {step.title} on {step.node}] {_message(exc)}"
                result.status = "undo failed"
                with self._lock:
                    self.report.rollback_errors.append(msg)
                self.log.error(msg)
            finally:
                result.undo_seconds = round(time.monotonic() - t0, 3)


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EtcdBackupError) else f"{exc.__class__.__name__}: {exc}"
