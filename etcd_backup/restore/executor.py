"""Do and undo one planned step on its node, keep the run's journal, and say what a rollback must undo.

The order of a run (phases in turn, nodes in parallel, undo newest first) belongs to the
flow, which runs each step as one Prefect task run calling `Runner.run` or `Runner.undo`.
The journal is the run's own record of every step, kept in this process and appended to
a local JSON-lines file as it changes: what ran and what must be undone is known
without the Prefect API. The nodes keep their own record too (leftovers.NodeRecord): each
step's undo commands, written before the step changes the node, for a run that never ends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from etcd_backup.errors import EtcdBackupError, NodeError
from etcd_backup.nodes import Node
from etcd_backup.restore.actions import Check, Relay, Run, Step, Upload, Write
from etcd_backup.restore.feed import SnapshotFeed
from etcd_backup.restore.leftovers import NodeRecord

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What happened to one step: running, done, failed, undone or undo failed; attempts, timings, errors."""

    name: str
    node: str
    phase: str
    title: str
    destructive: bool = False
    status: str = "running"
    attempts: int = 0
    started: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    undo_seconds: float | None = None
    undo_error: str | None = None


@dataclass
class ExecutionReport:
    """The outcome of a plan: every started step's result, the first error, the rollback, check results."""

    ok: bool = True
    results: list[StepResult] = field(default_factory=list)
    error: str | None = None
    rolled_back: bool = False
    rollback_errors: list[str] = field(default_factory=list)
    checks: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    unfinished: dict[str, str] = field(default_factory=dict)  # node -> its rollback script, where the run stays open


class Journal:
    """Every step's result in one run, safe to update from task threads, appended to a file at each change."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.checks: dict[str, object] = {}
        self._results: dict[str, StepResult] = {}
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def begin(self, step: Step) -> StepResult:
        """Record that a step (or its retry) starts."""
        with self._lock:
            r = self._results.get(step.name) or StepResult(
                step.name, step.node, step.phase, step.title, step.destructive
            )
            self._results[step.name] = r
            r.status, r.error, r.attempts = "running", None, r.attempts + 1
            r.started = round(time.monotonic() - self._t0, 3)
            self._write(r, "begin")
            return r

    def end(self, step: Step, seconds: float, error: str | None = None) -> StepResult:
        """Record that a step finished: done, or failed with the error."""
        with self._lock:
            r = self._results[step.name]
            r.status, r.error, r.seconds = ("failed" if error else "done"), error, round(seconds, 3)
            self._write(r, "end")
            return r

    def undone(self, step: Step, seconds: float, error: str | None = None) -> StepResult:
        """Record that a step's undo finished (or failed with the error)."""
        with self._lock:
            r = self._results[step.name]
            r.undo_seconds, r.undo_error = round(seconds, 3), error
            r.status = "undo failed" if error else ("undone" if r.status == "done" else f"{r.status}, undone")
            self._write(r, "undo")
            return r

    def result(self, name: str) -> StepResult | None:
        """The result of the step with this name, if it started."""
        with self._lock:
            return self._results.get(name)

    def started(self, steps: list[Step]) -> list[Step]:
        """Those of the steps that started, in the order they started."""
        began = [s for s in steps if s.name in self._results]
        return sorted(began, key=lambda s: self._results[s.name].started)

    def failures(self, steps: list[Step]) -> list[str]:
        """'[step name] error' of those steps that failed, in the order they started."""
        found = [self._results[s.name] for s in self.started(steps)]
        return [f"[{r.name}] {r.error}" for r in found if r.status == "failed"]

    def report(self, error: str | None, rolled_back: bool) -> ExecutionReport:
        """The run's outcome from the journal."""
        results = sorted(self._results.values(), key=lambda r: r.started)
        undo_errors = [f"[undo: {r.name}] {r.undo_error}" for r in results if r.undo_error]
        return ExecutionReport(
            ok=error is None,
            results=results,
            error=error,
            rolled_back=rolled_back,
            rollback_errors=undo_errors,
            checks=dict(self.checks),
            seconds=round(time.monotonic() - self._t0, 3),
        )

    def _write(self, r: StepResult, event: str) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"event": event, **asdict(r)}) + "\n")


