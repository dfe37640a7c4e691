"""`python -m deployments serve`: every deployment of the file run by this one process, refusing silent replacements."""

from __future__ import annotations

import os
import socket

from deployments.build import all_deployments, backup_deployment, manual_deployments
from deployments.config import BackupSchedule
from deployments.conflicts import managed_by, refuse_replacements
from flows.locks import DEFAULT_TRANSFERS, TRANSFERS, set_limit

__all__ = ["all_deployments", "backup_deployment", "manual_deployments", "owner", "serve", "served_by"]


def owner(config: str = "") -> str:
    """Who serves the deployments of this process: host, PID and schedule file."""
    where = f" from {os.path.abspath(config)}" if config else ""
    return f"`python -m deployments serve` on {socket.gethostname()} (pid {os.getpid()}){where}"


def served_by(who: str) -> str:
    """The description suffix of a served deployment."""
    return managed_by("Served", who)


def serve(
    schedules: list[BackupSchedule],
    *,
    replace: bool = False,
    config: str = "",
    backups_at_once: int = DEFAULT_TRANSFERS,
) -> None:
    """Serve the deployments until interrupted (schedules stay active when this stops); refuse silent replacements."""
    from prefect import serve as prefect_serve

    deployments = all_deployments(schedules, served_by(owner(config)))
    refuse_replacements(deployments, replace, "serve", "stop the other `serve`, or pass --replace to take them over")
    set_limit(TRANSFERS, backups_at_once)
    prefect_serve(*deployments, pause_on_shutdown=False)
