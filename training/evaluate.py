"""Evaluation: clip-level and video-level accuracy, distributed, every video counted exactly once.

Protocol (the released ``test.py`` + ``video_accuracy.py``, section 4 of the paper): every non-overlapping
``clip_len``-frame window of a video is classified with a centre crop (loader mode ``eval``); the softmax
scores of a video's windows are averaged and the video's top-1/top-5 come from that average. Clip accuracy
counts each window on its own. In loader mode ``val`` (one centre clip per video, the per-epoch validation
and the Jester protocol) the two coincide.

Distribution: the loader gives every rank the same number of batches and marks padding with ``valid =
False``; a video's windows may be split over ranks. Each rank sums the softmax scores per video key over its
*valid* clips; the per-rank tables are gathered and added, so a window is counted once however the ranks
split the work. The window count of every video is checked against what its frame count implies.

Unlabelled splits (Kinetics-600 test, Jester test: label ``-1`` in the shards) are predicted but not scored:
accuracies and loss count labelled clips only and are None when there are none. Non-finite logits (a diverged
model) are refused with :class:`NonFiniteEvalError` on every rank, never averaged into NaN scores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shards import storage, strict_json
from training.data import PRESETS, ClipLoader, ClipNormalizer, InputConvention, LoaderConfig, ShardSpec
from training.data.modes import ItemMode, mode_for


class EvalCountError(RuntimeError):
    """A video got more clips than its frame count allows (a duplicate) — the exact-once guarantee broke."""


class NonFiniteEvalError(RuntimeError):
    """The model gave NaN/inf logits for some clips: its weights diverged, so there is nothing to score."""


@dataclass
class EvalResult:
    """Metrics (fractions in [0, 1]; loss in nats per clip) and, when requested, per-video predictions.

    Accuracies and loss count labelled videos/clips only (``labelled_videos``, ``labelled_clips``); they are
    None when the split has no labels (a test split: predictions only).

    ``predictions`` rows: ``key`` (str), ``label`` (int, -1 unlabelled), ``pred`` (int, top-1 class), ``top5``
    (list of int), ``score`` (float, averaged softmax score of ``pred``), ``clips`` (int, windows averaged),
    ``top5_scores`` (list of float, the averaged softmax scores of ``top5``).
    """

    videos: int
    clips: int
    video_top1: float | None
    video_top5: float | None
    clip_top1: float | None
    clip_top5: float | None
    loss: float | None
    incomplete_videos: int = 0
    labelled_videos: int = 0
    labelled_clips: int = 0
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        """Whether any clip had a label (else there are predictions but no accuracy)."""
        return self.labelled_clips > 0

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        keys = ("videos", "clips", "video_top1", "video_top5", "clip_top1", "clip_top5", "loss",
                "incomplete_videos", "labelled_videos", "labelled_clips")
        return {prefix + k: getattr(self, k) for k in keys}


def stored_convention(model: torch.nn.Module, ckpt: Mapping[str, Any]) -> InputConvention:
    """The input convention a checkpoint's weights were trained with: the one stored next to the weights
    (``model.input_convention`` after :func:`training.checkpoints.load_checkpoint`). Checkpoints written before
    training kept it in sync name their preset in ``extra["normalization"]`` instead, which then wins."""
    legacy = (ckpt.get("extra") or {}).get("normalization")
    conv = model.input_convention
    if legacy is not None and legacy in PRESETS and PRESETS[legacy] != conv:
        return PRESETS[legacy]
    return conv


def expected_clips(specs: Sequence[ShardSpec], cfg: LoaderConfig) -> dict[str, int]:
    """Clips per video key that a correct ``val``/``eval`` pass yields: 1 per video (``val``), or the number
    of non-overlapping windows (``eval``)."""
    mode = mode_for(cfg)
    if not isinstance(mode, ItemMode):
        raise ValueError("expected_clips needs a 'val' or 'eval' mode config")
    out: dict[str, int] = {}
    for spec in specs:
        if spec.videos is None:
            raise ValueError(f"{spec.url}: shard spec has no per-video list (use shard_specs(videos=True))")
        for key, num_frames, stride in spec.videos:
            out[key] = mode.windows(cfg, num_frames, stride)
    return out


@torch.no_grad()
def _accumulate(model: torch.nn.Module, loader: ClipLoader, normalizer: ClipNormalizer, device: torch.device,
                k: int, use_amp: bool) -> tuple[torch.Tensor, tuple[dict, dict, dict]]:
    """This rank's pass: float64 ``(clips, top-1 hits, top-k hits, loss sum, labelled clips, non-finite
    clips)`` and per video key the sum of softmax scores ((C,) float64), the clip count and the label."""
    model.eval()
    scores: dict[str, np.ndarray] = {}  # key -> (C,) float64 sum of softmax scores over the video's clips
    counts: dict[str, int] = {}
    labels: dict[str, int] = {}
    clip_stats = torch.zeros(6, dtype=torch.float64)  # clips, top1, top5 hits, loss sum, labelled, non-finite
    for batch in loader:
        valid = batch["valid"]
        if not bool(valid.any()):
            continue  # all padding: nothing to count (every rank still iterates the same number of batches)
        x = batch["clips"].to(device, non_blocking=True)
        y = batch["labels"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(normalizer(x))
        logits = logits.float()
        vmask = valid.to(device)
        bad = (~torch.isfinite(logits).all(dim=1)) & vmask
        if bool(bad.any()):  # counted, decided jointly after the pass (every rank must reach the all-reduce)
            clip_stats[5] += float(bad.sum())
            logits = torch.nan_to_num(logits)
        lmask = vmask & (y >= 0)  # labelled clips: unlabelled (-1) ones are predicted, not scored
        probs = logits.softmax(dim=1)
        topk = logits.topk(k, dim=1).indices
        hit1 = (topk[:, 0] == y) & lmask
        hitk = (topk == y[:, None]).any(dim=1) & lmask
        loss = F.cross_entropy(logits[lmask], y[lmask], reduction="sum") if bool(lmask.any()) else 0.0
        clip_stats[:5] += torch.tensor([float(vmask.sum()), float(hit1.sum()), float(hitk.sum()), float(loss),
                                        float(lmask.sum())], dtype=torch.float64)
        probs_np = probs.double().cpu().numpy()
        for i in np.flatnonzero(valid.numpy()):
            key = batch["keys"][i]
            if key in scores:
                scores[key] += probs_np[i]
                counts[key] += 1
            else:
                scores[key] = probs_np[i].copy()
                counts[key] = 1
                labels[key] = int(batch["labels"][i])
    return clip_stats, (scores, counts, labels)


def _combine_ranks(clip_stats: torch.Tensor, per_video: tuple[dict, dict, dict]) -> tuple[dict, dict, dict]:
    """Every rank gets every rank's per-video sums and adds them up (``clip_stats`` is all-reduced in place)."""
    scores, counts, labels = per_video
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if world > 1:
        torch.distributed.all_reduce(clip_stats)
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (scores, counts, labels))
    else:
        gathered = [(scores, counts, labels)]
    tot_scores: dict[str, np.ndarray] = {}
    tot_counts: dict[str, int] = {}
    tot_labels: dict[str, int] = {}
    for s, c, lab in gathered:
        for key, v in s.items():
            if key in tot_scores:
                tot_scores[key] = tot_scores[key] + v
                tot_counts[key] += c[key]
            else:
                tot_scores[key], tot_counts[key], tot_labels[key] = v, c[key], lab[key]
    return tot_scores, tot_counts, tot_labels


