"""Precise BatchNorm: replace the running statistics of every BatchNorm layer by true averages over N batches.

During training a BatchNorm layer keeps an exponential moving average (momentum 0.1) of its per-batch mean and
variance. At lr 0.1 with small per-worker batches the weights move faster than that average follows, so the
statistics used at validation lag the weights (validation stuck at one class, validation loss spiking while
training accuracy climbs). :func:`update_bn_stats` freezes the weights and recomputes the statistics as the
plain average over ``num_batches`` batches of each batch's mean and (unbiased) variance -- exactly what the
layers saw in training mode -- then averages them across ``torch.distributed`` ranks (weighted by each rank's
batch count) so every rank holds identical statistics.

Only BatchNorm layers run in training mode while the statistics are gathered; everything else (dropout in
particular) runs in eval mode, so the pass draws nothing from the global RNG and a resumed run stays
bit-identical. Layers listed in ``skip`` (frozen BatchNorms of a fine-tuned model) keep their statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


def bn_layers(model: nn.Module, skip: Collection[nn.Module] = ()) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics, minus those in ``skip``."""
    skipped = {id(m) for m in skip}
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats and id(m) not in skipped]


@torch.no_grad()
def update_bn_stats(models: nn.Module | Sequence[nn.Module], batches: Iterable[torch.Tensor], num_batches: int, *,
                    prepare: Callable[[torch.Tensor], torch.Tensor]
                    | Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
                    skip: Collection[nn.Module] = ()) -> int:
    """Recompute the running mean/var of every BatchNorm layer of ``models`` over ``num_batches`` batches.

    Args:
        models: one model or a list of models (a shared-decode group): every batch is fed to each of them.
            Pass the bare modules, not their DDP wrappers (no gradient sync is wanted here).
        batches: yields input tensors, e.g. uint8 ``(B, C, T, H, W)`` clips on the models' device; only the
            first ``num_batches`` are read.
        num_batches: how many batches to average over (>= 1).
        prepare: a callable (or one per model) turning a batch into that model's input (e.g. its
            :class:`training.data.ClipNormalizer`); None feeds the batch as it is.
        skip: BatchNorm layers whose statistics must stay as they are (frozen layers when fine-tuning).

    Returns the number of batches averaged on this rank (fewer than ``num_batches`` when ``batches`` ran out).
    The models' training/eval modes, BatchNorm momenta and ``num_batches_tracked`` are restored on return.
    Under ``torch.distributed`` this is a collective: every rank must call it.
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    preps = list(prepare) if isinstance(prepare, Sequence) else [prepare] * len(models)
    if len(preps) != len(models):
        raise ValueError(f"{len(preps)} prepare callables for {len(models)} models")
    layers = [bn_layers(m, skip) for m in models]
    flat = [bn for per_model in layers for bn in per_model]
    was_training = [{mod: mod.training for mod in m.modules()} for m in models]
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in flat]
    try:
        for m in models:
            m.eval()
        for bn in flat:
            bn.reset_running_stats()  # mean 0, var 1, num_batches_tracked 0
            bn.momentum = None  # cumulative average: after n batches, the mean of the n batch statistics
            bn.train()
        seen = 0
        for batch in batches:
            if seen == num_batches:
                break
            for m, prep in zip(models, preps, strict=True):
                m(prep(batch) if prep is not None else batch)
            seen += 1
        _average_across_ranks(flat, seen)
    finally:
        for bn, (momentum, tracked) in zip(flat, saved, strict=True):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        for modes in was_training:
            for mod, mode in modes.items():
                mod.train(mode)
    return seen


def _average_across_ranks(layers: list[nn.modules.batchnorm._BatchNorm], seen: int) -> None:
    """Weighted mean (by batch count) of every layer's statistics over the ranks; one all-reduce in all."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        if seen == 0:
            raise ValueError("precise BN got no batches")
        return
    device = layers[0].running_mean.device if layers else torch.device("cpu")
    parts = [torch.tensor([float(seen)], dtype=torch.float64, device=device)]
    for bn in layers:
        parts += [bn.running_mean.double().flatten() * seen, bn.running_var.double().flatten() * seen]
    flat = torch.cat(parts)
    torch.distributed.all_reduce(flat)
    total = flat[0].item()
    if total == 0:
        raise ValueError("precise BN got no batches on any rank")
    offset = 1
    for bn in layers:
        n = bn.running_mean.numel()
        bn.running_mean.copy_((flat[offset:offset + n] / total).view_as(bn.running_mean))
        bn.running_var.copy_((flat[offset + n:offset + 2 * n] / total).view_as(bn.running_var))
        offset += 2 * n
