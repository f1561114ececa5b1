"""3D-SqueezeNet with simple bypass (paper section 3.1.1, Table 1): a stem conv, Fire modules with max-pools
in between, and a conv head (dropout, 1x1x1 conv to the classes, ReLU, average pool).

Input ``(N, 3, T, H, W)`` float, output ``(N, num_classes)`` scores.  Version 1.1 is Table 8's; for 16x112x112
its feature maps are 16x56x56 (stem), 8x28x28, 4x14x14, 2x7x7, 1x4x4.  Note the released head ends with a
ReLU, so the "logits" are >= 0; kept so that released weights behave as trained."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.common import MaxPool3d
from training.models.registry import register_model


@dataclass(frozen=True)
class FireSpec:
    """A Fire module: input channels, squeeze width, 1x1x1 and 3x3x3 expand widths, identity bypass or not."""

    in_channels: int
    squeeze: int
    expand1x1: int
    expand3x3: int
    bypass: bool = False


MAXPOOL = "maxpool"
LayerSpec = FireSpec | str


@dataclass(frozen=True)
class SqueezeNetConfig:
    """Stem conv (output channels, cubic kernel size) and the layers after the stem's first max-pool."""

    stem_channels: int
    stem_kernel: int
    layers: tuple[LayerSpec, ...]


VERSIONS: dict[str, SqueezeNetConfig] = {
    "1.1": SqueezeNetConfig(
        64,
        3,
        (
            FireSpec(64, 16, 64, 64),
            FireSpec(128, 16, 64, 64, bypass=True),
            MAXPOOL,
            FireSpec(128, 32, 128, 128),
            FireSpec(256, 32, 128, 128, bypass=True),
            MAXPOOL,
            FireSpec(256, 48, 192, 192),
            FireSpec(384, 48, 192, 192, bypass=True),
            MAXPOOL,
            FireSpec(384, 64, 256, 256),
            FireSpec(512, 64, 256, 256, bypass=True),
        ),
    ),
    "1.0": SqueezeNetConfig(
        96,
        7,
        (
            FireSpec(96, 16, 64, 64),
            FireSpec(128, 16, 64, 64, bypass=True),
            MAXPOOL,
            FireSpec(128, 32, 128, 128),
            FireSpec(256, 32, 128, 128, bypass=True),
            MAXPOOL,
            FireSpec(256, 48, 192, 192),
            FireSpec(384, 48, 192, 192, bypass=True),
            FireSpec(384, 64, 256, 256),
            MAXPOOL,
            FireSpec(512, 64, 256, 256, bypass=True),
        ),
    ),
}


def _maxpool() -> MaxPool3d:
    # int kernel_size on purpose: the paper's FLOP counter counts an int-sized max-pool as 2 ops per output.
    return MaxPool3d(kernel_size=3, stride=2, padding=1)


class Fire(nn.Module):
    """squeeze 1x1x1 -> BN -> ReLU -> [expand 1x1x1 -> BN, expand 3x3x3 -> BN] concatenated (+ input) -> ReLU.

    ``(N, C_in, T, H, W)`` -> ``(N, expand1x1 + expand3x3, T, H, W)``.  Convs keep their bias (the released
    model did, and the parameter count depends on it)."""

    def __init__(self, spec: FireSpec) -> None:
        super().__init__()
        out_channels = spec.expand1x1 + spec.expand3x3
        if spec.bypass and spec.in_channels != out_channels:
            raise ValueError(
                f"Fire bypass needs in == out channels, got {spec.in_channels} -> {out_channels}"
            )
        self.use_bypass = spec.bypass
        # One ReLU module called twice, as upstream: the paper's FLOP counter counts both calls.
        self.relu = nn.ReLU(inplace=True)
        self.squeeze = nn.Conv3d(spec.in_channels, spec.squeeze, 1)
        self.squeeze_bn = nn.BatchNorm3d(spec.squeeze)
        self.expand1x1 = nn.Conv3d(spec.squeeze, spec.expand1x1, 1)
        self.expand1x1_bn = nn.BatchNorm3d(spec.expand1x1)
        self.expand3x3 = nn.Conv3d(spec.squeeze, spec.expand3x3, 3, padding=1)
        self.expand3x3_bn = nn.BatchNorm3d(spec.expand3x3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze_bn(self.squeeze(x)))
        out = torch.cat([self.expand1x1_bn(self.expand1x1(s)), self.expand3x3_bn(self.expand3x3(s))], 1)
        if self.use_bypass:
            out = out + x
        return self.relu(out)


class SqueezeNet(nn.Module):
    """3D-SqueezeNet.  Upstream checkpoint arch string: ``squeezenet``; state-dict keys are identical.

    ``features`` indices (0 conv, 1 BN, 2 ReLU, 3 max-pool, 4... Fire/max-pool) and ``classifier.1`` (the
    conv) match the released keys.  The released head pooled with a fixed window computed from the clip size;
    ours pools over the whole map (the same window at the reference size) so that any input size works."""

    UPSTREAM_ARCH = "squeezenet"
    UPSTREAM_RENAMES: tuple[tuple[str, str], ...] = ()

    def __init__(self, config: SqueezeNetConfig, num_classes: int = 600, dropout: float = 0.5) -> None:
        super().__init__()
        k = config.stem_kernel
        layers: list[nn.Module] = [
            nn.Conv3d(3, config.stem_channels, k, stride=(1, 2, 2), padding=k // 2),
            nn.BatchNorm3d(config.stem_channels),
            nn.ReLU(inplace=True),
            _maxpool(),
        ]
        layers += [_maxpool() if spec == MAXPOOL else Fire(spec) for spec in config.layers]
        self.features = nn.Sequential(*layers)
        last = [s for s in config.layers if isinstance(s, FireSpec)][-1]
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # A module (not functional) pool: the released head used an AvgPool3d module, which the paper's FLOP
        # counter counts (one op per averaged element).
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Conv3d(last.expand1x1 + last.expand3x3, num_classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d(1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                # Released init (all convs, the classifier's too); conv biases keep PyTorch's default init.
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float -> ``(N, num_classes)`` non-negative scores."""
        return self.classifier(self.features(x)).flatten(1)


@register_model("squeezenet1_1", version="1.1")
@register_model("squeezenet1_0", version="1.0")
def squeezenet(num_classes: int = 600, version: str = "1.1", dropout: float = 0.5) -> SqueezeNet:
    """3D-SqueezeNet with simple bypass, version 1.1 (Table 8) or 1.0."""
    if version not in VERSIONS:
        raise ValueError(f"SqueezeNet version must be one of {sorted(VERSIONS)}, got {version!r}")
    return SqueezeNet(VERSIONS[version], num_classes, dropout)
