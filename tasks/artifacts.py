"""Helpers for Prefect artifacts: valid keys, and a progress artifact fed by a core progress callback."""

from __future__ import annotations

import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact

PROGRESS_EVERY_SECONDS = 2.0


def artifact_key(prefix: str, name: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes)."""
    slug = "".join(c if c.isalnum() else "-" for c in f"{prefix}-{name}".lower())
    return "-".join(filter(None, slug.split("-")))


class Progress:
    """A progress artifact updated at most every few seconds; call it with (done, total)."""

    def __init__(self, key: str, description: str = "snapshot streamed to storage"):
        self.artifact = create_progress_artifact(0.0, key=key, description=description)
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        update_progress_artifact(self.artifact, progress=min(100.0, 100.0 * done / max(total, 1)))
