"""Builders of the per-node steps every restore uses: stop, refill, configure, set aside, upload, restore, start."""

from __future__ import annotations

import posixpath

from etcd_backup.cluster import NodeLayout
from etcd_backup.restore import commands as c
from etcd_backup.restore.actions import Relay, Run, Step, Upload, Write
from etcd_backup.restore.facts import IFCFG, KUBE_SERVICES, RestoreFacts

BINARIES = ("etcd_bin", "etcdctl_bin", "etcdutl_bin")
SNAPSHOT_NAME = "snapshot.db"


def stop(f: RestoreFacts, layout: NodeLayout) -> Step | None:
    """Stop kube-apiserver (where it runs) and etcd; undo starts again what ran before."""
    actions, undo = [], []
    if "kube-apiserver" in f.kube_active:
        actions.append(Run("systemctl stop kube-apiserver"))
    if f.node.files.get("unit") or f.node.etcd_active:
        actions.append(Run("systemctl stop etcd"))
    if f.node.etcd_active:
        undo.append(Run(c.start_bounded("etcd"), timeout=c.START_WAIT + 60))
    if "kube-apiserver" in f.kube_active:
        undo.append(Run("systemctl start kube-apiserver"))
    if not actions:
        return None
    return Step(f.name, "stop", "stop kube-apiserver and etcd", tuple(actions), destructive=True, undo=tuple(undo))


def refill(f: RestoreFacts, retained: RestoreFacts, layout: NodeLayout, run: str) -> Step | None:
    """Copy the etcd files the node lacks from the retained node (runbook 3.1.2 step 2); undo puts the old ones back."""
    items: list[tuple[str, bool, bool]] = []  # (path, is a tree, is a binary)
    for key in BINARIES:
        if key == "etcdutl_bin" and f.node.files.get("etcd_bin"):
            continue  # etcdutl only goes with the retained node's etcd, never next to another version
        if not f.node.files.get(key) and retained.node.files.get(key):
            items.append((getattr(layout, key), False, True))
    if not f.node.files.get("etcd_conf"):
        items.append((layout.etcd_conf_dir, True, False))
    if not (f.node.files.get("kubernetes_dir") and f.node.files.get("certs")):
        items.append((layout.kubernetes_dir, True, False))
    if not f.node.files.get("unit"):
        items.append((layout.unit, False, False))
    if not items:
        return None
    return copy_step(
        f.name,
        "refill",
        "refill etcd files from " + retained.name,
        retained.name,
        items,
        run,
        after=("systemctl daemon-reload",) if not f.node.files.get("unit") else (),
    )


def copy_step(
    node: str,
    phase: str,
    title: str,
    source: str,
    items: list[tuple[str, bool, bool]],
    run: str,
    after: tuple[str, ...] = (),
) -> Step:
    """A step that keeps copies of paths aside and relays them from source; undo puts the copies back."""
    actions: list = []
    undo: list[Run] = []
    for path, tree, binary in items:
        actions.append(Run(c.save(path, run)))
        actions.append(Relay(source, path, path, tree=tree))
        if binary:
            actions.append(Run(f"chmod 755 {c.q(path)}"))
        undo.insert(0, Run(c.put_back_tree(path, run) if tree else c.put_back_file(path, run)))
    actions += [Run(cmd) for cmd in after]
    undo += [Run(cmd) for cmd in after]
    return Step(node, phase, title, tuple(actions), destructive=True, undo=tuple(undo))


def configure(name: str, conf_path: str, text: str, run: str) -> Step:
    """Keep etcd.conf aside and write the member's new one in place."""
    return Step(
        name,
        "configure",
        "write etcd.conf",
        (Run(c.save(conf_path, run)), Write(conf_path, text)),
        destructive=True,
        undo=(Run(c.put_back_file(conf_path, run)),),
    )


def set_aside(name: str, layout: NodeLayout, run_id: str) -> Step:
    """Move the data dir's home aside (runbook: rm -rf /var/lib/etcd; here never deleted) and make a new one."""
    return Step(
        name,
        "set-aside",
        f"move {c.data_home(layout.data_dir)} aside",
        (Run(c.set_aside(layout.data_dir, run_id)),),
        destructive=True,
        undo=(Run(c.put_back_data(layout.data_dir, run_id)),),
        note=f"old data kept at {c.aside_dir(layout.data_dir, run_id)}",
    )


def upload(name: str, run: str, sha256: str) -> Step:
    """Copy the verified snapshot into the node's run dir and check its sha256 there."""
    path = posixpath.join(run, SNAPSHOT_NAME)
    return Step(
        name,
        "upload",
        "copy the snapshot to the node",
        (
            Run(f"mkdir -p {c.q(run)}"),
            Upload(path),
            Run(f"echo {sha256}'  '{c.q(path)} | sha256sum -c --quiet -", timeout=600),
        ),
    )


def restore(name: str, command: str) -> Step:
    """Run `snapshot restore` into the (new, empty) data dir."""
    return Step(
        name,
        "restore",
        "snapshot restore",
        (Run(command, timeout=3600),),
        destructive=True,
        note="undo: the set-aside undo moves the restored data dir into the run dir",
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
    )


def restart_kube(f: RestoreFacts) -> Step:
    """Start kube-apiserver again and restart the controller-manager and scheduler that ran before the restore."""
    cmds = ["systemctl start kube-apiserver"]
    others = [u for u in KUBE_SERVICES[1:] if u in f.kube_active]
    if others:
        cmds.append("systemctl restart " + " ".join(others))
    return Step(f.name, "kubernetes", "restart Kubernetes services", tuple(Run(cmd) for cmd in cmds))


def control_plane(f: RestoreFacts, retained: RestoreFacts, ip: str, layout: NodeLayout, run: str) -> list[Step]:
    """The runbook's last step on a rebuilt node: kube binaries, units, kubeconfig, advertise address, services, LB."""
    units = [posixpath.join(layout.unit_dir, u) for u in retained.kube_units]
    items = [
        (layout.hyperkube, False, True),
        *((u, False, False) for u in units),
        (layout.kubectl, False, True),
        (layout.kubeconfig_dir, True, False),
    ]
    files = copy_step(
        f.name,
        "kubernetes",
        "copy Kubernetes binaries, units and kubeconfig from " + retained.name,
        retained.name,
        items,
        run,
        after=("systemctl daemon-reload",),
    )
    address = Step(
        f.name,
        "kubernetes",
        "set --advertise-address in the apiserver config",
        (Run(c.save(layout.apiserver_conf, run)), Run(c.set_advertise_address(layout.apiserver_conf, ip))),
        destructive=True,
        undo=(Run(c.put_back_file(layout.apiserver_conf, run)),),
    )
    started = [u for u in KUBE_SERVICES if u not in f.kube_active]
    services = Step(
        f.name,
        "kubernetes",
        "enable and start Kubernetes services",
        (Run("systemctl enable --now " + " ".join(KUBE_SERVICES)),),
        destructive=True,
        undo=(Run("systemctl disable --now " + " ".join(started)),) if started else (),
    )
    ifcfg = [(posixpath.join(layout.network_scripts, n), False, False) for n in IFCFG if retained.files.get(n)]
    network = copy_step(
        f.name,
        "kubernetes",
        "load balancer IPs (ifcfg-lo:*) and restart network",
        retained.name,
        ifcfg,
        run,
        after=("systemctl restart network",),
    )
    return [files, address, services, network]
