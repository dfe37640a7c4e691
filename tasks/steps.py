"""The task runs of a restore's steps: one per planned step on its node, and one per undo, named like the runbook."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from etcd_backup.restore.actions import Step
from etcd_backup.restore.executor import Runner, StepResult
from tasks.retry import RETRY

NO_RETRY = {"retries": 0}


@task(name="restore-step", cache_policy=NO_CACHE)
def run_step(runner: Runner, step: Step) -> StepResult:
    """Do one planned step on its node; its logs (and a failed command's stderr) belong to this task run."""
    return runner.run(step, get_run_logger())


@task(name="undo-step", cache_policy=NO_CACHE, **RETRY)
def undo_step(runner: Runner, step: Step) -> StepResult:
    """Undo one started step on its node (every undo command is safe to repeat, so transient errors retry)."""
    return runner.undo(step, get_run_logger())


def _literal(name: str) -> str:
    """A task run name template that shows the name as it is."""
    return name.replace("{", "{{").replace("}", "}}")


def step_task(step: Step):
    """run_step named after the step ('stop etcd @ etcd2'), retried on transient errors only when repeatable."""
    return run_step.with_options(task_run_name=_literal(step.name), **(RETRY if step.repeatable else NO_RETRY))


def undo_task(step: Step):
    """undo_step named after the step it undoes ('undo: set aside /var/lib/etcd @ etcd2')."""
    return undo_step.with_options(task_run_name=_literal(step.undo_name))