def _check_counts(tot_counts: Mapping[str, int], expected: Mapping[str, int]) -> int:
    """Raise :class:`EvalCountError` when a video got more clips than it has windows; return how many videos
    got fewer (a corrupt sample was skipped)."""
    over = {key: (n, expected.get(key, 0)) for key, n in tot_counts.items() if n > expected.get(key, 0)}
    if over:
        sample = ", ".join(f"{key}: {n} > {e}" for key, (n, e) in list(over.items())[:5])
        raise EvalCountError(f"{len(over)} video(s) got more clips than they have windows ({sample})")
    return sum(1 for key, e in expected.items() if tot_counts.get(key, 0) < e)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: ClipLoader, normalizer: ClipNormalizer, device: torch.device, *,
             num_classes: int, expected: Mapping[str, int] | None = None, amp: bool = False,
             with_predictions: bool = False) -> EvalResult:
    """Run one ``val`` or ``eval`` pass of ``loader`` through ``model`` on every rank and combine the ranks.

    Args:
        model: maps normalised ``(B, 3, T, S, S)`` float clips to ``(B, num_classes)`` logits; it is put in
            eval mode (and left there).
        loader: a ``val``/``eval`` mode :class:`ClipLoader` of this rank.
        normalizer: uint8 → model input, on ``device``.
        expected: clips per video key (:func:`expected_clips`); a video with more clips raises
            :class:`EvalCountError`, one with fewer (a corrupt sample) is counted in ``incomplete_videos``.
        amp: bf16 autocast (CUDA only).
        with_predictions: fill ``predictions`` (on every rank; callers write them from rank 0).

    Returns:
        The same :class:`EvalResult` on every rank.

    Raises:
        NonFiniteEvalError: (on every rank) the model gave NaN/inf logits for at least one clip.
    """
    if not isinstance(loader.dataset.mode, ItemMode):
        raise ValueError("evaluate needs a 'val' or 'eval' mode loader")
    k = min(5, num_classes)
    clip_stats, per_video = _accumulate(model, loader, normalizer, device, k, amp and device.type == "cuda")
    tot_scores, tot_counts, tot_labels = _combine_ranks(clip_stats, per_video)
    n_clips, c1, c5, loss_sum, n_labelled, n_bad = clip_stats.tolist()
    if n_bad:
        raise NonFiniteEvalError(f"the model gave non-finite (NaN/inf) logits for {int(n_bad)} of {int(n_clips)} "
                                 "clips: its weights diverged (lower the lr, or use an earlier checkpoint); "
                                 "no scores computed")
    incomplete = 0 if expected is None else _check_counts(tot_counts, expected)

    v_top1 = v_top5 = v_labelled = 0
    preds: list[dict[str, Any]] = []
    for key in sorted(tot_scores):
        avg = tot_scores[key] / tot_counts[key]
        order = np.argsort(-avg, kind="stable")[:k]
        label = tot_labels[key]
        if label >= 0:
            v_labelled += 1
            v_top1 += int(order[0] == label)
            v_top5 += int(label in order)
        if with_predictions:
            preds.append({"key": key, "label": label, "pred": int(order[0]), "top5": [int(c) for c in order],
                          "score": float(avg[order[0]]), "clips": int(tot_counts[key]),
                          "top5_scores": [float(avg[c]) for c in order]})
    n_videos = len(tot_scores)

    def frac(num: float, den: float) -> float | None:
        return num / den if den else None

    return EvalResult(
        videos=n_videos, clips=int(n_clips),
        video_top1=frac(v_top1, v_labelled), video_top5=frac(v_top5, v_labelled),
        clip_top1=frac(c1, n_labelled), clip_top5=frac(c5, n_labelled), loss=frac(loss_sum, n_labelled),
        incomplete_videos=incomplete, labelled_videos=v_labelled, labelled_clips=int(n_labelled), predictions=preds,
    )


