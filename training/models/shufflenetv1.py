"""3D-ShuffleNetV1 (paper section 3.1.4, Table 4): stem conv + max-pool, three stages of [4, 8, 4] bottlenecks
with grouped 1x1x1 convs and channel shuffle, linear head.

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` logits.  Feature maps for 16x112x112: 16x56x56
(stem), 8x28x28 (max-pool), 4x14x14, 2x7x7, 1x4x4."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.models.common import (
    STEM_STRIDE,
    MaxPool3d,
    channel_shuffle,
    conv_bn_act,
    dropout_linear_head,
    global_avg_pool,
    scale_channels,
)
from training.models.registry import register_model

# Unscaled (stem, stage 1, stage 2, stage 3) channels per group count (2D ShuffleNet paper, Table 1).
BASE_CHANNELS: dict[int, tuple[int, int, int, int]] = {
    1: (24, 144, 288, 567),
    2: (24, 200, 400, 800),
    3: (24, 240, 480, 960),
    4: (24, 272, 544, 1088),
    8: (24, 384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)
# The released code leaves the first 1x1x1 conv ungrouped only when its input has exactly this many channels,
# i.e. only at width 1.0 (the stem has int(24 * width) channels).
UNGROUPED_INPUT_CHANNELS = 24


@dataclass(frozen=True)
class ShuffleNetV1Config:
    """Channel plan for ``groups`` and ``width_mult``.

    Every width, the stem included, is ``int(c * width_mult)``.
    """

    groups: int = 3
    width_mult: float = 1.0

    @property
    def channels(self) -> tuple[int, int, int, int]:
        if self.groups not in BASE_CHANNELS:
            raise ValueError(f"ShuffleNetV1 groups must be one of {sorted(BASE_CHANNELS)}, got {self.groups}")
        stem, c1, c2, c3 = scale_channels(BASE_CHANNELS[self.groups], self.width_mult)
        return stem, c1, c2, c3

    def validate(self) -> None:
        """Raise ``ValueError`` when a grouped conv or the shuffle would not divide the channels evenly."""
        stem, *stages = self.channels
        in_channels, g = stem, self.groups
        for out_channels in stages:
            mid = out_channels // 4
            first_groups = 1 if in_channels == UNGROUPED_INPUT_CHANNELS else g
            checks = {
                "stage input": (in_channels, first_groups),
                "bottleneck width": (mid, g),
                "down-sampling conv output": (out_channels - in_channels, g),
                "stage output": (out_channels, g),
            }
            bad = [f"{what} {c} % {k}" for what, (c, k) in checks.items() if c <= 0 or c % k]
            if bad:
                raise ValueError(
                    f"ShuffleNetV1 groups={g} width_mult={self.width_mult} gives channels that do not divide "
                    f"into the groups ({', '.join(bad)}); channels are {self.channels}"
                )
            in_channels = out_channels


class ShuffleBottleneck(nn.Module):
    """Grouped 1x1x1 -> BN -> ReLU -> shuffle -> depthwise 3x3x3 -> BN -> grouped 1x1x1 -> BN, then
    ``ReLU(out + x)`` (stride 1) or ``ReLU(cat(out, avgpool(x)))`` (stride 2; ``out_channels`` in total).

    ``(N, C_in, T, H, W)`` -> ``(N, C_out, T/s, H/s, W/s)`` (rounded up).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        self.groups = groups
        mid = out_channels // 4
        conv_out = out_channels - in_channels if stride == 2 else out_channels
        first_groups = 1 if in_channels == UNGROUPED_INPUT_CHANNELS else groups
        self.conv1 = nn.Conv3d(in_channels, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, conv_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm3d(conv_out)
        # One ReLU module called twice, as upstream: the paper's FLOP counter counts both calls.
        self.relu = nn.ReLU(inplace=True)
        if stride == 2:
            # The released shortcut is AvgPool3d((2, 3, 3), stride 2, padding (0, 1, 1)) with zero padding
            # counted in the average.  Padding explicitly in forward gives identical numbers and lets small
            # inputs (fewer than 2 frames or 3 pixels left) pass PyTorch's input >= kernel check.
            self.shortcut = nn.AvgPool3d(kernel_size=(2, 3, 3), stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.relu(self.bn1(self.conv1(x))), self.groups)
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.stride == 1:
            return self.relu(out + x)
        # H and W get the released one-pixel zero border.  Time is unpadded upstream, so the pool yields
        # floor(T/2) frames against the conv's ceil(T/2): for odd T (never at the reference 16 frames) one
        # zero frame is appended so that both paths agree and any clip length works.
        x = F.pad(x, (1, 1, 1, 1, 0, x.shape[2] % 2))
        return self.relu(torch.cat([out, self.shortcut(x)], 1))


class ShuffleNetV1(nn.Module):
    """3D-ShuffleNetV1.  Upstream checkpoint arch string: ``shufflenet``; state-dict keys are identical."""

    UPSTREAM_ARCH = "shufflenet"
    UPSTREAM_RENAMES: tuple[tuple[str, str], ...] = ()

    def __init__(self, config: ShuffleNetV1Config, num_classes: int = 600, dropout: float = 0.2) -> None:
        super().__init__()
        config.validate()
        stem, *stages = config.channels
        self.conv1 = conv_bn_act(3, stem, 3, STEM_STRIDE)
        # kernel_size stays the int 3 (not (3, 3, 3)): the paper's FLOP counter then counts 2 ops per output,
        # a quirk its MFLOPs depend on (see training/models/README.md).
        self.maxpool = MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_channels = stem
        for index, (out_channels, repeats) in enumerate(zip(stages, STAGE_REPEATS, strict=True), start=1):
            blocks = []
            for i in range(repeats):
                blocks.append(ShuffleBottleneck(in_channels, out_channels, 2 if i == 0 else 1, config.groups))
                in_channels = out_channels
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.classifier = dropout_linear_head(in_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float -> ``(N, num_classes)`` logits."""
        x = self.maxpool(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(global_avg_pool(x))


@register_model("shufflenetv1_2.0x", width_mult=2.0, groups=3)
@register_model("shufflenetv1_1.5x", width_mult=1.5, groups=3)
@register_model("shufflenetv1_1.0x", width_mult=1.0, groups=3)
@register_model("shufflenetv1_0.5x", width_mult=0.5, groups=3)
@register_model("shufflenetv1")
def shufflenetv1(
    num_classes: int = 600, width_mult: float = 1.0, groups: int = 3, dropout: float = 0.2
) -> ShuffleNetV1:
    """3D-ShuffleNetV1, groups 1/2/3/4/8, any width multiplier (Table 8: groups 3 at 0.5x-2.0x)."""
    return ShuffleNetV1(ShuffleNetV1Config(groups=groups, width_mult=width_mult), num_classes, dropout)
