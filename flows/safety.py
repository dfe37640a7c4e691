"""Safety machinery every restore flow shares: the typed-name confirmation gate (artifacts: flows.restore_report)."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Failed
from pydantic import Field

from etcd_backup.errors import RestoreRefused


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
