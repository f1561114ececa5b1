"""3D ResNet baselines of Table 8 (Hara et al.'s 3D ResNets, as used by the paper): ResNet-18/34/50/101 with
shortcut A (parameter-free: strided identity + zero channels) or B (1x1x1 conv + BN).

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` logits.  Feature maps for 16x112x112: 16x56x56
(stem), 8x28x28 (max-pool, layer1), 4x14x14, 2x7x7, 1x4x4 (layer2-4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from training.models.common import MaxPool3d
from training.models.registry import register_model

Shortcut = Literal["A", "B"]


class ZeroPadShortcut(nn.Module):
    """Shortcut A: ``(N, C_in, T, H, W)`` -> ``(N, C_out, T/s, H/s, W/s)`` by striding (a kernel-1 average
    pool) and appending ``C_out - C_in`` zero channels.  No parameters.

    Unlike the released code (which rebuilt the tensor from ``.data`` and so cut the gradient), gradients flow
    through the identity part here.
    """

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class BasicBlock(nn.Module):
    """3x3x3 conv -> BN -> ReLU -> 3x3x3 conv -> BN, plus shortcut, ReLU.  Output channels = ``planes``."""

    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        # One ReLU module called twice, as upstream: the paper's FLOP counter counts every call.
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1x1 -> BN -> ReLU -> 3x3x3 (stride, ``groups``) -> BN -> ReLU -> 1x1x1 -> BN, plus shortcut, ReLU.

    Output channels ``expansion * planes``; inner width ``mid`` (default ``planes``). ResNet uses it with
    expansion 4; ResNeXt with expansion 2, grouped convs and its own inner width (same state-dict keys).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        mid: int | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        mid = planes if mid is None else mid
        self.conv1 = nn.Conv3d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride, 1, groups=groups, bias=False)
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


BlockFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ResNetConfig:
    """How to build the trunk.

    ``block(in_channels, planes, stride, downsample)`` builds one block with ``planes * expansion`` output
    channels; ``layers`` blocks per stage; ``planes`` per stage; shortcut ``"A"`` or ``"B"``.
    """

    block: BlockFactory
    expansion: int
    layers: tuple[int, int, int, int]
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    shortcut: Shortcut = "B"

    def __post_init__(self) -> None:
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")


class ResNet(nn.Module):
    """3D ResNet / ResNeXt trunk.  Upstream arch string ``resnet`` (or ``resnext`` for ResNeXt); state-dict
    keys are identical (``conv1``, ``bn1``, ``layerL.i.*``, ``downsample.0/1`` for shortcut B, ``fc``)."""

    UPSTREAM_ARCH = "resnet"
    UPSTREAM_RENAMES: tuple[tuple[str, str], ...] = ()

    def __init__(self, config: ResNetConfig, num_classes: int = 600) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        # A (3, 3, 3) tuple, as upstream: the paper's FLOP counter then counts 26 ops per output (unlike the
        # int-sized pools of the efficient models, see training/models/README.md).
        self.maxpool = MaxPool3d(kernel_size=(3, 3, 3), stride=2, padding=1)
        in_channels = 64
        for index, (planes, blocks) in enumerate(zip(config.planes, config.layers, strict=True), start=1):
            stride = 1 if index == 1 else 2
            out_channels = planes * config.expansion
            downsample: nn.Module | None = None
            if stride != 1 or in_channels != out_channels:
                downsample = (
                    ZeroPadShortcut(out_channels, stride)
                    if config.shortcut == "A"
                    else nn.Sequential(
                        nn.Conv3d(in_channels, out_channels, 1, stride, bias=False),
                        nn.BatchNorm3d(out_channels),
                    )
                )
            stage = [config.block(in_channels, planes, stride, downsample)]
            stage += [config.block(out_channels, planes, 1, None) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            in_channels = out_channels
        # A module pool (the released one was an AvgPool3d module, counted by the paper's FLOP counter) that
        # covers the whole map, so any input size works.
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float -> ``(N, num_classes)`` logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


# Default shortcuts follow the released training configurations: A for ResNet-18/34 (Hara's Kinetics models),
# B for ResNet-50/101.  Note the paper's ResNet MFLOPs were computed with shortcut A for all depths.
@register_model()
def resnet18(num_classes: int = 600, shortcut: Shortcut = "A") -> ResNet:
    """3D ResNet-18 (basic blocks 2-2-2-2)."""
    return ResNet(
        ResNetConfig(BasicBlock, BasicBlock.expansion, (2, 2, 2, 2), shortcut=shortcut), num_classes
    )


@register_model()
def resnet34(num_classes: int = 600, shortcut: Shortcut = "A") -> ResNet:
    """3D ResNet-34 (basic blocks 3-4-6-3)."""
    return ResNet(
        ResNetConfig(BasicBlock, BasicBlock.expansion, (3, 4, 6, 3), shortcut=shortcut), num_classes
    )


@register_model()
def resnet50(num_classes: int = 600, shortcut: Shortcut = "B") -> ResNet:
    """3D ResNet-50 (bottlenecks 3-4-6-3)."""
    return ResNet(
        ResNetConfig(Bottleneck, Bottleneck.expansion, (3, 4, 6, 3), shortcut=shortcut), num_classes
    )


@register_model()
def resnet101(num_classes: int = 600, shortcut: Shortcut = "B") -> ResNet:
    """3D ResNet-101 (bottlenecks 3-4-23-3)."""
    return ResNet(
        ResNetConfig(Bottleneck, Bottleneck.expansion, (3, 4, 23, 3), shortcut=shortcut), num_classes
    )
