"""Markdown for people: the plan before a restore (every command, every file copied) and the report after it.

One renderer each for both restores: they share the plan type and the execution report.
"""

from __future__ import annotations

from urllib.parse import urlparse

from etcd_backup.restore.actions import Write
from etcd_backup.restore.executor import ExecutionReport
from etcd_backup.restore.leftovers import rollback_advice
from etcd_backup.restore.plan import Plan


def plan_markdown(plan: Plan, title: str = "Plan") -> str:
    """The full plan: what it works from, then per phase every step with its commands, copies and undo."""
    lines = [f"# {title}: {plan.kind} of {plan.cluster_id}", ""]
    lines += [f"- {line}" for line in plan.header]
    lines += [f"- {note}" for note in plan.notes]
    for phase, steps in plan.phases():
        lines += ["", f"## {phase}"]
        for step in steps:
            flags = [f for f, on in (("changes the node", step.destructive), ("retried", step.repeatable)) if on]
            lines += ["", f"### {step.name}" + (f" *({', '.join(flags)})*" if flags else "")]
            for action in step.actions:
                lines.append(f"1. {action.describe()}")
                if isinstance(action, Write):
                    lines += ["", "   ```", *(f"   {line}" for line in action.text.splitlines()), "   ```"]
            if step.undo:
                lines.append("")
                lines += [f"   - undo: {u.describe()}" for u in step.undo]
            if step.note:
                lines.append(f"   - note: {step.note}")
    return "\n".join(lines) + "\n"


def outcome(report: ExecutionReport) -> str:
    """'succeeded', 'FAILED before any node was changed', 'FAILED and was [NOT fully] rolled back' or 'FAILED'."""
    if report.ok:
        return "succeeded"
    if report.unfinished:
        return f"FAILED and was NOT fully rolled back ({rollback_advice(report.unfinished)})"
    if not any(r.destructive for r in report.results):
        left = sorted({r.node for r in report.results if r.undo_error})
        return "FAILED before any node was changed" + (
            f" (its run dir on {', '.join(left)} could not be cleaned up)" if left else ""
        )
    if report.rolled_back:
        return "FAILED and was NOT fully rolled back" if report.rollback_errors else "FAILED and was rolled back"
    return "FAILED"


def not_undone(plan: Plan, report: ExecutionReport) -> list[str]:
    """After a failure: the notes of irreversible steps that were done (e.g. a member that stays removed)."""
    if report.ok:
        return []
    done = {r.name for r in report.results if r.status.startswith("done")}
    return [s.note for s in plan.steps if s.irreversible and s.name in done]


def report_markdown(plan: Plan, report: ExecutionReport) -> str:
    """What was done on each node, each step's task-run timing and attempts, the rollback, the checks' results."""
    lines = [
        f"# {plan.kind.capitalize()} of {plan.cluster_id} {outcome(report)}",
        "",
        *(f"- {line}" for line in plan.header),
        f"- run id `{plan.run_id}`, {report.seconds:.1f} s in all",
    ]
    if report.error:
        lines.append(f"- error: {report.error}")
    if report.rolled_back:
        lines.append(
            "- every started step that changed a node was undone, newest first: data dirs moved back, files "
            "restored from the copies kept aside, services started again where they ran"
            + ("" if not report.rollback_errors else "; BUT some undo steps failed:")
        )
        lines += [f"  - {e}" for e in report.rollback_errors]
    lines += [f"- **{note}**" for note in not_undone(plan, report)]
    lines += ["", "| step | node | phase | status | attempts | started (s) | seconds | undo seconds | error |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in report.results:
        undo = "" if r.undo_seconds is None else f"{r.undo_seconds:.1f}"
        error = (r.error or r.undo_error or "").replace("|", "/").replace("\n", " ")[:300]
        lines.append(
            f"| {r.name} | {r.node} | {r.phase} | {r.status} | {r.attempts} | {r.started:.1f} | {r.seconds:.1f} "
            f"| {undo} | {error} |"
        )
    lines += _checks(report)
    return "\n".join(lines) + "\n"


def _checks(report: ExecutionReport) -> list[str]:
    lines: list[str] = []
    data = report.checks.get("data")
    if isinstance(data, dict):
        lines += ["", "| member endpoint | revision | keys |", "|---|---|---|"]
        lines += [f"| {urlparse(e).netloc} | {v['revision']} | {v['keys']} |" for e, v in data.items()]
    for name in ("members", "member"):
        listed = report.checks.get(name)
        if isinstance(listed, list):
            lines += ["", "Member list now:", ""] + [f"- `{m}`" for m in listed]
    return lines
