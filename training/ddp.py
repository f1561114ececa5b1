"""DistributedDataParallel with gradients laid out like their parameters.

With ``channels_last_3d`` weights, a 1x1x1 convolution's weight ``[out, in, 1, 1, 1]`` has two valid stride
patterns (``[in, 1, in, in, in]`` and ``[in, 1, 1, 1, 1]``: the size-1 dimensions make both the same memory
order). Depending on the backward kernel the gradient comes out in the other one, DDP's reducer then warns
"Grad strides do not match bucket view strides" and copies the gradient into its bucket on every step.

:func:`wrap_ddp` removes the cause: every trainable parameter gets its gradient allocated up front with the
parameter's own strides, and ``gradient_as_bucket_view=True`` makes DDP turn those gradients into views of its
all-reduce buckets. Backward then accumulates straight into the bucket (no copy, no second gradient buffer), as
long as the loop zeroes gradients in place (``optimizer.zero_grad(set_to_none=False)``) instead of dropping
them.
"""

from __future__ import annotations

import torch
from torch import nn


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``model`` (already on ``device`` in its memory format) wrapped in DDP, gradients as bucket views.

    The caller must zero gradients with ``set_to_none=False``; otherwise the next backward allocates fresh
    gradients in whatever layout the kernels produce and the reducer copies them again."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)  # zeros_like keeps p's strides: the layout DDP's bucket views take
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               gradient_as_bucket_view=True)
