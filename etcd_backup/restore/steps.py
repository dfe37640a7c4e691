"""Builders of the runbook steps both restores use: stop, copy, rewrite etcd.conf, set aside, upload, restore, start.

Each step is one runbook step on one node, named as the runbook says it; copies are one
step per path. Steps marked repeatable may retry after a transient error.
"""

from __future__ import annotations

import posixpath

from etcd_backup.cluster import NodeLayout
from etcd_backup.restore import commands as c
from etcd_backup.restore.actions import CLUSTER, Check, Relay, Run, Step, Upload, Write
from etcd_backup.restore.facts import IFCFG, KUBE_SERVICES, RestoreFacts

BINARIES = ("etcd_bin", "etcdctl_bin", "etcdutl_bin")
SNAPSHOT_NAME = "snapshot.db"


def stop(f: RestoreFacts) -> list[Step]:
    """Stop kube-apiserver (where it runs) and etcd; each undo starts again what ran before."""
    out = []
    if "kube-apiserver" in f.kube_active:
        out.append(
            Step(
                f.name,
                "stop",
                "stop kube-apiserver",
                (Run("systemctl stop kube-apiserver"),),
                destructive=True,
                undo=(Run("systemctl start kube-apiserver"),),
                repeatable=True,
            )
        )
    if f.node.files.get("unit") or f.node.etcd_active:
        start = (Run(c.start_bounded("etcd"), timeout=c.START_WAIT + 60),) if f.node.etcd_active else ()
        out.append(
            Step(
                f.name,
                "stop",
                "stop etcd",
                (Run("systemctl stop etcd"),),
                destructive=True,
                undo=start,
                repeatable=True,
            )
        )
    return out


def copy(node: str, phase: str, source: str, path: str, run: str, *, tree: bool = False, binary: bool = False) -> Step:
    """Copy one file or directory from the source node (relayed through the flow); undo puts the old one back.

    The first copy of the node's own file is kept under the run dir, so the step can repeat.
    """
    actions: list = [Run(c.save(path, run)), Relay(source, path, path, tree=tree)]
    if binary:
        actions.append(Run(f"chmod 755 {c.q(path)}"))
    undo = [Run(c.put_back_tree(path, run) if tree else c.put_back_file(path, run))]
    if path.endswith(".service"):
        actions.append(Run("systemctl daemon-reload"))
        undo.append(Run("systemctl daemon-reload"))
    return Step(
        node,
        phase,
        f"copy {path} {source} -> {node}",
        tuple(actions),
        destructive=True,
        undo=tuple(undo),
        repeatable=True,
    )


def refill(f: RestoreFacts, retained: RestoreFacts, layout: NodeLayout, run: str) -> list[Step]:
    """Copy the etcd files the node lacks from the retained node (runbook 3.1.2 step 2); undo puts the old ones back."""
    steps = []
    for key in BINARIES:
        if key == "etcdutl_bin" and f.node.files.get("etcd_bin"):
            continue  # etcdutl only goes with the retained node's etcd, never next to another version
        if not f.node.files.get(key) and retained.node.files.get(key):
            steps.append(copy(f.name, "refill", retained.name, getattr(layout, key), run, binary=True))
    if not f.node.files.get("etcd_conf"):
        steps.append(copy(f.name, "refill", retained.name, layout.etcd_conf_dir, run, tree=True))
    if not (f.node.files.get("kubernetes_dir") and f.node.files.get("certs")):
        steps.append(copy(f.name, "refill", retained.name, layout.kubernetes_dir, run, tree=True))
    if not f.node.files.get("unit"):
        steps.append(copy(f.name, "refill", retained.name, layout.unit, run))
    return steps


def configure(name: str, conf_path: str, text: str, run: str) -> Step:
    """Keep etcd.conf aside and write the member's new one in place (repeatable: the first original is kept)."""
    return Step(
        name,
        "configure",
        "rewrite etcd.conf",
        (Run(c.save(conf_path, run)), Write(conf_path, text)),
        destructive=True,
        undo=(Run(c.put_back_file(conf_path, run)),),
        repeatable=True,
    )


def set_aside(name: str, layout: NodeLayout, run_id: str) -> Step:
    """Move the data dir's home aside (runbook: rm -rf /var/lib/etcd; here never deleted) and make a new one."""
    home = c.data_home(layout.data_dir)
    return Step(
        name,
        "set-aside",
        f"set aside {home}",
        (Run(c.set_aside(layout.data_dir, run_id)),),
        destructive=True,
        undo=(Run(c.put_back_data(layout.data_dir, run_id)),),
        note=f"old data kept at {c.aside_dir(layout.data_dir, run_id)}",
    )


