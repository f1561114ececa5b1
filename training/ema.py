"""Model EMA: an exponential moving average of a model's weights and BatchNorm buffers, updated every step.

The averaged copy is what validation and evaluation use when EMA is on: it smooths the step-to-step noise of
SGD at a high lr, which on small data is most of the difference between a good and a bad final epoch. Early
on the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average is not dominated for
thousands of steps by the random initial weights (the same warm-up as TensorFlow's ``ExponentialMovingAverage``
with ``num_updates``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * model`` for every floating-point parameter and buffer (BatchNorm running
    statistics included); integer buffers (``num_batches_tracked``) are copied.

    ``module`` is a full copy of the model (same class, device, memory format) kept in eval mode with
    ``requires_grad`` off; evaluate it like the model itself.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold in ``model``'s current state (the bare model, not a DDP wrapper); call after each optimizer step."""
        d = self.current_decay()
        self.updates += 1
        mine = self.module.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                mine[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                mine[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "state_dict": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["decay"]) != self.decay:
            raise ValueError(f"checkpoint EMA decay {state['decay']} differs from this run's {self.decay}")
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["state_dict"])
