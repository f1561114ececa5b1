"""3D-MobileNetV2 (paper section 3.1.3, Table 3): stem, 17 inverted residual blocks, 1x1x1 conv, linear head.

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` logits.  Feature maps for 16x112x112: 16x56x56
(stem and first block), 8x28x28, 4x14x14, 2x7x7, 1x4x4."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.models.common import (
    STEM_STRIDE,
    conv_bn_act,
    dropout_linear_head,
    global_avg_pool,
    scale_channels,
)
from training.models.registry import register_model


@dataclass(frozen=True)
class InvertedResidualSetting:
    """One group of blocks: expansion ``t``, output channels ``c`` (before width scaling), ``n`` blocks,
    stride ``s`` of the first block (the others have stride 1)."""

    t: int
    c: int
    n: int
    s: int


SETTINGS: tuple[InvertedResidualSetting, ...] = (
    InvertedResidualSetting(1, 16, 1, 1),
    InvertedResidualSetting(6, 24, 2, 2),
    InvertedResidualSetting(6, 32, 3, 2),
    InvertedResidualSetting(6, 64, 4, 2),
    InvertedResidualSetting(6, 96, 3, 1),
    InvertedResidualSetting(6, 160, 3, 2),
    InvertedResidualSetting(6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


class InvertedResidual(nn.Module):
    """[1x1x1 expand -> BN -> ReLU6 ->] depthwise 3x3x3 -> BN -> ReLU6 -> 1x1x1 project -> BN (linear), plus
    the input when the stride is 1 and the channel count is unchanged.

    ``(N, C_in, T, H, W)`` -> ``(N, C_out, T/s, H/s, W/s)`` (rounded up).  ``conv`` indices match the released
    keys (``conv.0/1/3/4[/6/7]``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [
                nn.Conv3d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm3d(hidden),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv3d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm3d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv3d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm3d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """3D-MobileNetV2.  Upstream checkpoint arch string: ``mobilenetv2``; state-dict keys are identical."""

    UPSTREAM_ARCH = "mobilenetv2"
    UPSTREAM_RENAMES: tuple[tuple[str, str], ...] = ()

    def __init__(self, num_classes: int = 600, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        stem, *widths = scale_channels([STEM_CHANNELS] + [s.c for s in SETTINGS], width_mult)
        # The released model keeps 1280 final channels unless widened (all Table 8 widths are <= 1.0).
        last = int(LAST_CHANNELS * width_mult) if width_mult > 1.0 else LAST_CHANNELS
        layers: list[nn.Module] = [conv_bn_act(3, stem, 3, STEM_STRIDE, nn.ReLU6)]
        in_channels = stem
        for out_channels, setting in zip(widths, SETTINGS, strict=True):
            for i in range(setting.n):
                layers.append(
                    InvertedResidual(in_channels, out_channels, setting.s if i == 0 else 1, setting.t)
                )
                in_channels = out_channels
        layers.append(conv_bn_act(in_channels, last, 1, 1, nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = dropout_linear_head(last, num_classes, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as the released code, so that training from scratch starts from the same distribution.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                fan_out = math.prod(m.kernel_size) * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float -> ``(N, num_classes)`` logits."""
        return self.classifier(global_avg_pool(self.features(x)))


@register_model("mobilenetv2_1.0x", width_mult=1.0)
@register_model("mobilenetv2_0.7x", width_mult=0.7)
@register_model("mobilenetv2_0.45x", width_mult=0.45)
@register_model("mobilenetv2_0.2x", width_mult=0.2)
@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 600, width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    """3D-MobileNetV2 at any width multiplier (Table 8: 0.2x, 0.45x, 0.7x, 1.0x)."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
