"""A progress bar within each epoch, on the terminal of whoever started the run.

Inside a Ray Train worker stdout is a log file that Ray forwards to the driver line by line, so a bar drawn
with ``\\r`` there would arrive as garbage. Rank 0 therefore prints one tagged line per update
(:func:`format_progress`, at most every ``interval_s``); the driver's log filter (``pipeline.logs``) turns
tagged lines into a bar on its terminal (:func:`render_bar`) or drops them when not attached to one. In a plain
process attached to a terminal the bar is drawn directly.

``E3D_PROGRESS`` selects the mode on the training side: ``tag`` (tagged lines), ``bar`` (draw), ``off``;
unset: ``bar`` when stdout is a terminal, else ``off``. No torch here: the driver imports this module.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

PROGRESS_TAG = "@@e3d-progress "
ENV = "E3D_PROGRESS"


@dataclass(frozen=True)
class Progress:
    """Where rank 0 is: ``epoch`` (1-based) of ``epochs``, ``batch`` of ``batches`` in it, and the loss of
    recent steps (nats; NaN when unknown)."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    name: str = ""


def format_progress(p: Progress) -> str:
    """One tagged line: ``@@e3d-progress epoch/epochs batch/batches loss [name]``."""
    return f"{PROGRESS_TAG}{p.epoch}/{p.epochs} {p.batch}/{p.batches} {p.loss:.6g}" + (f" {p.name}" if p.name else "")


def parse_progress(line: str) -> Progress | None:
    """The :class:`Progress` of a tagged line; None for any other line or a malformed tag (never raises)."""
    if not line.startswith(PROGRESS_TAG):
        return None
    parts = line[len(PROGRESS_TAG):].strip().split(" ", 3)
    if len(parts) < 3:
        return None
    try:
        (e, es), (b, bs) = (tuple(int(v) for v in parts[i].split("/")) for i in (0, 1))
        loss = float(parts[2])
    except ValueError:
        return None
    if not (0 <= e <= es and b >= 0 and bs >= 0) or max(es, bs, b) > 10**9:
        return None
    return Progress(e, es, b, bs, loss, parts[3] if len(parts) > 3 else "")


def render_bar(p: Progress, width: int = 30) -> str:
    """``epoch 2/45 [#########.........] 12/40 loss 1.234`` (no newline); unknown totals show no bar."""
    head = f"{p.name + ': ' if p.name else ''}epoch {p.epoch}/{p.epochs} "
    if p.batches > 0:
        filled = min(width, round(width * p.batch / p.batches))
        head += f"[{'#' * filled}{'.' * (width - filled)}] {p.batch}/{p.batches}"
    else:
        head += f"batch {p.batch}"
    return head + (f" loss {p.loss:.4f}" if math.isfinite(p.loss) else "")


class StepProgress:
    """Rank 0's in-epoch progress (a no-op elsewhere or when off); :meth:`update` after each step."""

    def __init__(self, *, enabled: bool, interval_s: float = 1.0, stream=None):
        self.stream = stream or sys.stdout
        mode = os.environ.get(ENV) or ("bar" if _isatty(self.stream) else "off")
        self.mode = mode if enabled and mode in ("tag", "bar") else "off"
        self.interval_s = interval_s
        self._last = 0.0
        self._drawn = False

    def update(self, p: Progress, *, force: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        if self.mode == "tag":
            print(format_progress(p), file=self.stream, flush=True)
        else:
            self.stream.write("\r" + render_bar(p) + "\x1b[K")
            self.stream.flush()
            self._drawn = True

    def clear(self) -> None:
        """Remove a drawn bar before a normal line is printed (the epoch line replaces it)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
