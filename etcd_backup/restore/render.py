"""Markdown for people: the plan before a restore (every command, every file copied) and the report after it."""

from __future__ import annotations

from urllib.parse import urlparse

from etcd_backup.restore.actions import Write
from etcd_backup.restore.executor import ExecutionReport
from etcd_backup.restore.member import MemberPlan
from etcd_backup.restore.plan import RestorePlan


def plan_markdown(plan: RestorePlan, title: str = "Restore plan") -> str:
    """The full plan: snapshot, retained node, per node every step with its commands, copies and undo."""
    s = plan.snapshot
    lines = [
        f"# {title}: {plan.cluster_id}",
        "",
        f"- backup: `{s.key}` ({s.raw_size} bytes raw, sha256 `{s.raw_sha256[:16]}…`"
        + (f", revision {s.revision}, {s.key_count} keys" if s.revision is not None else ", legacy: no manifest")
        + ")",
        f"- retained node: **{plan.retained}**; run id `{plan.run_id}`; new cluster token `{plan.token}`",
        "- restore tool per node: " + ", ".join(f"{n}: `{t}`" for n, t in plan.tools.items()),
        "",
    ]
    lines += [f"- {note}" for note in plan.notes]
    return "\n".join(lines + steps_markdown(plan)) + "\n"


def steps_markdown(plan) -> list[str]:
    """Per phase, every step of a plan (RestorePlan or MemberPlan) with its commands, copies and undo."""
    lines: list[str] = []
    for phase, steps in plan.phases():
        lines += ["", f"## {phase}"]
        for step in steps:
            flag = " *(changes the node)*" if step.destructive else ""
            lines += ["", f"### {step.node}: {step.title}{flag}"]
            for action in step.actions:
                lines.append(f"1. {action.describe()}")
                if isinstance(action, Write):
                    lines += ["", "   ```", *(f"   {line}" for line in action.text.splitlines()), "   ```"]
            if step.undo:
                lines.append("")
                lines += [f"   - undo: {u.describe()}" for u in step.undo]
            if step.note:
                lines.append(f"   - note: {step.note}")
    return lines


def report_markdown(plan: RestorePlan, report: ExecutionReport) -> str:
    """Per node what was done and how long each step took, then the restored revision and key count."""
    outcome = "succeeded" if report.ok else ("FAILED and was rolled back" if report.rolled_back else "FAILED")
    lines = [
        f"# Restore of {plan.cluster_id} {outcome}",
        "",
        f"- backup `{plan.snapshot.key}`, retained node {plan.retained}, run id `{plan.run_id}`, "
        f"{report.seconds:.1f} s in all",
    ]
    if report.error:
        lines.append(f"- error: {report.error}")
    if report.rolled_back:
        lines.append(
            "- every node was put back as it was: old data dirs moved back, files restored from the "
            "copies kept aside, etcd started again where it ran"
            + ("" if not report.rollback_errors else "; BUT some undo steps failed:")
        )
        lines += [f"  - {e}" for e in report.rollback_errors]
    lines += results_markdown(report)
    data = report.checks.get("data")
    if isinstance(data, dict):
        lines += ["", "| member endpoint | revision | keys |", "|---|---|---|"]
        lines += [f"| {urlparse(e).netloc} | {v['revision']} | {v['keys']} |" for e, v in data.items()]
    return "\n".join(lines) + "\n"


def results_markdown(report: ExecutionReport) -> list[str]:
    """The table of every step's status and timing."""
    lines = ["", "| node | phase | step | status | seconds | undo seconds | error |", "|---|---|---|---|---|---|---|"]
    for r in sorted(report.results, key=lambda r: (r.node, report.results.index(r))):
        undo = "" if r.undo_seconds is None else f"{r.undo_seconds:.1f}"
        lines.append(
            f"| {r.node} | {r.phase} | {r.title} | {r.status} | {r.seconds:.1f} | {undo} | "
            f"{(r.error or '').replace('|', '/')[:300]} |"
        )
    return lines


def member_plan_markdown(plan: MemberPlan, title: str = "Member replacement plan") -> str:
    """The full plan of a member replacement: the member to remove and add, every step with its commands and undo."""
    removed = f"`member remove {plan.remove_id}`" if plan.remove_id else "not a member any more (no remove)"
    lines = [
        f"# {title}: {plan.failed} of {plan.cluster_id}",
        "",
        f"- failed node **{plan.failed}** ({plan.peer_url}): {removed}, then `member add`",
        f"- healthy node: **{plan.healthy}**; run id `{plan.run_id}`",
        f"- ETCD_INITIAL_CLUSTER: `{plan.initial_cluster}`",
        "",
    ]
    lines += [f"- {note}" for note in plan.notes]
    return "\n".join(lines + steps_markdown(plan)) + "\n"


def member_report_markdown(plan: MemberPlan, report: ExecutionReport) -> str:
    """What was done, each step's timing, and the final member list; after a failure, where the member stands."""
    outcome = "succeeded" if report.ok else ("FAILED and was rolled back" if report.rolled_back else "FAILED")
    lines = [
        f"# Replacement of {plan.failed} in {plan.cluster_id} {outcome}",
        "",
        f"- healthy node {plan.healthy}, run id `{plan.run_id}`, {report.seconds:.1f} s in all",
    ]
    if report.error:
        lines.append(f"- error: {report.error}")
    removed = any(r.phase == "remove" and r.status == "done" for r in report.results)
    if not report.ok and removed:
        lines.append(
            f"- **{plan.failed} was removed from the member list and is NOT a member now**; its files and "
            f"data dir were put back. Fix the cause, then run etcd-restore-member again with "
            f"failed_node={plan.failed}: it will only add it."
        )
    elif report.rolled_back:
        lines.append(
            "- the node was put back as it was: data dir moved back, files restored from the copies kept aside"
        )
    lines += [f"  - undo failed: {e}" for e in report.rollback_errors]
    lines += results_markdown(report)
    members = report.checks.get("member")
    if isinstance(members, list):
        lines += ["", "Member list now:", ""] + [f"- `{m}`" for m in members]
    return "\n".join(lines) + "\n"
