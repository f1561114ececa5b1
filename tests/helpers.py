"""Small helpers shared by several test modules (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from shards import storage
from training.loop import Hooks


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


# -- fault injection for training runs (training.loop.Hooks) ---------------------------------------------

class RaiseAt(Hooks):
    """Raise on rank 0 after global step ``step``, once per run directory: a marker file ``.fault-raise@N`` in
    the run's ``out`` remembers it fired, so the restarted (or resumed) run gets past it. Picklable, for Ray."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step, cfg, master):
        if step != self.step or not master:
            return
        fs, base = storage.resolve(cfg.out)
        marker = storage.join(base, f".fault-raise@{self.step}")
        if not storage.exists(fs, marker):
            storage.write_bytes_atomic(fs, marker, b"")
            raise RuntimeError(f"injected fault at step {step}")


class NanAt(Hooks):
    """Make every member's loss NaN at global step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def loss(self, step, loss):
        return loss * float("nan") if step == self.step else loss


def jester_shards(base: Path, *, num_classes: int, videos_per_class: int, seed: int, shard_size: int) -> str:
    """Synthetic Jester (no bad inputs) under ``base/src``, preprocessed in this process at 32 px into
    ``base/shards``; returns that root. The small shared dataset of the loader, index and training tests."""
    from preprocess.config import PreprocessConfig
    from preprocess.ray_tasks import run_tasks_local
    from preprocess.run import preprocess
    from preprocess.synth import SynthConfig, generate

    generate("jester", base / "src", SynthConfig(num_classes=num_classes, videos_per_class=videos_per_class,
                                                 seed=seed, bad_inputs=False))
    out = base / "shards"
    preprocess(PreprocessConfig(dataset="jester", src=str(base / "src"), out=str(out), short_side=32,
                                shard_size=shard_size, progress=False), executor=run_tasks_local)
    return str(out)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a process group or a Ray head)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
