"""3D-ShuffleNetV2 (paper section 3.1.5, Tables 5 and 6): stem conv + max-pool, 16 blocks in stages of
[4, 8, 4] with channel split and shuffle, a 1x1x1 conv, linear head.

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` logits.  Feature maps for 16x112x112: 16x56x56
(stem), 8x28x28 (max-pool), 4x14x14, 2x7x7, 1x4x4."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.common import (
    STEM_STRIDE,
    MaxPool3d,
    channel_shuffle,
    conv_bn_act,
    dropout_linear_head,
    global_avg_pool,
)
from training.models.registry import register_model

STEM_CHANNELS = 24
STAGE_REPEATS = (4, 8, 4)
# Stage output channels and final conv channels per width, as in the released code.  The paper's Table 6
# prints 244 for the first 2.0x stage; the released code (and its 6,639,816 parameters) uses 224.
WIDTH_TABLE: dict[float, tuple[tuple[int, int, int], int]] = {
    0.25: ((32, 64, 128), 1024),
    0.5: ((48, 96, 192), 1024),
    1.0: ((116, 232, 464), 1024),
    1.5: ((176, 352, 704), 1024),
    2.0: ((224, 488, 976), 2048),
}


@dataclass(frozen=True)
class ShuffleNetV2Config:
    """Channel plan: three stage widths and the final 1x1x1 conv width.

    :meth:`from_width` takes the released table for 0.25/0.5/1.0/1.5/2.0.  Other widths (the released code
    raises) scale the 1.0x stage widths, truncated to even numbers because each block splits its channels in
    two halves, and keep 1024 final channels below 2.0x."""

    stage_channels: tuple[int, int, int]
    last_channels: int

    @classmethod
    def from_width(cls, width_mult: float) -> ShuffleNetV2Config:
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if width_mult in WIDTH_TABLE:
            stages, last = WIDTH_TABLE[width_mult]
            return cls(stages, last)
        base, _ = WIDTH_TABLE[1.0]
        c1, c2, c3 = (max(2, int(c * width_mult) // 2 * 2) for c in base)
        return cls((c1, c2, c3), 2048 if width_mult >= 2.0 else 1024)

    def __post_init__(self) -> None:
        if any(c < 2 or c % 2 for c in self.stage_channels):
            raise ValueError(f"ShuffleNetV2 stage channels must be even and >= 2, got {self.stage_channels}")


class ShuffleV2Block(nn.Module):
    """Stride 1: split channels in half, transform the second half (``branch2``), concatenate, shuffle.
    Stride 2: ``branch1`` (depthwise, pointwise) and ``branch2`` both see the whole input; concat, shuffle.

    ``(N, C_in, T, H, W)`` -> ``(N, C_out, T/s, H/s, W/s)`` (rounded up).  Upstream spelt the attributes
    ``banch1``/``banch2``; :mod:`training.checkpoints` renames them on import.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 ShuffleNetV2 block keeps its width, got {in_channels} -> {out_channels}"
            )
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv3d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
                nn.BatchNorm3d(in_channels),
                nn.Conv3d(in_channels, half, 1, bias=False),
                nn.BatchNorm3d(half),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv3d(in_channels if stride == 2 else half, half, 1, bias=False),
            nn.BatchNorm3d(half),
            nn.ReLU(inplace=True),
            nn.Conv3d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm3d(half),
            nn.Conv3d(half, half, 1, bias=False),
            nn.BatchNorm3d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat([kept, self.branch2(transformed)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """3D-ShuffleNetV2.  Upstream checkpoint arch string: ``shufflenetv2``; keys differ only by ``banch``."""

    UPSTREAM_ARCH = "shufflenetv2"
    # (upstream key fragment, our key fragment), applied to dot-separated key segments.
    UPSTREAM_RENAMES: tuple[tuple[str, str], ...] = (("banch1", "branch1"), ("banch2", "branch2"))

    def __init__(self, config: ShuffleNetV2Config, num_classes: int = 600, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(3, STEM_CHANNELS, 3, STEM_STRIDE)
        # int kernel_size on purpose: the paper's FLOP counter counts an int-sized max-pool as 2 ops/output.
        self.maxpool = MaxPool3d(kernel_size=3, stride=2, padding=1)
        blocks: list[nn.Module] = []
        in_channels = STEM_CHANNELS
        for out_channels, repeats in zip(config.stage_channels, STAGE_REPEATS, strict=True):
            for i in range(repeats):
                blocks.append(ShuffleV2Block(in_channels, out_channels, 2 if i == 0 else 1))
                in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.conv_last = conv_bn_act(in_channels, config.last_channels, 1, 1)
        self.classifier = dropout_linear_head(config.last_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float -> ``(N, num_classes)`` logits."""
        x = self.conv_last(self.features(self.maxpool(self.conv1(x))))
        return self.classifier(global_avg_pool(x))


@register_model("shufflenetv2_2.0x", width_mult=2.0)
@register_model("shufflenetv2_1.5x", width_mult=1.5)
@register_model("shufflenetv2_1.0x", width_mult=1.0)
@register_model("shufflenetv2_0.25x", width_mult=0.25)
@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 600, width_mult: float = 1.0, dropout: float = 0.2) -> ShuffleNetV2:
    """3D-ShuffleNetV2 at any width multiplier (Table 8: 0.25x, 1.0x, 1.5x, 2.0x)."""
    return ShuffleNetV2(ShuffleNetV2Config.from_width(width_mult), num_classes, dropout)