def write_predictions(path: str | os.PathLike, predictions: Sequence[Mapping[str, Any]],
                      class_names: Sequence[str] | None = None) -> str:
    """Write per-video predictions as Parquet (``.parquet``) or JSON lines (anything else), atomically, to a
    local path or an object-store URI. Returns ``path``.

    Adds ``label_name``/``pred_name`` columns when ``class_names`` is given.
    """
    import io

    rows = [dict(r) for r in predictions]
    if class_names is not None:
        for r in rows:
            r["label_name"] = class_names[r["label"]] if 0 <= r["label"] < len(class_names) else None
            r["pred_name"] = class_names[r["pred"]]
    path = os.fspath(path)
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        data = buf.getvalue()
    else:
        data = "".join(strict_json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    storage.write_bytes_atomic(*storage.resolve(path), data)
    return path


def evaluate_checkpoint(checkpoint: str, shards: str, *, out: str | None = None, split: str | None = None,
                        batch_size: int = 16, use_gpu: bool = False, device: torch.device | None = None,
                        mode: str | None = None, loader_workers: int = 0, cache_dir: str | None = None
                        ) -> dict[str, Any]:
    """Evaluate one of our checkpoints on a split with the protocol of this module, on this rank.

    ``mode`` picks the windows: ``eval`` (every non-overlapping window, scores averaged), ``val`` (the middle
    window) or None, the dataset's protocol (``DatasetSpec.eval_windows``: Jester's middle window, every window
    elsewhere), which is also what a run's final evaluation and ``e3d predict`` use.

    Dataset, clip length, crop size, normalisation and class names come from the checkpoint's training
    config. Runs on every rank of an initialised process group (each evaluates its share) or alone.
    Rank 0 writes ``out/predictions_<split>.parquet`` and ``out/eval_<split>.json``.

    Returns the metrics (:meth:`EvalResult.metrics`, prefix ``eval_``; accuracies None on an unlabelled
    split) plus ``split`` and ``predictions``. Raises :class:`NonFiniteEvalError` for a diverged model.
    """
    from shards.manifest import read_dataset_info
    from training.checkpoints import load_checkpoint
    from training.config import TrainConfig
    from training.data import ClipStream, shard_specs

    device = device or (torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu"))
    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    extra = ckpt.get("extra") or {}
    if "train_config" not in extra:
        raise ValueError(f"{checkpoint}: no training config inside; evaluate it with training.evaluate.evaluate")
    tcfg = TrainConfig.from_dict(extra["train_config"])
    classes = list(read_dataset_info(shards)["classes"])
    if extra.get("classes") and list(extra["classes"]) != classes:
        raise ValueError(f"{shards} has classes {classes}, the checkpoint was trained on {extra['classes']}")
    split = split or tcfg.splits[1]
    mode = mode or tcfg.eval_mode
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    # cache_dir: this evaluation's own (the training run's may name a folder on another machine).
    lcfg = tcfg.loader_config(mode, batch_size=batch_size, num_workers=loader_workers, num_classes=len(classes),
                              cache_dir=cache_dir)
    specs = shard_specs(shards, split, videos=True)
    loader = ClipLoader(ClipStream(specs, lcfg), pin_memory=device.type == "cuda")
    channels_last = tcfg.uses_channels_last(device.type)
    normalizer = ClipNormalizer(stored_convention(model, ckpt), channels_last=channels_last).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    r = evaluate(model, loader, normalizer, device, num_classes=len(classes), expected=expected_clips(specs, lcfg),
                 amp=tcfg.amp, with_predictions=rank == 0)
    result: dict[str, Any] = {**r.metrics("eval_"), "split": split, "checkpoint": str(checkpoint)}
    if rank == 0 and out is not None:  # out: a local folder or an object-store URI
        result["predictions"] = write_predictions(storage.join(os.fspath(out), f"predictions_{split}.parquet"),
                                                  r.predictions, classes)
        storage.write_bytes_atomic(*storage.resolve(storage.join(os.fspath(out), f"eval_{split}.json")),
                                   (strict_json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return result
