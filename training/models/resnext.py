"""3D ResNeXt-101 baseline of Table 8: the ResNet trunk with grouped bottlenecks (cardinality 32, expansion 2,
stage widths 128/256/512/1024).

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` logits.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from training.models.registry import register_model
from training.models.resnet import Bottleneck, ResNet, ResNetConfig, Shortcut

STAGE_PLANES = (128, 256, 512, 1024)


class ResNeXtBottleneck(Bottleneck):
    """ResNet's bottleneck with a grouped 3x3x3 conv: inner width ``cardinality * (planes // 32)``, output
    channels ``2 * planes``."""

    expansion = 2

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 32,
    ) -> None:
        mid = cardinality * (planes // 32)
        if mid < 1:
            raise ValueError(f"ResNeXt stage width {planes} is too small for cardinality {cardinality}")
        super().__init__(in_channels, planes, stride, downsample, mid=mid, groups=cardinality)


class ResNeXt(ResNet):
    """3D ResNeXt.  Upstream checkpoint arch string: ``resnext``; state-dict keys as ResNet's."""

    UPSTREAM_ARCH = "resnext"


@register_model()
def resnext101(num_classes: int = 600, shortcut: Shortcut = "B", cardinality: int = 32) -> ResNeXt:
    """3D ResNeXt-101 (grouped bottlenecks 3-4-23-3, cardinality 32 in Table 8)."""
    block = partial(ResNeXtBottleneck, cardinality=cardinality)
    config = ResNetConfig(block, ResNeXtBottleneck.expansion, (3, 4, 23, 3), STAGE_PLANES, shortcut)
    return ResNeXt(config, num_classes)
