"""3D ResNeXt-101 baseline of Table 8: the ResNet trunk with grouped bottlenecks (cardinality 32, expansion 2,
stage widths 128/256/512/1024).

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from training.models.registry import register_model
from training.models.resnet import ResNet, ResNetConfig, Shortcut

STAGE_PLANES = (128, 256, 512, 1024)


class ResNeXtBottleneck(nn.Module):
    """1x1x1 -> BN -> ReLU -> grouped 3x3x3 (stride) -> BN -> ReLU -> 1x1x1 -> BN, plus shortcut, ReLU.

    Inner width ``cardinality * (planes // 32)``; output channels ``2 * planes``.
    """

    expansion = 2

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 32,
    ) -> None:
        super().__init__()
        mid = cardinality * (planes // 32)
        if mid < 1:
            raise ValueError(f"ResNeXt stage width {planes} is too small for cardinality {cardinality}")
        self.conv1 = nn.Conv3d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNeXt(ResNet):
    """3D ResNeXt.  Upstream checkpoint arch string: ``resnext``; state-dict keys as ResNet's."""

    UPSTREAM_ARCH = "resnext"


@register_model()
def resnext101(num_classes: int = 600, shortcut: Shortcut = "B", cardinality: int = 32) -> ResNeXt:
    """3D ResNeXt-101 (grouped bottlenecks 3-4-23-3, cardinality 32 in Table 8)."""
    block = partial(ResNeXtBottleneck, cardinality=cardinality)
    config = ResNetConfig(block, ResNeXtBottleneck.expansion, (3, 4, 23, 3), STAGE_PLANES, shortcut)
    return ResNeXt(config, num_classes)