def upload(name: str, run: str, sha256: str, codec: str) -> Step:
    """Copy the verified snapshot into the node's run dir (sha256 checked on the node as it writes); repeatable.

    It changes nothing of etcd's; its undo removes the copy (a restore refused after it leaves nothing behind).
    """
    path = posixpath.join(run, SNAPSHOT_NAME)
    return Step(
        name,
        "upload",
        "upload snapshot",
        (Upload(path, sha256, codec),),
        undo=(Run(f"rm -f {c.q(path)} && (rmdir {c.q(run)} 2>/dev/null || true)"),),
        repeatable=True,
    )


def restore(name: str, command: str) -> Step:
    """Run `snapshot restore` into the (new, empty) data dir; never repeated (the data dir is no longer empty)."""
    return Step(
        name,
        "restore",
        "snapshot restore",
        (Run(command, timeout=3600),),
        destructive=True,
        note="undone by the set-aside undo, which moves the restored data dir into the run dir",
    )


def start(f: RestoreFacts) -> Step:
    """`systemctl enable --now etcd` (runbook step 6); every member at once, as the first start waits for quorum."""
    undo = [Run("systemctl stop etcd")]
    if not f.etcd_enabled:
        undo.append(Run("systemctl disable etcd"))
    return Step(
        f.name,
        "start",
        "start etcd",
        (Run("systemctl enable --now etcd", timeout=600),),
        destructive=True,
        undo=tuple(undo),
        repeatable=True,
    )


def checks(*names: tuple[str, str]) -> list[Step]:
    """Checks run from the flow process, in order: (check name, step title), e.g. ('healthy', 'wait healthy')."""
    return [Step(CLUSTER, "check", title, (Check(check),), repeatable=True) for check, title in names]


def restart_kube(f: RestoreFacts) -> list[Step]:
    """Start kube-apiserver again and restart the controller-manager and scheduler that ran before the restore."""
    out = [
        Step(f.name, "kubernetes", "start kube-apiserver", (Run("systemctl start kube-apiserver"),), repeatable=True)
    ]
    for unit in KUBE_SERVICES[1:]:
        if unit in f.kube_active:
            out.append(
                Step(f.name, "kubernetes", f"restart {unit}", (Run(f"systemctl restart {unit}"),), repeatable=True)
            )
    return out


def advertise_address(name: str, phase: str, layout: NodeLayout, ip: str, run: str) -> Step:
    """Keep the apiserver config aside and set its --advertise-address to this node's IP (repeatable)."""
    return Step(
        name,
        phase,
        "set --advertise-address",
        (Run(c.save(layout.apiserver_conf, run)), Run(c.set_advertise_address(layout.apiserver_conf, ip))),
        destructive=True,
        undo=(Run(c.put_back_file(layout.apiserver_conf, run)),),
        repeatable=True,
    )


def control_plane(f: RestoreFacts, source: RestoreFacts, ip: str, layout: NodeLayout, run: str) -> list[Step]:
    """The runbook's last step on a rebuilt node: kube binaries, units, kubeconfig, advertise address, services, LB."""
    units = [posixpath.join(layout.unit_dir, u) for u in source.kube_units]
    steps = [copy(f.name, "kubernetes", source.name, layout.hyperkube, run, binary=True)]
    steps += [copy(f.name, "kubernetes", source.name, u, run) for u in units]
    steps += [
        copy(f.name, "kubernetes", source.name, layout.kubectl, run, binary=True),
        copy(f.name, "kubernetes", source.name, layout.kubeconfig_dir, run, tree=True),
        advertise_address(f.name, "kubernetes", layout, ip, run),
    ]
    started = [u for u in KUBE_SERVICES if u not in f.kube_active]
    steps.append(
        Step(
            f.name,
            "kubernetes",
            "enable and start " + " ".join(KUBE_SERVICES),
            (Run("systemctl enable --now " + " ".join(KUBE_SERVICES)),),
            destructive=True,
            undo=(Run("systemctl disable --now " + " ".join(started)),) if started else (),
            repeatable=True,
        )
    )
    ifcfg = [posixpath.join(layout.network_scripts, n) for n in IFCFG if source.files.get(n)]
    if ifcfg:
        steps.append(load_balancer(f.name, source.name, ifcfg, run))
    return steps


def load_balancer(node: str, source: str, paths: list[str], run: str) -> Step:
    """Copy the load balancer's ifcfg-lo:* files and restart the network; undo puts the old ones back and restarts."""
    actions: list = []
    undo: list[Run] = []
    for path in paths:
        actions += [Run(c.save(path, run)), Relay(source, path, path)]
        undo.append(Run(c.put_back_file(path, run)))
    actions.append(Run("systemctl restart network"))
    undo.append(Run("systemctl restart network"))
    return Step(
        node,
        "kubernetes",
        f"copy ifcfg-lo:* {source} -> {node} and restart network",
        tuple(actions),
        destructive=True,
        undo=tuple(undo),
        repeatable=True,
    )
