"""Faults played on a master node: one subcommand of a real binary made to fail, everything else run for real."""

from __future__ import annotations

import shutil


def fail_subcommand(node, binary: str, subcommand: str, message: str, delay: float = 0) -> None:
    """Replace /usr/bin/<binary> in place by a script that fails `<binary> <subcommand>` and runs the real one else."""
    real = node.path(f"/root/{binary}.real")
    shutil.copyfile(node.path(f"/usr/bin/{binary}"), real)
    real.chmod(0o755)
    first, second = subcommand.split()
    script = (
        f'#!/bin/sh\nif [ "$1" = {first} ] && [ "$2" = {second} ]; then\n'
        f'  sleep {delay}; echo "{message}" >&2; exit 1\nfi\nexec /root/{binary}.real "$@"\n'
    )
    _overwrite(node, binary, script.encode())


def put_back(node, binary: str) -> None:
    """Undo fail_subcommand: the real binary back at /usr/bin/<binary>."""
    _overwrite(node, binary, node.path(f"/root/{binary}.real").read_bytes())


def _overwrite(node, binary: str, content: bytes) -> None:
    with open(node.path(f"/usr/bin/{binary}"), "r+b") as f:  # in place: the path is a bind mount
        f.truncate(0)
        f.write(content)
