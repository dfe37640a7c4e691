"""What a restore step does on a node: run a command, relay a file or tree, upload the snapshot, write a file."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field

CLUSTER = "cluster"  # the pseudo-node of checks run from the flow process (health, member list)


@dataclass(frozen=True)
class Run:
    """Run a shell command on the node."""

    cmd: str
    timeout: float = 120.0

    def describe(self) -> str:
        """One line for plans and logs."""
        return f"`{self.cmd}`"


@dataclass(frozen=True)
class Relay:
    """Copy path (a file, or a directory's contents when tree) from the source node to dest on this node."""

    source: str
    path: str
    dest: str
    tree: bool = False

    def describe(self) -> str:
        """One line for plans and logs."""
        what = "directory" if self.tree else "file"
        return f"copy {what} {self.source}:{self.path} -> {self.dest} (relayed through the flow)"


@dataclass(frozen=True)
class Upload:
    """Stream the verified snapshot from the flow process to dest on the node, checked on the node as it is written.

    codec "zstd": compressed on the wire; zstd checks the frame's content checksum as it decodes.
    codec "raw": sent as it is; the node prints the sha256 of what it wrote, compared with `sha256`.
    """

    dest: str
    sha256: str
    codec: str = "raw"

    def describe(self) -> str:
        """One line for plans and logs."""
        how = "zstd on the wire, checked by its content checksum" if self.codec == "zstd" else "sha256 checked"
        return f"upload the verified snapshot -> {self.dest} ({how} on the node)"

    def command(self) -> str:
        """The node command: decode the wire stream and write dest in place (raw: print the sha256 written)."""
        where, dest = shlex.quote(posixpath.dirname(self.dest) or "/"), shlex.quote(self.dest)
        if self.codec == "zstd":
            return f"mkdir -p {where} && zstd -dqc > {dest}"
        return f"mkdir -p {where} && tee {dest} | sha256sum"


@dataclass(frozen=True)
class Write:
    """Write text to path on the node, in place."""

    path: str
    text: str = field(repr=False)
    mode: int | None = None

    def describe(self) -> str:
        """One line for plans and logs."""
        return f"write {self.path} ({len(self.text.splitlines())} lines)"


@dataclass(frozen=True)
class Check:
    """A check run from the flow process (e.g. wait until every member is healthy)."""

    name: str
    timeout: float = 180.0

    def describe(self) -> str:
        """One line for plans and logs."""
        return f"check: {self.name}"


Action = Run | Relay | Upload | Write | Check


@dataclass(frozen=True)
class Step:
    """One runbook step on one node: its actions, whether it changes the node, how to undo it, if it may repeat.

    `repeatable` steps can run again after a transient error (SSH reset, timeout, leader
    election) without doing anything twice: copies keep the first saved original, writes
    overwrite, health checks only read. The others (moving a data dir aside, `snapshot
    restore`, `member add`) never retry. `irreversible` steps (`member remove`) cannot be
    undone; their note says what that leaves behind after a failure.
    """

    node: str
    phase: str
    title: str
    actions: tuple[Action, ...]
    destructive: bool = False
    undo: tuple[Run, ...] = ()
    note: str = ""
    repeatable: bool = False
    irreversible: bool = False

    @property
    def name(self) -> str:
        """The name an operator reads: 'stop etcd @ etcd2', 'copy /etc/etcd etcd1 -> etcd3', 'wait healthy'."""
        if self.node == CLUSTER or " -> " in self.title:
            return self.title
        return f"{self.title} @ {self.node}"

    @property
    def undo_name(self) -> str:
        """The name of the step's undo: 'undo: set aside /var/lib/etcd @ etcd2'."""
        return f"undo: {self.name}"
