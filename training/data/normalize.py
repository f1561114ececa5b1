"""Normalisation of uint8 clips, run on the training device (not in the loader).

The loader ships ``(B, 3, T, H, W)`` uint8 RGB clips: 4x less to copy than float32, and no CPU time spent
on arithmetic the GPU does for free. What a model expects depends on how it was trained, so the step is a
small module configured by a :class:`Normalization`:

1. reorder channels (``RGB`` or ``BGR``) — the released Kinetics models were trained on BGR frames because
   their loader wrapped OpenCV's BGR arrays as RGB images;
2. multiply by ``scale`` (1 keeps 0–255, the released code's ``norm_value 1``; 1/255 gives 0–1);
3. subtract ``mean`` and divide by ``std``, both given per channel **in the model's channel order**.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Channel means of the released code's default ``--mean_dataset activitynet`` (0–255 scale).
ACTIVITYNET_MEAN = (114.7748, 107.7354, 99.4750)
#: ``get_mean(dataset='kinetics')`` of the released code (0–255 scale).
KINETICS_MEAN = (110.63666788, 103.16065604, 96.29023126)
#: ``get_std()`` of the released code, used only with ``--std_norm``.
RELEASED_STD = (38.7568578, 37.88248729, 40.02898126)


@dataclass(frozen=True)
class Normalization:
    """``y[c] = (x[order[c]] * scale - mean[c]) / std[c]`` for a uint8 RGB clip ``x``."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError("mean and std need 3 values, std non-zero")


#: Presets. ``released-*`` reproduce what the released checkpoints were trained on (see
#: shared/reference/released-code-facts.md §4 and §6); ``paper`` is this project's default for training
#: from scratch and matches the released code's defaults on RGB input.
PRESETS: dict[str, Normalization] = {
    # Training defaults of the released code: 0-255, ActivityNet mean subtracted, no std.
    "paper": Normalization(mean=ACTIVITYNET_MEAN),
    # Released Kinetics-600 models: BGR frames (OpenCV arrays never converted), 0-255, the ActivityNet
    # mean subtracted from the B, G, R channels in that order, no std.
    "released-kinetics600": Normalization(mean=ACTIVITYNET_MEAN, channel_order="BGR"),
    # Released Jester models: the code reads Jester with PIL (RGB) and the default mean; the maintainer
    # once said otherwise (issue #25: BGR, Kinetics mean). Uncertain: check accuracy on a validation subset.
    "released-jester": Normalization(mean=ACTIVITYNET_MEAN),
    "imagenet": Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1 / 255),
    "none": Normalization(),
}

#: Preset used for each dataset when training from scratch.
DATASET_PRESET = {"kinetics600": "paper", "jester": "paper", "ucf101": "paper"}


def normalization_for(dataset: str | None = None, checkpoint: str | None = None) -> Normalization:
    """The normalisation for a dataset, or for an imported checkpoint family (which wins).

    ``checkpoint`` names a preset (e.g. ``released-kinetics600`` when fine-tuning UCF-101 from the released
    Kinetics weights: the model keeps expecting what it was trained on).
    """
    name = checkpoint if checkpoint is not None else DATASET_PRESET.get(dataset or "")
    if name is None:
        raise ValueError(f"no normalisation preset for dataset {dataset!r}; "
                         f"pass checkpoint= one of {sorted(PRESETS)}")
    if name not in PRESETS:
        raise ValueError(f"unknown normalisation preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


class ClipNormalizer(torch.nn.Module):
    """``(B, 3, T, H, W)`` uint8 RGB → normalised floating point, on whatever device the input is on.

    Move it to the device with the model (``.to(device)``); the per-channel constants are buffers. One
    fused multiply-add per element: ``x * (scale/std) - mean/std``.

    Args:
        norm: the :class:`Normalization`.
        dtype: output dtype (float32 by default; bfloat16/float16 halve the memory traffic).
        channels_last: return ``torch.channels_last_3d`` memory format (faster depthwise 3D convs).
    """

    def __init__(self, norm: Normalization, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        self.norm = norm
        self.dtype = dtype
        self.channels_last = channels_last
        std = torch.tensor(norm.std, dtype=torch.float32)
        self.register_buffer("mul", (norm.scale / std).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("add", (-torch.tensor(norm.mean, dtype=torch.float32) / std).view(1, 3, 1, 1, 1),
                             persistent=False)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 5 or clips.shape[1] != 3:
            raise ValueError(f"expected (B, 3, T, H, W) clips, got {tuple(clips.shape)}")
        if self.norm.channel_order == "BGR":
            clips = clips.flip(1)
        x = torch.addcmul(self.add, clips.to(torch.float32), self.mul)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x.to(self.dtype)
