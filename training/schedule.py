"""Step-wise learning-rate schedules and the lr scaling rule.

:class:`WarmupCosine` is the lr factor as a pure function of the optimizer step: a linear warm-up from
``start_factor`` (1/10) of the lr to the full lr over ``warmup_steps``, then a half cosine down to
``final_factor`` (0) at ``total_steps``. Wrapped in ``torch.optim.lr_scheduler.LambdaLR`` and stepped once per
optimizer step, the lr at step ``k`` is ``base_lr * factor(k)``, computed afresh each time rather than chained
from the previous value, so a run resumed mid-epoch from the scheduler's ``state_dict`` (which holds ``k``
and the factor's settings) reproduces the uninterrupted run's lrs bit for bit.
"""

from __future__ import annotations

import math

import torch

#: The paper's global batch: ``lr_scaling="linear"`` scales the lr by ``global batch / PAPER_BATCH``.
PAPER_BATCH = 128
LR_SCALINGS = ("none", "linear")


def scaled_lr(lr: float, global_batch: int, scaling: str) -> float:
    """The lr a run uses: ``lr`` itself (``none``) or ``lr * global_batch / 128`` (``linear``, Goyal et al.'s
    rule, for users who change the batch size of a recipe tuned at the paper's batch of 128 clips)."""
    if scaling not in LR_SCALINGS:
        raise ValueError(f"lr scaling must be one of {LR_SCALINGS}, got {scaling!r}")
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    return lr * global_batch / PAPER_BATCH if scaling == "linear" else lr


class WarmupCosine:
    """lr factor at optimizer step ``k`` (0-based: the factor the ``k``-th update uses).

    ``k < warmup_steps``: ``start + (1 - start) * k / warmup_steps``; then
    ``final + (1 - final) * (1 + cos(pi * (k - warmup) / (total - warmup))) / 2``, held at ``final`` past
    ``total_steps``. A plain object (not a closure) so that ``LambdaLR.state_dict`` saves its settings.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, start_factor: float = 0.1,
                 final_factor: float = 0.0):
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                             f"got {total_steps}, {warmup_steps}")
        if not 0 < start_factor <= 1 or not 0 <= final_factor <= 1:
            raise ValueError("need 0 < start_factor <= 1 and 0 <= final_factor <= 1")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.final_factor = float(final_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / span) if span > 0 else 1.0
        return self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * t))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :class:`WarmupCosine`; call ``.step()`` after every ``optimizer.step()``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))
