"""Failure alerts: an on_failure hook that calls the notification block named in the run's parameters."""

from __future__ import annotations

import logging

from prefect.blocks.core import Block

log = logging.getLogger("etcd_backup.notify")


def notify_on_failure(flow, flow_run, state) -> None:
    """Send '<flow> failed: <message>' to the block in parameter `notify` ('<type-slug>/<name>'), if any."""
    ref = (flow_run.parameters or {}).get("notify")
    if not ref:
        return
    cluster = flow_run.parameters.get("cluster", "?")
    body = f"{flow.name} for cluster {cluster} failed (run {flow_run.name}): {state.message}"
    try:
        Block.load(ref).notify(body, subject=f"{flow.name} failed: {cluster}")
    except Exception as exc:  # noqa: BLE001 - an alert that fails must not hide the original failure
        log.error("could not send the failure alert through %s: %s", ref, exc.__class__.__name__)