def undo_order(started: list[Step]) -> list[list[Step]]:
    """What a rollback undoes: started steps that have an undo, phase by phase newest first.

    Within a phase group each node's steps come newest first; the flow runs the nodes
    of a group in parallel. Irreversible steps (`member remove`) are left out.
    """
    undoable = [s for s in started if s.undo and not s.irreversible]
    groups: list[list[Step]] = []
    for step in reversed(undoable):
        if groups and groups[-1][0].phase == step.phase:
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


class Runner:
    """Does planned steps on the nodes; each call is the one core call of a Prefect task run."""

    def __init__(
        self,
        nodes: dict[str, Node],
        journal: Journal,
        checks: dict[str, Callable[[float], object]] | None = None,
        feed: SnapshotFeed | None = None,
        record: NodeRecord | None = None,
    ):
        self.nodes, self.journal, self.checks, self.feed = nodes, journal, checks or {}, feed
        self.record = record

    def run(self, step: Step, logger: logging.Logger | logging.LoggerAdapter | None = None) -> StepResult:
        """Do every action of the step; the journal records it; errors propagate (transient ones may be retried)."""
        logger = logger or log
        self.journal.begin(step)
        t0 = time.monotonic()
        try:
            if self.record is not None and step.node in self.nodes:
                self.record.before(self.nodes[step.node], step)
            for action in step.actions:
                logger.info("%s: %s", step.name, action.describe())
                self._act(step, action)
        except Exception as exc:
            self.journal.end(step, time.monotonic() - t0, message(exc))
            logger.error("%s failed: %s", step.name, message(exc))
            raise
        return self.journal.end(step, time.monotonic() - t0)

    def undo(self, step: Step, logger: logging.Logger | logging.LoggerAdapter | None = None) -> StepResult:
        """Run the step's undo commands on its node; the journal records it; errors propagate."""
        logger = logger or log
        t0 = time.monotonic()
        try:
            for action in step.undo:
                logger.info("%s: %s", step.undo_name, action.describe())
                self.nodes[step.node].run(action.cmd, timeout=action.timeout)
            if self.record is not None:
                self.record.undone(self.nodes[step.node], step)
        except Exception as exc:
            self.journal.undone(step, time.monotonic() - t0, message(exc))
            logger.error("%s failed: %s", step.undo_name, message(exc))
            raise
        return self.journal.undone(step, time.monotonic() - t0)

    def _act(self, step: Step, action) -> None:
        if isinstance(action, Check):
            self.journal.checks[action.name] = self.checks[action.name](action.timeout)
            return
        node = self.nodes[step.node]
        if isinstance(action, Run):
            node.run(action.cmd, timeout=action.timeout)
        elif isinstance(action, Relay):
            source = self.nodes[action.source]
            (source.copy_tree_to if action.tree else source.copy_file_to)(node, action.path, action.dest)
        elif isinstance(action, Upload):
            self._upload(node, action)
        elif isinstance(action, Write):
            node.write(action.path, action.text, action.mode)

    def _upload(self, node: Node, action: Upload) -> None:
        """Stream the snapshot to the node, decoded and checked there (zstd's checksum, or the sha256 it prints)."""
        if self.feed is None or self.feed.codec != action.codec:
            raise ValueError(f"this plan uploads a {action.codec} snapshot stream but the flow has none")
        reader = self.feed.open(node.name)
        try:
            out = node.run(action.command(), stdin=reader, timeout=3600)
        finally:
            reader.close()
        got = (out.stdout.split() or [""])[0]
        if action.codec == "raw" and got != action.sha256:
            raise NodeError(
                f"the snapshot written to {action.dest} has sha256 {got or '(none)'}, expected {action.sha256}",
                step="upload",
                node=str(node),
            )


def message(exc: BaseException) -> str:
    """An exception as one line for reports (project errors as they are, others with their type)."""
    return str(exc) if isinstance(exc, EtcdBackupError) else f"{exc.__class__.__name__}: {exc}"
