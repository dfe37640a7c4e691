"""The one execute path of both restore flows: every planned step its own task run, rolled back on failure.

Phases run in order; within a phase each node's steps are submitted as a chain and the
nodes run in parallel; the flow waits for the whole phase, so a step that finishes after
another node's step failed is known and undone too. On failure every started step that
changed a node is undone, newest first, nodes in parallel within a phase, going on past
a failed undo.

Nothing here calls the Prefect API: task runs are orchestrated in this process (Prefect
3 records them through events that are sent later, or lost, when the API is away), and
what ran is read from the run's own journal. So a lost API or worker connection neither
stops a restore half way nor blocks its rollback.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.utilities.annotations import allow_failure

from blocks import EtcdCluster
from etcd_backup.nodes import nodes_of
from etcd_backup.restore import checks
from etcd_backup.restore import commands as c
from etcd_backup.restore.actions import Step, Upload
from etcd_backup.restore.executor import ExecutionReport, Journal, Runner, undo_order
from etcd_backup.restore.feed import SnapshotFeed
from etcd_backup.restore.leftovers import NodeRecord, marker_text
from etcd_backup.restore.plan import Plan
from flows.restore_report import journal_path
from tasks.steps import step_task, undo_task


def run_plan(
    cluster: EtcdCluster,
    plan: Plan,
    snapshot: str | None = None,
    gate: Callable[[], object] | None = None,
    health_timeout: float = 180.0,
) -> ExecutionReport:
    """Run the plan on the cluster's nodes, each step a task run; on failure undo every started step.

    `gate` (e.g. the result of the quorum check) is awaited before the first phase that changes a node.
    """
    spec = cluster.spec()
    nodes = {n.name: n for n in nodes_of(spec)}
    uploads = [s.node for s in plan.steps if any(isinstance(a, Upload) for a in s.actions)]
    feed = SnapshotFeed(snapshot, plan.info.get("wire", "raw"), uploads) if snapshot else None
    found = checks.for_plan(cluster.access(timeout=5), spec, plan.info.get("failed"), health_timeout)
    run, journal = c.run_dir(spec.layout.data_dir, plan.run_id), journal_path(plan)
    marker = marker_text(run, plan.run_id, plan.cluster_id, str(journal), spec.layout.data_dir)
    record = NodeRecord(run, plan.run_id, marker)
    runner = Runner(nodes, Journal(journal), found, feed, record)
    try:
        report = execute(plan, runner, gate)
        report.unfinished = record.close(nodes, report.ok)  # where a rollback could not finish: the node's script
        return report
    except BaseException:
        record.close(nodes, ok=False)
        raise
    finally:
        for node in nodes.values():
            node.close()


def execute(plan: Plan, runner: Runner, gate: Callable[[], object] | None = None) -> ExecutionReport:
    """Phases in order, nodes in parallel; the first failure stops the plan and rolls back what started.

    A gate that raises (a check refused the restore) undoes what started and raises its error.
    """
    logger = get_run_logger()
    error = None
    for phase, steps in plan.phases():
        if gate is not None and any(s.destructive for s in steps):
            try:
                gate()
            except Exception:
                rollback(plan, runner)
                raise
            gate = None
        logger.info("phase %s: %s", phase, ", ".join(s.name for s in steps))
        futures = submit(steps, runner, undo=False)
        wait(list(futures.values()))
        error = phase_error(steps, futures, runner)
        if error:
            logger.error("phase %s failed: %s", phase, error)
            break
    rolled_back = rollback(plan, runner) if error else False
    return runner.journal.report(error, rolled_back)


def submit(steps: list[Step], runner: Runner, undo: bool) -> dict[str, PrefectFuture]:
    """Submit the steps (or their undos) as task runs: each node's in order, the nodes side by side."""
    futures: dict[str, PrefectFuture] = {}
    last: dict[str, PrefectFuture] = {}
    for step in _interleaved(steps):
        before = last.get(step.node)
        if undo:  # keep undoing a node past a failed undo
            future = undo_task(step).submit(runner, step, wait_for=[allow_failure(before)] if before else None)
        else:
            future = step_task(step).submit(runner, step, wait_for=[before] if before else None)
        futures[step.name] = last[step.node] = future
    return futures


def _interleaved(steps: list[Step]) -> list[Step]:
    """Each node's first step, then each node's second, ...: every node starts at once on the thread pool."""
    by_node: dict[str, list[Step]] = {}
    for step in steps:
        by_node.setdefault(step.node, []).append(step)
    rounds = max(len(v) for v in by_node.values())
    return [chain[i] for i in range(rounds) for chain in by_node.values() if i < len(chain)]


def phase_error(steps: list[Step], futures: dict[str, PrefectFuture], runner: Runner) -> str | None:
    """The phase's first error from the journal; a step the journal never saw finish did not run."""
    failed = runner.journal.failures(steps)
    if failed:
        return failed[0]
    for step in steps:
        result = runner.journal.result(step.name)
        if result is None or result.status != "done":
            state = futures[step.name].state
            return f"[{step.name}] did not run: {state.message or state.name}"
    return None


def rollback(plan: Plan, runner: Runner) -> bool:
    """Undo every started step that has an undo, newest first; an undo Prefect could not run runs here."""
    groups = undo_order(runner.journal.started(list(plan.steps)))
    if not groups:
        return False
    logger = get_run_logger()
    logger.warning("rolling back %d step(s)", sum(len(g) for g in groups))
    for group in groups:
        wait(list(submit(group, runner, undo=True).values()))
        for step in group:
            result = runner.journal.result(step.name)
            if result is not None and result.undo_seconds is None:
                try:
                    runner.undo(step, logger)
                except Exception:  # noqa: BLE001, S110 - recorded in the journal; keep undoing the rest
                    pass
    return True
