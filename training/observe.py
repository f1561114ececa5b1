"""Observability of a training run: TensorBoard scalars, a console line per epoch, a final metrics JSON and an
optional torch.profiler trace. Only rank 0 writes; on other ranks every method is a no-op, so the training loop
calls them unconditionally.

Files under the run directory ``out`` (a local path, or an ``s3://``/``gs://`` URI: then rank 0 writes into a
local working folder that is uploaded at every epoch end, after each JSON write and at close)::

    tensorboard/events.out.tfevents.*     scalars (see :class:`Observer`)
    profile/*.pt.trace.json               torch.profiler trace (open with torch-tb-profiler: tensorboard --logdir)
    metrics.json                          final metrics and run summary
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from shards import strict_json
from shards.storage import DirMirror
from training.progress import Progress, StepProgress


class Observer:
    """Rank-0 reporting.

    Scalars written (tag: unit):
        ``train/loss`` (mean cross-entropy, nats), ``train/top1``, ``train/top5`` (fractions of clips),
        ``train/lr``, ``train/clips_per_s`` (all workers together, wall clock), ``train/data_wait_frac``
        (fraction of step wall time spent waiting for the next batch), ``val/loss``, ``val/top1``,
        ``val/top5``, ``eval/video_top1``, ``eval/video_top5``, ``eval/clip_top1``. The x axis is the
        global optimizer step.
    """

    def __init__(self, out: str, *, enabled: bool, print_fn=print):
        self.enabled = enabled
        self.print = print_fn
        self.writer = None
        self.mirror: DirMirror | None = None
        #: local folder standing for ``out`` (``out`` itself when local); None on ranks other than 0
        self.dir: Path | None = None
        #: the in-epoch bar (training.progress): drawn here on a terminal, tagged lines under Ray, else nothing
        self.progress = StepProgress(enabled=enabled)
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.mirror = DirMirror(out, prefix="e3d-run-")
            self.dir = Path(self.mirror.local)
            self.dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        for tag, v in values.items():
            if v is not None and math.isfinite(float(v)):
                self.writer.add_scalar(tag, float(v), step)

    def epoch_line(self, epoch: int, epochs: int, step: int, train: Mapping[str, float],
                   val: Mapping[str, float] | None, lr: float, name: str | None = None) -> None:
        """One console line per epoch (the progress report); ``name`` prefixes it (a member of a group; else
        ``E3D_RUN_LABEL``, set for a sweep's concurrent trials)."""
        if not self.enabled:
            return
        name = name or os.environ.get("E3D_RUN_LABEL") or None
        self.progress.clear()
        line = (f"{name + ': ' if name else ''}epoch {epoch + 1}/{epochs} step {step}: loss {train['loss']:.4f} "
                f"top1 {train['top1']:.3f} lr {lr:.2e} {train['clips_per_s']:.1f} clips/s "
                f"data-wait {train['data_wait_frac']:.0%}")
        if val:
            line += f" | val loss {val['loss']:.4f} top1 {val['top1']:.3f} top5 {val['top5']:.3f}"
        self.print(line, flush=True)

    def step_progress(self, epoch: int, epochs: int, batch: int, batches: int, loss: float) -> None:
        """After each training step: ``epoch`` 0-based, ``batch`` steps done of ``batches`` in this epoch, mean
        loss so far (nats). Rate-limited; a no-op off rank 0 or when no one watches."""
        if self.enabled:
            self.progress.update(Progress(epoch + 1, epochs, batch, batches, loss,
                                          os.environ.get("E3D_RUN_LABEL", "")))

    def write_json(self, name: str, payload: Mapping[str, Any]) -> Path | None:
        """Write ``out/name`` atomically (temporary file + rename; on object storage one PUT); non-finite
        numbers become ``null`` (valid JSON)."""
        if self.dir is None:
            return None
        path = self.dir / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(strict_json.dumps(payload, indent=1, sort_keys=True, default=float) + "\n")
        os.replace(tmp, path)
        self.sync()
        return path

    def sync(self) -> None:
        """Upload what changed to an object-store ``out`` (no-op for a local one)."""
        if self.mirror is not None:
            self.mirror.sync()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        self.sync()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None


class Meter:
    """Running sums of one training epoch's statistics (per rank; reduced with :meth:`reduced`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = 0.0  # sum over clips of the per-clip loss (nats)
        self.top1 = 0
        self.top5 = 0
        self.clips = 0
        self.wait_s = 0.0  # wall seconds spent waiting for batches
        self.step_s = 0.0  # wall seconds of whole steps (wait included)
        self.t0 = time.perf_counter()

    def add(self, loss: float, top1: int, top5: int, clips: int, wait_s: float, step_s: float) -> None:
        self.loss_sum += loss * clips
        self.top1 += top1
        self.top5 += top5
        self.clips += clips
        self.wait_s += wait_s
        self.step_s += step_s

    def reduced(self, world_size: int) -> dict[str, float]:
        """Statistics over all ranks (one small all-reduce when distributed)."""
        t = torch.tensor([self.loss_sum, self.top1, self.top5, self.clips, self.wait_s, self.step_s],
                         dtype=torch.float64)
        if world_size > 1:
            torch.distributed.all_reduce(t)
        loss_sum, top1, top5, clips, wait_s, step_s = t.tolist()
        elapsed = time.perf_counter() - self.t0
        n = max(clips, 1.0)
        return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "clips": clips,
                "clips_per_s": clips / elapsed if elapsed > 0 else 0.0,
                "data_wait_frac": wait_s / step_s if step_s > 0 else 0.0}


@contextlib.contextmanager
def maybe_profile(out: str | Path | None, steps: int, *, enabled: bool, cuda: bool) -> Iterator[Any]:
    """A torch.profiler context recording ``steps`` steps after one warm-up step, written with
    ``tensorboard_trace_handler`` to ``out/profile`` (a local folder; the torch-tb-profiler plugin reads it).

    Yields the profiler (call ``.step()`` once per training step) or None when off.
    """
    if not enabled or steps <= 0 or out is None:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trace_dir = Path(out) / "profile"
    trace_dir.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                 on_trace_ready=tensorboard_trace_handler(str(trace_dir)), record_shapes=False) as prof:
        yield prof
