"""What a restore step does on a node: run a command, relay a file or tree, upload the snapshot, write a file."""

from __future__ import annotations

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
    """Stream the verified snapshot from the flow process to dest on the node."""

    dest: str

    def describe(self) -> str:
        """One line for plans and logs."""
        return f"upload the verified snapshot -> {self.dest}"


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
    """One ordered step on one node: its actions, whether it changes the node, and how to undo it."""

    node: str
    phase: str
    title: str
    actions: tuple[Action, ...]
    destructive: bool = False
    undo: tuple[Run, ...] = ()
    note: str = ""
