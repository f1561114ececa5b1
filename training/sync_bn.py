"""Synchronised BatchNorm on any ``torch.distributed`` backend (gloo on CPU included).

With DDP every rank normalises with the statistics of its own part of the batch: the demo's global batch of 16
on 2 workers is normalised as two batches of 8, and with small per-rank batches those statistics are noisy
(later layers of a 3D CNN see few positions: at 48 px ShuffleNetV2's last stage is 2x2 pixels and 1 frame, so a
rank's batch of 8 gives 32 values per channel). ``torch.nn.SyncBatchNorm`` fixes this on GPUs only (it refuses
CPU tensors), so CPU runs over gloo had no way to train with the statistics of the global batch.

:class:`SyncBatchNorm` computes, in each training step, the per-channel sum and sum of squares of its rank's
input (in float64, so that ``E[x^2] - E[x]^2`` loses nothing to cancellation), adds them over all ranks with one
differentiable all-reduce (:class:`_SumOverRanks`: the backward pass all-reduces the gradients of those
sums), and normalises with the global mean and variance. Forward output, gradients and
running statistics then equal those of one process holding the whole batch (tested). It keeps the parameter and
buffer names of ``nn.BatchNorm3d``, so checkpoints load into the plain models.

It synchronises only in training steps, i.e. in training mode **with gradients enabled**: evaluation (eval
mode) uses the running statistics, and :func:`training.precise_bn.update_bn_stats` (which runs under
``torch.no_grad`` and may see a different number of batches per rank) computes per-rank statistics and then
averages them itself. Every rank must run the same number of training steps, as DDP already requires.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` as an autograd op: every rank's output is the sum of every rank's input, so the
    gradient of an input is the sum over ranks of the output gradients (a second all-reduce)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def _distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over ``(N, C, ...)`` inputs whose training-step statistics are those of the global batch
    (all DDP ranks together); outside a multi-rank training step it is exactly ``nn.BatchNorm{1,2,3}d``.

    Input: ``(N, C, *)`` floating point (float32, or bf16/float16 under autocast), any memory format; output of
    the same shape and dtype. Per-rank batch sizes may differ (the statistics are weighted by element count).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, ...) input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and _distributed_world() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        count = torch.tensor([input.numel() // max(channels, 1)], dtype=torch.float64, device=input.device)
        local = torch.cat([input.sum(dims, dtype=torch.float64),
                           input.square().sum(dims, dtype=torch.float64), count])
        total = _SumOverRanks.apply(local)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean.square()).clamp_min(0.0)  # biased: what normalises
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else float(self.momentum))
                unbiased = var * (n / (n - 1)) if float(n) > 1 else var
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        shape = [1, channels] + [1] * (input.dim() - 2)
        return input * scale.to(input.dtype).view(shape) + shift.to(input.dtype).view(shape)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` (in place, returned for chaining) by a :class:`SyncBatchNorm`
    holding the same parameter and buffer tensors (so ``requires_grad`` flags, optimizer references and
    ``state_dict`` keys are unchanged). Call it before wrapping the model in DDP."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                                 track_running_stats=child.track_running_stats,
                                 device=child.weight.device if child.affine else None)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_bn(child)
    return model
