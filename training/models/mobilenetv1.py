"""3D-MobileNetV1 (paper section 3.1.2, Table 2): a stem conv, then 13 depthwise-separable blocks.

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` logits.  For the reference 16x112x112 clip the
feature maps are 16x56x56 (stem), 8x28x28, 4x14x14, 2x7x7 and 1x4x4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.common import (
    STEM_STRIDE,
    conv_bn_act,
    dropout_linear_head,
    global_avg_pool,
    scale_channels,
)
from training.models.registry import register_model

# (output channels, blocks, stride of the first block).  Unlike 2D MobileNet, the 64-channel block already
# down-samples and the 1024-channel blocks do not; the released feature sizes depend on it.
STAGES: tuple[tuple[int, int, int], ...] = ((64, 1, 2), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 1))
STEM_CHANNELS = 32


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3x3 conv -> BN -> ReLU -> pointwise 1x1x1 conv -> BN -> ReLU.

    ``(N, C_in, T, H, W)`` -> ``(N, C_out, T/s, H/s, W/s)`` (rounded up).  The ReLUs are functional
    on purpose: the released model used ``F.relu`` here, so the paper's FLOP convention does not count them.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm3d(in_channels)
        self.conv2 = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class MobileNetV1(nn.Module):
    """3D-MobileNetV1.  Upstream checkpoint arch string: ``mobilenet``; state-dict keys are identical."""

    UPSTREAM_ARCH = "mobilenet"
    UPSTREAM_RENAMES: tuple[tuple[str, str], ...] = ()

    def __init__(self, num_classes: int = 600, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        stem, *widths = scale_channels([STEM_CHANNELS] + [c for c, _, _ in STAGES], width_mult)
        layers: list[nn.Module] = [conv_bn_act(3, stem, 3, STEM_STRIDE)]
        in_channels = stem
        for out_channels, (_, repeats, stride) in zip(widths, STAGES, strict=True):
            for i in range(repeats):
                layers.append(DepthwiseSeparable(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = dropout_linear_head(in_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float -> ``(N, num_classes)`` logits."""
        return self.classifier(global_avg_pool(self.features(x)))


@register_model("mobilenetv1_2.0x", width_mult=2.0)
@register_model("mobilenetv1_1.5x", width_mult=1.5)
@register_model("mobilenetv1_1.0x", width_mult=1.0)
@register_model("mobilenetv1_0.5x", width_mult=0.5)
@register_model("mobilenetv1")
def mobilenetv1(num_classes: int = 600, width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV1:
    """3D-MobileNetV1 at any width multiplier (Table 8: 0.5x, 1.0x, 1.5x, 2.0x)."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
