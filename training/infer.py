"""Evaluation-protocol inference on one decoded video: the windows, crop and score averaging of
:mod:`training.evaluate`, applied to frames that did not come from a shard.

``e3d predict`` decodes a new video with the preprocessing's own decoder (``preprocess.shard_task.decode_source``)
and hands its JPEG frames here. Every step is the one the loader and the evaluation use, called through the
same functions, so a video scores the same whether it went through shards or not:

* temporal: :func:`training.data.sampling.eval_windows` (``eval`` mode: every non-overlapping window) or
  :func:`~training.data.sampling.center_clip` (``val`` mode: the middle window, the Jester protocol), at the
  step :meth:`LoaderConfig.step_for` gives for the stored stride;
* spatial: :func:`~training.data.transforms.decode_frames`, :func:`~training.data.transforms.center_box`,
  :func:`~training.data.transforms.crop_resize`;
* scores: the model's logits on the normalised clips, softmax in float32, averaged over windows in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from training.data import ClipNormalizer, LoaderConfig
from training.data.sampling import center_clip, eval_windows
from training.data.transforms import center_box, crop_resize, decode_frames


def window_indices(num_frames: int, cfg: LoaderConfig, stored_stride: int = 1) -> list[np.ndarray]:
    """Stored-frame indices of the clips a video of ``num_frames`` stored frames gives in ``cfg.mode``.

    ``eval``: every non-overlapping window; ``val``: the centre clip. Each entry is ``(clip_len,)`` int64.
    """
    step = cfg.step_for(stored_stride)
    if cfg.mode == "eval":
        return eval_windows(num_frames, cfg.clip_len, step)
    if cfg.mode == "val":
        return [center_clip(num_frames, cfg.clip_len, step)]
    raise ValueError(f"inference needs a 'val' or 'eval' LoaderConfig, got mode {cfg.mode!r}")


def video_clips(jpegs: Sequence[bytes | memoryview], cfg: LoaderConfig, stored_stride: int = 1) -> np.ndarray:
    """The evaluation clips of one video from its stored JPEG frames.

    Args:
        jpegs: the video's frames as the shards store them (after the preprocessing's stride).
        cfg: ``val`` or ``eval`` loader config (clip length, size, dataset stride policy).
        stored_stride: the temporal stride the frames were stored at (2 for Jester, else 1).
    Returns:
        ``(N, 3, T, S, S)`` uint8 RGB clips, one per window, in temporal order.
    Raises:
        ValueError: no frames, or a corrupt / mis-sized frame (the message names it).
    """
    if not jpegs:
        raise ValueError("no frames to decode")
    windows = window_indices(len(jpegs), cfg, stored_stride)
    used = np.unique(np.concatenate(windows))
    # Only the frames some window uses are decoded; each is resized once (a resize depends on its frame
    # alone, so this equals the loader's per-clip resize) and windows gather from the result.
    frames = decode_frames([jpegs[i] for i in used.tolist()], fast=cfg.fast_decode)
    box = center_box(*frames.shape[1:3])
    resized = crop_resize(frames, box, cfg.size)  # (3, U, S, S)
    return np.stack([resized[:, np.searchsorted(used, w)] for w in windows])


@torch.no_grad()
def score_clips(model: torch.nn.Module, normalizer: ClipNormalizer, clips: np.ndarray | torch.Tensor,
                device: torch.device, *, batch_size: int = 16, amp: bool = False) -> np.ndarray:
    """Video score: the softmax of ``model`` on each clip, averaged over the clips (the evaluation's rule).

    Args:
        model: in eval mode; ``(B, 3, T, S, S)`` normalised float → ``(B, C)`` logits.
        normalizer: uint8 → model input, on ``device``.
        clips: ``(N, 3, T, S, S)`` uint8, N >= 1.
        amp: bf16 autocast (CUDA only), as :func:`training.evaluate.evaluate`.
    Returns:
        ``(C,)`` float64 averaged probabilities.
    """
    x_all = torch.as_tensor(clips)
    if x_all.dim() != 5 or len(x_all) == 0:
        raise ValueError(f"expected (N, 3, T, S, S) clips with N >= 1, got {tuple(x_all.shape)}")
    total: np.ndarray | None = None
    use_amp = amp and device.type == "cuda"
    for lo in range(0, len(x_all), batch_size):
        x = x_all[lo : lo + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(normalizer(x))
        probs = logits.float().softmax(dim=1).double().cpu().numpy()
        part = probs.sum(axis=0)
        total = part if total is None else total + part
    assert total is not None
    return total / len(x_all)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Class indices of the ``k`` highest scores, highest first (ties: lower index first, as the evaluation)."""
    return [int(c) for c in np.argsort(-scores, kind="stable")[:k]]
