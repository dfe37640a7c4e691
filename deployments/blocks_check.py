"""Check, against the Prefect server, every block a schedule file names: it exists and is of the right type."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block

from blocks import AgeIdentity, EtcdCluster
from blocks.loading import load_block, require
from blocks.storage import STORAGE_BLOCKS, StorageBlock
from etcd_backup.errors import ConfigError

STORAGE_KINDS = ", ".join(b.get_block_type_slug() for b in STORAGE_BLOCKS)


def _notifier(block: Any) -> bool:
    return callable(getattr(block, "notify", None))


KINDS = {  # config key -> (what, block class to load with or None for '<slug>/<name>', check, expected)
    "cluster": ("cluster block", EtcdCluster, EtcdCluster, "an etcd-cluster block"),
    "storage": ("storage block", None, StorageBlock, f"a storage block ({STORAGE_KINDS})"),
    "notify": ("notify block", None, _notifier, "a notification block (one with notify(), e.g. slack-webhook)"),
    "identity": ("identity block", AgeIdentity, AgeIdentity, "an age-identity block"),
}


def check_blocks(entries: list[dict[str, Any]]) -> list[str]:
    """Every problem with the blocks the entries name, each block loaded once; empty when all are usable."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return [
            "blocks not checked: PREFECT_API_URL is not set; export PREFECT_API_URL=http://<server>:4200/api "
            "(and PREFECT_API_AUTH_STRING if the server has one)"
        ]
    problems: list[str] = []
    seen: dict[tuple[str, str], str | None] = {}
    for i, entry in enumerate(entries, 1):
        for key, (what, cls, check, expected) in KINDS.items():
            ref = entry.get(key)
            if not isinstance(ref, str) or not ref:
                continue
            if (key, ref) not in seen:
                seen[(key, ref)] = _check_one(ref, what, cls, check, expected)
            problem = seen[(key, ref)]
            if problem:
                problems.append(f"[[backup]] #{i} ({entry.get('cluster', '?')}): {problem}")
            if problem and "does not answer" in problem:
                return problems  # one line is enough when the server is down
    return problems


def _check_one(ref: str, what: str, cls: Any, check: Any, expected: str) -> str | None:
    """None when the block loads and is of the expected type, else the problem."""
    if cls is None and ref.count("/") != 1:
        return None  # the entry's own validation already reports the format
    try:
        block = load_block(ref, cls or Block, what)
        if isinstance(check, type):
            require(block, ref, check, what, expected)
        elif not check(block):
            raise ConfigError(f"{what} {ref!r} is a {block.get_block_type_slug()} block, not {expected}")
    except ConfigError as exc:
        return exc.message
    return None
