"""How pixels must be prepared before they enter a model (value range, mean, std, channel order).

A model's weights are only meaningful together with the input statistics they were trained on, so every model
built by :func:`training.models.get_model` carries an :class:`InputConvention` (``model.input_convention``)
and every checkpoint stores one.  Evaluation code calls :meth:`InputConvention.normalize` on the uint8 RGB
clips that the shards decode to, instead of hard-coding statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

ChannelOrder = Literal["RGB", "BGR"]

# Per-channel means of the released code (`mean.py` upstream), on the 0-255 scale, listed in R, G, B order.
ACTIVITYNET_MEAN_RGB = (114.7748, 107.7354, 99.4750)
KINETICS_MEAN_RGB = (110.63666788, 103.16065604, 96.29023126)
ACTIVITYNET_STD_RGB = (38.7568578, 37.88248729, 40.02898126)


@dataclass(frozen=True)
class InputConvention:
    """Pixel preparation a model expects.

    ``normalize`` maps a clip of raw pixels to model input as
    ``(reorder(x) / 255 * value_scale - mean) / std``, channel-wise.

    Attributes:
        value_scale: the value a full-intensity pixel has at the model input *before* mean subtraction
            (255.0 for the released models, which were fed raw 0-255 floats; 1.0 for 0-1 inputs).
        mean: per-channel mean in the model's channel order, in units of ``value_scale``.
        std: per-channel std in the model's channel order, in units of ``value_scale``.
        channel_order: ``"RGB"`` or ``"BGR"``: the order of the 3 input channels the model was trained on.
        note: free text, e.g. where the convention comes from and how certain it is.
    """

    value_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: ChannelOrder
    note: str = ""

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need exactly 3 values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    def normalize(self, clip: torch.Tensor) -> torch.Tensor:
        """Turn raw RGB pixels into model input.

        Args:
            clip: ``(N, 3, T, H, W)`` or ``(3, T, H, W)`` tensor of **RGB** pixels, uint8 (0-255) or
                floating point on the same 0-255 scale.

        Returns:
            float32 tensor (or the input's floating dtype) of the same shape, channels in ``channel_order``.
        """
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
        """Plain dict (lists, floats, str) that survives ``torch.load(weights_only=True)``."""
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


# The released training code's default (`--mean_dataset activitynet`, `--norm_value 1`, no `--std_norm`):
# 0-255 pixels minus the ActivityNet mean, std 1.  Fresh models default to it so that training from scratch
# here feeds what the paper's models were fed.
RELEASED_DEFAULT_RGB = InputConvention(
    value_scale=255.0,
    mean=ACTIVITYNET_MEAN_RGB,
    std=(1.0, 1.0, 1.0),
    channel_order="RGB",
    note="released code default: 0-255, ActivityNet mean, std 1, RGB",
)

# Released Kinetics-600 checkpoints: the upstream Kinetics loader used OpenCV without BGR->RGB conversion,
# so the nets saw B, G, R channels; the mean was subtracted channel-wise as listed (mean[0] from B).
RELEASED_KINETICS = InputConvention(
    value_scale=255.0,
    mean=ACTIVITYNET_MEAN_RGB,
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
    note="released Kinetics-600 checkpoints (from the code): BGR frames (cv2), 0-255, ActivityNet mean "
    "subtracted in listed order, std 1",
)

# Released Jester checkpoints: the code path is PIL (RGB) with the default ActivityNet mean, but the
# maintainer answered in upstream issue #25 that Jester models expect BGR and the Kinetics mean.  Which is
# right is unverified: the code's version is the default, JESTER_MAINTAINER_ANSWER is kept for a check.
RELEASED_JESTER = InputConvention(
    value_scale=255.0,
    mean=ACTIVITYNET_MEAN_RGB,
    std=(1.0, 1.0, 1.0),
    channel_order="RGB",
    note="released Jester checkpoints (from the code): RGB frames (PIL), 0-255, ActivityNet mean, std 1; "
    "UNCERTAIN, upstream issue #25 says BGR + Kinetics mean (see JESTER_MAINTAINER_ANSWER)",
)

JESTER_MAINTAINER_ANSWER = InputConvention(
    value_scale=255.0,
    mean=KINETICS_MEAN_RGB,
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
    note="upstream issue #25 maintainer answer for Jester: BGR, 0-255, Kinetics mean, std 1",
)

RELEASED_CONVENTIONS: dict[str, InputConvention] = {
    "kinetics": RELEASED_KINETICS,
    "jester": RELEASED_JESTER,
}
