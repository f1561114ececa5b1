"""Small helpers shared by several test modules (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


class EdgeRng:
    """A stand-in for ``np.random.Generator.integers`` that always draws the lowest or the highest value.

    ``integers(low, high)`` returns ``high - 1`` (``high=True``) or ``low``; ``integers(n)`` means ``[0, n)``.
    """

    def __init__(self, high: bool):
        self.high = high

    def integers(self, low, high=None):
        if high is None:
            low, high = 0, low
        return high - 1 if self.high else low


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``cond()`` every ``interval`` seconds (no fixed sleeps) while ``proc`` runs.

    Returns True as soon as ``cond()`` holds; False if ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(interval)
    return False
