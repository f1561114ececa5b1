"""Normalisation of uint8 clips, run on the training device (not in the loader): the one normalisation type.

The loader ships ``(B, 3, T, H, W)`` uint8 RGB clips: 4x less to copy than float32, and no CPU time spent
on arithmetic the GPU does for free. What a model expects depends on how it was trained, so the weights and
the :class:`InputConvention` they were trained with travel together: every model built by
:func:`training.models.get_model` carries one (``model.input_convention``) and every checkpoint stores it
next to the weights (the way torchvision keeps the transforms with the weights). It says how to

1. reorder channels (``RGB`` or ``BGR``) — the released Kinetics models were trained on BGR frames because
   their loader wrapped OpenCV's BGR arrays as RGB images;
2. scale to ``value_scale`` (255 keeps 0–255, the released code's ``norm_value 1``; 1 gives 0–1);
3. subtract ``mean`` and divide by ``std``, both given per channel **in the model's channel order**.

:data:`PRESETS` names the known conventions; :func:`normalization_for` picks one for a dataset or checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from shards.datasets import DATASET_SPECS

ChannelOrder = Literal["RGB", "BGR"]

#: Channel means of the released code (``mean.py`` upstream), 0–255 scale, R, G, B order.
ACTIVITYNET_MEAN = (114.7748, 107.7354, 99.4750)  # its default ``--mean_dataset activitynet``
KINETICS_MEAN = (110.63666788, 103.16065604, 96.29023126)  # ``get_mean(dataset='kinetics')``
#: ``get_std()`` of the released code, used only with ``--std_norm``.
RELEASED_STD = (38.7568578, 37.88248729, 40.02898126)


@dataclass(frozen=True)
class InputConvention:
    """Pixel preparation a model expects: ``y[c] = (x[order[c]] / 255 * value_scale - mean[c]) / std[c]``
    for a uint8 (or 0–255 float) RGB clip ``x``.

    Attributes:
        value_scale: the value a full-intensity pixel has before mean subtraction (255.0 for the released
            models, which were fed raw 0–255 floats; 1.0 for 0–1 inputs).
        mean, std: per channel, in the model's channel order, in units of ``value_scale``.
        channel_order: ``"RGB"`` or ``"BGR"``: the order of the 3 input channels the model was trained on.
        note: free text, e.g. where the convention comes from and how certain it is.
    """

    value_scale: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: ChannelOrder = "RGB"
    note: str = ""

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need exactly 3 values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    def normalize(self, clip: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` or ``(3, T, H, W)`` RGB pixels (uint8, or float on the 0–255 scale) → model
        input of the same shape (float32 or the input's floating dtype), channels in ``channel_order``.
        :class:`ClipNormalizer` does the same as a module with its constants on the device."""
        channel_dim = clip.dim() - 4
        if clip.dim() not in (4, 5) or clip.shape[channel_dim] != 3:
            raise ValueError(
                f"expected (N, 3, T, H, W) or (3, T, H, W) RGB pixels, got shape {tuple(clip.shape)}"
            )
        x = clip.float() if not clip.is_floating_point() else clip
        if self.channel_order == "BGR":
            x = x.flip(channel_dim)
        shape = [1] * x.dim()
        shape[channel_dim] = 3
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x * (self.value_scale / 255.0) - mean) / std

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, floats, str) that survives ``torch.load(weights_only=True)``; what checkpoints
        store under ``input_convention``."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputConvention:
        return cls(
            value_scale=float(d["value_scale"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            channel_order=d["channel_order"],
            note=str(d.get("note", "")),
        )


#: Named conventions. ``released-*`` reproduce what the released checkpoints were trained on (see
#: shared/reference/released-code-facts.md §4 and §6); ``paper`` is this project's default for training
#: from scratch and matches the released code's defaults on RGB input.
PRESETS: dict[str, InputConvention] = {
    # Training defaults of the released code (--mean_dataset activitynet, --norm_value 1, no --std_norm).
    "paper": InputConvention(
        mean=ACTIVITYNET_MEAN, note="released code default: 0-255, ActivityNet mean, std 1, RGB"),
    # Released Kinetics-600 models: the upstream loader used OpenCV without BGR->RGB conversion, so the nets
    # saw B, G, R channels; the mean was subtracted channel-wise as listed (mean[0] from B).
    "released-kinetics600": InputConvention(
        mean=ACTIVITYNET_MEAN, channel_order="BGR",
        note="released Kinetics-600 checkpoints (from the code): BGR frames (cv2), 0-255, ActivityNet mean "
        "subtracted in listed order, std 1"),
    # Released Jester models: the code reads Jester with PIL (RGB) and the default mean; the maintainer once
    # said otherwise (upstream issue #25: BGR, Kinetics mean), kept as "released-jester-maintainer" for a
    # check. Uncertain: check accuracy on a validation subset.
    "released-jester": InputConvention(
        mean=ACTIVITYNET_MEAN,
        note="released Jester checkpoints (from the code): RGB frames (PIL), 0-255, ActivityNet mean, std 1; "
        "UNCERTAIN, upstream issue #25 says BGR + Kinetics mean (see JESTER_MAINTAINER_ANSWER)"),
    "released-jester-maintainer": InputConvention(
        mean=KINETICS_MEAN, channel_order="BGR",
        note="upstream issue #25 maintainer answer for Jester: BGR, 0-255, Kinetics mean, std 1"),
    "imagenet": InputConvention(value_scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                note="torchvision ImageNet statistics, 0-1, RGB"),
    "none": InputConvention(note="raw 0-255 RGB"),
}


def normalization_for(dataset: str | None = None, checkpoint: str | None = None) -> InputConvention:
    """The convention for a dataset (its :class:`~shards.datasets.DatasetSpec` preset), or a named preset
    (``checkpoint``, which wins: e.g. ``released-kinetics600`` when fine-tuning UCF-101 from the released
    Kinetics weights, whose model keeps expecting what it was trained on)."""
    spec = DATASET_SPECS.get(dataset or "")
    name = checkpoint if checkpoint is not None else (spec.normalization if spec else None)
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
        norm: the :class:`InputConvention`.
        dtype: output dtype (float32 by default; bfloat16/float16 halve the memory traffic).
        channels_last: return ``torch.channels_last_3d`` memory format (faster depthwise 3D convs).
    """

    def __init__(self, norm: InputConvention, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        self.norm = norm
        self.dtype = dtype
        self.channels_last = channels_last
        std = torch.tensor(norm.std, dtype=torch.float32)
        self.register_buffer("mul", ((norm.value_scale / 255.0) / std).view(1, 3, 1, 1, 1), persistent=False)
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
