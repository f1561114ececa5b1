"""What a training run returns to its caller: :class:`RunResult`, one typed record instead of a dict that the
sweep and the CLI read with ``.get``. The loop's ``metrics.json`` stays the full record on disk; the fields
here are the ones callers use, with the whole dict kept in ``metrics``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NAN = math.nan


@dataclass(frozen=True)
class RunResult:
    """A finished (or stopped) training run, as :func:`training.ray_train.run_training` / ``run_group``
    return it.

    Attributes:
        status: ``finished``, or ``nonfinite`` (the loss went NaN/inf; ``message`` says where).
        model, dataset: registry name and dataset of the run ("" when the run stopped early).
        epochs: epochs the run was configured to complete (0 when it stopped early); ``step`` optimizer steps
            done in all (global, 1-based count); ``world_size`` Ray Train workers.
        resumed_at_step: the step this session resumed from, or None for a fresh start.
        best_val_top1: validation video top-1 (centre clips) of the best epoch (fraction in [0, 1]; -1 without
            one); ``best_epoch`` that epoch (1-based).
        eval_video_top1, eval_video_top5, eval_clip_top1: final evaluation accuracies (fractions; NaN when
            ``final_eval`` was off or the run stopped); ``eval_videos`` / ``eval_incomplete_videos`` counts.
        checkpoint, best_checkpoint: latest and best checkpoint files (paths or URIs); in a shared-decode
            group both are the member's own final ``out/checkpoint.pt`` and ``group_checkpoint`` is the
            group's latest.
        predictions: the final evaluation's Parquet file, if written.
        message: why the run stopped (``nonfinite``), else "".
        metrics: the loop's whole final-metrics dict (``metrics.json``).
    """

    status: str
    model: str = ""
    dataset: str = ""
    epochs: int = 0
    step: int = 0
    world_size: int = 1
    resumed_at_step: int | None = None
    best_val_top1: float = NAN
    eval_video_top1: float = NAN
    eval_video_top5: float = NAN
    eval_clip_top1: float = NAN
    eval_videos: int = 0
    eval_incomplete_videos: int = 0
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    group_checkpoint: str | None = None
    predictions: str | None = None
    message: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], **paths: str | None) -> RunResult:
        """From the loop's final metrics (``metrics.json``) and the checkpoint ``paths`` the driver found."""
        def num(key: str, kind: type = float, default: Any = NAN) -> Any:
            value = metrics.get(key)
            return default if value is None else kind(value)

        return cls(
            status=str(metrics.get("status", "finished")), model=str(metrics.get("model") or ""),
            dataset=str(metrics.get("dataset") or ""), epochs=num("epochs", int, 0), step=num("step", int, 0),
            world_size=num("world_size", int, 1), resumed_at_step=num("resumed_at_step", int, None),
            best_val_top1=num("best_val_top1"), eval_video_top1=num("eval_video_top1"),
            eval_video_top5=num("eval_video_top5"), eval_clip_top1=num("eval_clip_top1"),
            eval_videos=num("eval_videos", int, 0), eval_incomplete_videos=num("eval_incomplete_videos", int, 0),
            predictions=metrics.get("predictions"), message=str(metrics.get("message") or ""),
            metrics=dict(metrics), **paths)


def _opt_float(v: Any) -> float | None:
    """A metric that is None on an unlabelled split (no accuracy to report)."""
    return None if v is None else float(v)


@dataclass(frozen=True)
class EvaluationResult:
    """A checkpoint's evaluation, as :func:`training.ray_train.run_evaluation` returns it to the CLI and the
    demo (instead of the ``eval_<split>.json`` dict they read with ``.get``).

    Attributes:
        split: the split evaluated; ``checkpoint`` the checkpoint file (path or URI).
        videos, clips: videos and clips evaluated; ``incomplete_videos`` videos that got fewer clips than planned.
        video_top1, video_top5, clip_top1, clip_top5: accuracies (fractions in [0, 1]); ``loss`` nats per clip.
        predictions: the per-video predictions file (Parquet), or None when none was written.
        metrics: the whole ``eval_<split>.json`` dict.
    """

    split: str
    checkpoint: str
    videos: int
    clips: int
    video_top1: float | None
    video_top5: float | None
    clip_top1: float | None
    clip_top5: float | None
    loss: float | None
    incomplete_videos: int = 0
    predictions: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationResult:
        """From the dict of :func:`training.evaluate.evaluate_checkpoint` (``eval_``-prefixed metrics plus
        ``split``, ``checkpoint`` and ``predictions``); ``ValueError`` naming the key when one is missing."""
        try:
            return cls(split=str(d["split"]), checkpoint=str(d["checkpoint"]), videos=int(d["eval_videos"]),
                       clips=int(d["eval_clips"]), video_top1=_opt_float(d["eval_video_top1"]),
                       video_top5=_opt_float(d["eval_video_top5"]), clip_top1=_opt_float(d["eval_clip_top1"]),
                       clip_top5=_opt_float(d["eval_clip_top5"]), loss=_opt_float(d["eval_loss"]),
                       incomplete_videos=int(d.get("eval_incomplete_videos", 0)), predictions=d.get("predictions"),
                       metrics=dict(d))
        except KeyError as exc:
            raise ValueError(f"evaluation result lacks {exc.args[0]!r}") from None
