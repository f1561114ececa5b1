"""Warm-up + cosine lr (values at known steps, bit-identical mid-run resume), lr scaling, model EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.ema import ModelEMA
from training.schedule import WarmupCosine, scaled_lr, warmup_cosine


def test_warmup_cosine_values_at_known_steps() -> None:
    f = WarmupCosine(total_steps=110, warmup_steps=10)
    assert f(0) == pytest.approx(0.1)  # warm-up starts at lr/10
    assert f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(1.0)  # full lr after warm-up
    assert f(60) == pytest.approx(0.5)  # half way down the cosine
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.0) and f(500) == pytest.approx(0.0)
    assert WarmupCosine(4)(0) == 1.0  # no warm-up
    with pytest.raises(ValueError):
        WarmupCosine(10, 11)


def test_scaled_lr() -> None:
    assert scaled_lr(0.1, 16, "linear") == pytest.approx(0.0125)
    assert scaled_lr(0.1, 256, "linear") == pytest.approx(0.2)
    assert scaled_lr(0.1, 16, "none") == 0.1
    with pytest.raises(ValueError, match="lr scaling"):
        scaled_lr(0.1, 16, "sqrt")


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, dampening=0.9)
    return model, opt, warmup_cosine(opt, total_steps=12, warmup_steps=4), ModelEMA(model, 0.9)


def _steps(model, opt, sched, ema, start: int, stop: int) -> list[float]:
    lrs = []
    for k in range(start, stop):
        g = torch.Generator().manual_seed(k)
        x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()  # per optimizer step
        ema.update(model)
    return lrs


def test_resume_mid_run_is_bit_identical_with_ema(tmp_path) -> None:
    model, opt, sched, ema = _setup()
    lrs = _steps(model, opt, sched, ema, 0, 12)
    assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.2) and lrs[-1] < 0.01

    model2, opt2, sched2, ema2 = _setup()
    first = _steps(model2, opt2, sched2, ema2, 0, 5)
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict(),
                "ema": ema2.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain values only, as checkpoints are read
    model3, opt3, sched3, ema3 = _setup(seed=1)  # different init: everything must come from the checkpoint
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    ema3.load_state_dict(saved["ema"])
    rest = _steps(model3, opt3, sched3, ema3, 5, 12)
    assert first + rest == lrs  # exact float equality
    for a, b in ((model, model3), (ema.module, ema3.module)):
        for (k, v), v3 in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(v, v3), k
    assert ema3.updates == 12


def test_ema_averages_weights_and_bn_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEMA(model, decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(6, 3) + 2)  # moves the BN running mean
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # first update: decay min(0.5, 1/10) = 0.1
    now = model.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, 0.1 * start[k] + 0.9 * now[k])
        else:
            assert torch.equal(v, now[k])  # num_batches_tracked copied
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert ema.current_decay() == pytest.approx(2 / 11)
    with pytest.raises(ValueError, match="decay"):
        ema.load_state_dict({**ema.state_dict(), "decay": 0.9})
    with pytest.raises(ValueError):
        ModelEMA(model, 1.0)
