"""Who manages a deployment (its description says so), and what replacing one would change."""

from __future__ import annotations

import re
from collections.abc import Callable

from deployments.build import plain
from etcd_backup.errors import ConfigError

MANAGER = re.compile(r"(Served|Deployed) by (.*?)\.?$")


def managed_by(verb: str, who: str) -> str:
    """The description suffix naming who manages a deployment: ' Served by X.' or ' Deployed by X.'."""
    return f" {verb} by {who}." if who else ""


def manager(description: str | None) -> str | None:
    """'served by X' or 'deployed by X' from a description, or None."""
    match = MANAGER.search(description or "")
    return f"{match.group(1).lower()} by {match.group(2)}" if match else None


def conflicts(deployments: list, replace: bool = False, ours: Callable[[str | None], bool] | None = None) -> list[str]:
    """Deployments on the server with the same name but other parameters or schedule, not ours (none when replace)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if replace:
        return []

    def problem(d) -> str | None:
        with get_client(sync_client=True) as client:
            try:
                existing = client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
            except ObjectNotFound:
                return None
        if ours is not None and ours(existing.description):
            return None
        changes = changes_to(existing, d)
        if not changes:
            return None
        who = manager(existing.description) or "someone else (no 'Served by' in its description)"
        return f"deployment {d.flow_name}/{d.name} already exists, {who}; this file would change {'; '.join(changes)}"

    from deployments.deploy import in_threads

    return [p for p in in_threads(problem, deployments) if p]  # one read each: 7 per cluster


def refuse_replacements(deployments: list, replace: bool, step: str, way_out: str, ours=None) -> None:
    """Raise ConfigError listing every deployment `step` (serve, deploy) would replace silently, with the way out."""
    problems = conflicts(deployments, replace, ours)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"{len(problems)} deployment(s) would be replaced, nothing {step.rstrip('e')}ed:\n{listed}\n"
            f"Give the [[backup]] entry its own `name`, {way_out}.",
            step=step,
        )


def changes_to(existing, new) -> list[str]:
    """What replacing existing with new would change: parameters and schedules."""
    old_params, new_params = existing.parameters or {}, plain(new.parameters or {})
    changes = [
        f"{key} {old_params.get(key)!r} -> {new_params.get(key)!r}"
        for key in sorted(set(old_params) | set(new_params))
        if old_params.get(key) != new_params.get(key)
    ]
    old_when = sorted((s.schedule.cron, s.schedule.timezone) for s in existing.schedules if hasattr(s.schedule, "cron"))
    new_when = sorted((s.schedule.cron, s.schedule.timezone) for s in new.schedules if hasattr(s.schedule, "cron"))
    if old_when != new_when:
        changes.append(f"schedule {_when(old_when)} -> {_when(new_when)}")
    return changes


def _when(schedules: list[tuple[str, str]]) -> str:
    return ", ".join(f"'{cron}' {tz or 'UTC'}" for cron, tz in schedules) or "none"
