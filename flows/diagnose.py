"""The diagnose flow: look at the cluster and its nodes, name the runbook case and the restore run that fixes it."""

from __future__ import annotations

import shlex
from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks import load_cluster
from etcd_backup import flow_names
from etcd_backup.diagnose import Diagnosis, diagnose
from etcd_backup.restore.facts import RestoreFacts
from flows.failures import readable_failures
from flows.report import human_size
from tasks.artifacts import artifact_key
from tasks.cluster import endpoint_health, member_list, node_facts

ETCD_TIMEOUT = 5.0


@flow(name=flow_names.DIAGNOSE)
@readable_failures
def diagnose_cluster(cluster: str) -> dict:
    """Check endpoint health, the member list and every node, then say which restore case applies and what to run.

    Args:
        cluster: name of the EtcdCluster block
    """
    target = load_cluster(cluster)
    spec, access = target.spec(), target.access(timeout=ETCD_TIMEOUT, with_nodes=True)
    health = endpoint_health.submit(access)
    members = member_list.submit(access)
    found = node_facts.submit(spec).result()
    diagnosis = diagnose(spec, found, health.result(), members.result())
    commands = [run_command(a.flow, deployment_name(a.flow, cluster), a.parameters) for a in diagnosis.actions]
    create_markdown_artifact(
        report(spec.cluster_id, diagnosis, found, commands),
        key=artifact_key("diagnosis", spec.cluster_id),
        description=f"Diagnosis of {spec.cluster_id}: {diagnosis.case}",
    )
    get_run_logger().info("%s", diagnosis.summary)
    facts = [asdict(f.node) for f in found]
    return {"cluster": cluster, **diagnosis.to_dict(), "commands": commands, "facts": facts}


def deployment_name(flow_name: str, cluster: str) -> str:
    """The served deployment of the flow for this cluster: named after it, else the first tagged `cluster:<name>`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, FlowFilter

    try:
        with get_client(sync_client=True) as client:
            found = client.read_deployments(
                flow_filter=FlowFilter(name={"any_": [flow_name]}),
                deployment_filter=DeploymentFilter(tags={"all_": [f"cluster:{cluster}"]}),
            )
    except Exception:  # noqa: BLE001 - only the suggested command depends on it
        return cluster
    names = sorted(d.name for d in found)
    return cluster if not names or cluster in names else names[0]


def run_command(flow_name: str, deployment: str, parameters: dict[str, str]) -> str:
    """The CLI line that starts the flow's deployment (`<flow>/<deployment>`) with these parameters."""
    params = " ".join(f"-p {shlex.quote(f'{k}={v}')}" for k, v in parameters.items())
    return f"prefect deployment run {shlex.quote(f'{flow_name}/{deployment}')} {params}"


def report(cluster_id: str, diagnosis: Diagnosis, facts: list[RestoreFacts], commands: list[str]) -> str:
    """The markdown artifact: the case, what to run, and a table of the nodes."""
    by_name = {f.name: f.node for f in facts}
    lines = [
        f"# Diagnosis of {cluster_id}",
        "",
        f"**Case: {diagnosis.title}**",
        "",
        f"Quorum: {'kept' if diagnosis.quorum else 'lost'}",
        "",
    ]
    for action, command in zip(diagnosis.actions, commands, strict=True):
        params = ", ".join(f"`{k}={v}`" for k, v in action.parameters.items())
        lines += [
            f"Run flow `{action.flow}` with {params}" + ("" if action.ready else f" (first: {action.note})"),
            "",
            "```",
            command,
            "```",
            "",
        ]
    if not diagnosis.actions:
        lines += ["Nothing to run." if diagnosis.case == "healthy" else diagnosis.summary, ""]
    lines += [
        "| node | IP | state | etcd health | member | etcd | service | data dir | free | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in diagnosis.nodes:
        f = by_name.get(n.name)
        member = "?" if n.is_member is None else ("yes" if n.is_member else "no")
        reach = f is not None and f.reachable
        lines.append(
            " | ".join(
                [
                    f"| {n.name}",
                    n.ip,
                    n.state,
                    _cell(n.health),
                    member,
                    (f.etcd_version or "-") if reach else "-",
                    ("active" if f.etcd_active else "inactive") if reach else "-",
                    ("present" if f.data_dir_present else "absent") if reach else "-",
                    human_size(f.free_bytes) if reach and f.free_bytes is not None else "-",
                    _cell("; ".join(n.notes)) + " |",
                ]
            )
        )
    lines += [""] + [f"- {note}" for note in diagnosis.findings]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe in a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")[:300]
