"""Waiting in tests: poll a check until it holds, and fail saying what never came."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    what: str = "the condition",
    timeout: float = 60,
    every: float = 0.2,
    alive: subprocess.Popen | None = None,
) -> T:
    """Call check() every `every` s until it returns something truthy and return that; `alive` must keep running."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert alive is None or alive.poll() is None, f"the process {alive.args} exited before {what}"
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(every)
    return result
