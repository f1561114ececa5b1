"""Small building blocks shared by several architectures.

Tensor layout everywhere is ``(N, C, T, H, W)`` float (float32, or bf16/fp16 under autocast).

The choice between an ``nn`` module and a functional call below is deliberate: the paper's FLOP counter
(:mod:`training.flops`) counts only registered module calls, exactly like the released code's counter, so an
activation or pooling must be a module where the released code used one and functional where it did not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Size3 = int | tuple[int, int, int]

# Every efficient model's stem keeps the time axis: only H and W are halved.
STEM_STRIDE = (1, 2, 2)


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: Size3 = 1,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``Conv3d`` (no bias, "same" padding) -> ``BatchNorm3d`` -> activation module.

    Indices 0/1/2 inside the ``Sequential`` are part of the state-dict key names (``features.0.0.weight``...)
    that the released checkpoints use, so keep this order."""
    return nn.Sequential(
        nn.Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        ),
        nn.BatchNorm3d(out_channels),
        activation(inplace=True),
    )


class _MaxPoolViaChannelsLast(torch.autograd.Function):
    """Max pooling of a contiguous CPU tensor computed in ``channels_last_3d`` (see :class:`MaxPool3d`); the
    backward scatters the gradient to the argmax positions, as the native kernel does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: Size3, stride: Size3, padding: Size3) -> torch.Tensor:  # noqa: ANN001
        y, idx = F.max_pool3d(x.contiguous(memory_format=torch.channels_last_3d), kernel, stride, padding,
                              return_indices=True)
        ctx.save_for_backward(idx)  # flat positions in each (n, c) volume: the same meaning in every layout
        ctx.in_shape = x.shape
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (idx,) = ctx.saved_tensors
        n, c = ctx.in_shape[:2]
        planes = n * c
        gx = grad.new_zeros(planes, ctx.in_shape[2:].numel())
        gx.scatter_add_(1, idx.reshape(planes, -1), grad.reshape(planes, -1))
        return gx.view(ctx.in_shape), None, None, None


class MaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` (same arguments, same results) that is faster on contiguous CPU tensors.

    PyTorch's CPU max pooling kernel for contiguous ``(N, C, T, H, W)`` input is ~10x slower than its
    ``channels_last_3d`` kernel: ShuffleNetV2 0.25x's stem pool on 8 clips of 16x48x48 took 14 ms of a 69 ms
    training step; converting to ``channels_last_3d``, pooling and converting back takes ~5 ms. The maximum is
    the same number in every layout, so outputs are identical; the gradient goes to the same argmax positions
    (summed where windows overlap, so it can differ from the native kernel in the last bit). Everywhere else
    (GPU, channels-last input, tracing for export) this is ``nn.MaxPool3d`` itself. A subclass, so that state
    dicts, ``isinstance`` checks and the paper's FLOP counter (:mod:`training.flops`) treat it as the original.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 5 or not x.is_contiguous() or self.return_indices or self.ceil_mode
                or self.dilation not in (1, (1, 1, 1)) or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return super().forward(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPoolViaChannelsLast.apply(x, self.kernel_size, self.stride, self.padding)
        return F.max_pool3d(x.contiguous(memory_format=torch.channels_last_3d), self.kernel_size, self.stride,
                            self.padding).contiguous()


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: ``(N, g*c, T, H, W)`` -> same shape, channel ``i*c+j``
    moves to ``j*g+i``.  Parameter-free; not counted as FLOPs (the released counter did not see it either).

    ``reshape`` rather than ``view`` so that channels_last_3d inputs work.
    """
    n, c, t, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible into {groups} groups")
    return x.reshape(n, groups, c // groups, t, h, w).transpose(1, 2).reshape(n, c, t, h, w)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Average over T, H, W: ``(N, C, T, H, W)`` -> ``(N, C)``.

    Functional on purpose: the released efficient models pooled with ``F.avg_pool3d``, which their FLOP
    counter did not count.  Any input size works because the window is the whole feature map."""
    return F.adaptive_avg_pool3d(x, 1).flatten(1)


def dropout_linear_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """``Dropout`` -> ``Linear``: keys ``classifier.1.weight/bias`` as in the released checkpoints."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def scale_channels(channels: Sequence[int], width_mult: float) -> list[int]:
    """``int(c * width_mult)`` for each ``c``: plain truncation, no rounding to multiples of 8, because the
    released parameter counts depend on it (e.g. ``int(96 * 0.7) == 67``)."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    out = [int(c * width_mult) for c in channels]
    if min(out) < 1:
        raise ValueError(f"width_mult={width_mult} leaves a layer with no channels: {out}")
    return out
