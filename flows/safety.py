"""Safety machinery every restore flow shares: the typed-name confirmation gate and the plan/report artifacts."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Failed
from pydantic import Field

from etcd_backup.errors import RestoreRefused
from etcd_backup.restore.executor import ExecutionReport
from etcd_backup.restore.member import MemberPlan
from etcd_backup.restore.plan import RestorePlan
from etcd_backup.restore.render import member_plan_markdown, member_report_markdown, plan_markdown, report_markdown
from flows.report import artifact_key


class ConfirmRestore(RunInput):
    """Type the cluster's name to let the restore change the nodes."""

    cluster_name: str = Field(
        title="Cluster name (required)",
        description="Type the cluster's name exactly, as the description above shows it, to go on",
        min_length=1,
    )


def confirm_or_refuse(cluster_id: str, what: str, timeout: int = 600, poll_interval: int = 5) -> None:
    """Pause the run until someone types the cluster's name in the UI; a wrong name or no answer refuses."""
    description = (
        f"**{what}** will change nodes of etcd cluster `{cluster_id}`. Read the plan artifact, "
        f"then type the cluster name `{cluster_id}` to go on. Anything else stops the run, nothing changed."
    )
    try:
        answer = pause_flow_run(
            wait_for_input=ConfirmRestore.with_initial_data(description=description),
            timeout=timeout,
            poll_interval=poll_interval,
            key="confirm-restore",
        )
    except FlowPauseTimeout:
        message = f"nobody confirmed within {timeout} s, so nothing was changed; start the run again to restore"
        _leave_expired_pause(message)
        raise RestoreRefused(message, step="confirm") from None
    except Exception as exc:  # noqa: BLE001 - a resume whose input cannot be read
        raise RestoreRefused(
            f"the confirmation could not be read ({exc.__class__.__name__}); nothing was changed", step="confirm"
        ) from None
    if answer.cluster_name.strip() != cluster_id:
        raise RestoreRefused(
            f"the name typed ({answer.cluster_name.strip()!r}) is not the cluster's name "
            f"{cluster_id!r}; nothing was changed",
            step="confirm",
        )
    get_run_logger().info("confirmed by typing the cluster name %s", cluster_id)


def _leave_expired_pause(message: str) -> None:
    """End the expired pause with our message; the server would otherwise only say "never resumed"."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(context.flow_run.id, Failed(message=message), force=True)


def plan_artifact(plan: RestorePlan, dry_run: bool) -> str:
    """Publish the full plan as a markdown artifact; returns its key."""
    key = artifact_key("restore-plan", plan.cluster_id)
    title = "Dry run: restore plan (nothing was changed)" if dry_run else "Restore plan"
    create_markdown_artifact(plan_markdown(plan, title), key=key, description=f"{title} for {plan.cluster_id}")
    return key


def report_artifact(plan: RestorePlan, report: ExecutionReport) -> str:
    """Publish what was done per node, the step timings and the restored data as a markdown artifact."""
    key = artifact_key("restore-report", plan.cluster_id)
    create_markdown_artifact(report_markdown(plan, report), key=key, description=f"Restore of {plan.cluster_id}")
    return key


def member_plan_artifact(plan: MemberPlan, dry_run: bool) -> str:
    """Publish the full member replacement plan as a markdown artifact; returns its key."""
    key = artifact_key("member-plan", plan.cluster_id)
    title = "Dry run: member replacement plan (nothing was changed)" if dry_run else "Member replacement plan"
    create_markdown_artifact(member_plan_markdown(plan, title), key=key, description=f"{title} for {plan.failed}")
    return key


def member_report_artifact(plan: MemberPlan, report: ExecutionReport) -> str:
    """Publish what the member replacement did, step timings and the final member list as a markdown artifact."""
    key = artifact_key("member-report", plan.cluster_id)
    create_markdown_artifact(
        member_report_markdown(plan, report), key=key, description=f"Replacement of {plan.failed} in {plan.cluster_id}"
    )
    return key
