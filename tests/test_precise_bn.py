"""Precise BatchNorm: true averages of the batch statistics, the same on every rank, for every model family."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from tests.helpers import free_port
from training.models import get_model
from training.precise_bn import bn_layers, update_bn_stats


def _toy() -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv3d(4, 5, 1), nn.BatchNorm3d(5), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(5, 2))


def _batches(seed: int, n: int, shape=(3, 3, 2, 5, 5)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # different offsets per batch: the batch means differ, so an EMA and a true average differ too
    return [torch.randn(shape, generator=g) * (1 + i) + 3 * i for i in range(n)]


def _direct_average(model: nn.Sequential, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean over batches of each BN input's per-channel mean and unbiased variance, computed by hand: the first
    BN normalises with its own batch statistics (training mode), as the second BN's input requires."""
    sums = [[0, 0], [0, 0]]
    with torch.no_grad():
        for x in batches:
            h = model[0](x)
            dims = (0, 2, 3, 4)
            m1, v1 = h.mean(dims), h.var(dims, unbiased=True)
            h = (h - m1[:, None, None, None]) / torch.sqrt(h.var(dims, unbiased=False)[:, None, None, None]
                                                           + model[1].eps)
            h = h * model[1].weight[:, None, None, None] + model[1].bias[:, None, None, None]
            h = model[4](F.relu(h))  # dropout off
            m2, v2 = h.mean(dims), h.var(dims, unbiased=True)
            for s, (m, v) in zip(sums, ((m1, v1), (m2, v2)), strict=True):
                s[0] = s[0] + m
                s[1] = s[1] + v
    return [(m / len(batches), v / len(batches)) for m, v in sums]


def test_equals_direct_average_on_toy_model() -> None:
    torch.manual_seed(0)
    model = _toy().train()
    nn.init.normal_(model[1].weight)
    nn.init.normal_(model[1].bias)
    batches = _batches(1, 5)
    model(batches[0])  # some EMA history that precise BN must discard
    tracked = model[1].num_batches_tracked.clone()
    rng = torch.get_rng_state()
    assert update_bn_stats(model, iter(batches + _batches(2, 3)), num_batches=5) == 5
    for bn, (mean, var) in zip((model[1], model[5]), _direct_average(model, batches), strict=True):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)
    # modes, momentum and counters restored; no RNG drawn (dropout stayed off), so resumes stay bit-identical
    assert model.training and all(m.training for m in model.modules())
    assert model[1].momentum == 0.1 and torch.equal(model[1].num_batches_tracked, tracked)
    assert torch.equal(torch.get_rng_state(), rng)


def test_skip_and_eval_mode_restored_and_input_checked() -> None:
    model = _toy().eval()
    before = model[1].running_mean.clone()
    update_bn_stats([model], _batches(0, 2), 2, skip=[model[1]])
    assert torch.equal(model[1].running_mean, before)  # skipped (frozen) layer untouched
    assert not torch.equal(model[5].running_mean, torch.zeros(5))
    assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError, match="no batches"):
        update_bn_stats(model, iter([]), 3)
    with pytest.raises(ValueError, match="num_batches"):
        update_bn_stats(model, _batches(0, 2), 0)


FAMILIES = ["mobilenetv1_0.5x", "mobilenetv2_0.2x", "resnet18", "resnext101", "shufflenetv1_0.5x",
            "shufflenetv2_0.25x", "squeezenet1_1"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "resnext101" else n
                                  for n in FAMILIES])
def test_every_family_in_a_group_equals_hooked_average(name: str) -> None:
    """Two models fed the same batches (a shared-decode group), each with its own input transform: every BN
    layer ends with the mean of the batch statistics its input had (captured by hooks in a plain pass)."""
    torch.manual_seed(0)
    models = [get_model(name, num_classes=3), get_model("shufflenetv2_0.25x", num_classes=3)]
    preps = [lambda x: x, lambda x: x * 0.5 + 1]
    batches = _batches(3, 3, shape=(2, 3, 4, 32, 32))
    update_bn_stats(models, batches, 3, prepare=preps)
    for model, prep in zip(models, preps, strict=True):
        layers = bn_layers(model)
        assert layers, name
        precise = {id(b): (b.running_mean.clone(), b.running_var.clone()) for b in layers}
        seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {id(b): [] for b in layers}

        def hook(mod, inp, _out, seen=seen):
            dims = [0] + list(range(2, inp[0].dim()))
            seen[id(mod)].append((inp[0].mean(dims), inp[0].var(dims, unbiased=True)))

        handles = [b.register_forward_hook(hook) for b in layers]
        model.eval()
        for b in layers:
            b.train()
        with torch.no_grad():
            for x in batches:
                model(prep(x))
        for h in handles:
            h.remove()
        for b in layers:
            mean = torch.stack([m for m, _ in seen[id(b)]]).mean(0)
            var = torch.stack([v for _, v in seen[id(b)]]).mean(0)
            torch.testing.assert_close(precise[id(b)][0], mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(precise[id(b)][1], var, rtol=1e-4, atol=1e-5)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # identical weights on every rank, different data
        model = _toy()
        # rank 1 gets one batch more: the all-reduce weights each rank by its batch count
        n = 2 + rank
        update_bn_stats(model, _batches(10 + rank, n), num_batches=n)
        torch.save({k: v for k, v in model.state_dict().items() if "running" in k}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_identical_statistics_on_every_rank(tmp_path) -> None:
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # and they are the average over all 5 batches of both ranks, as one process would compute it
    torch.manual_seed(0)
    model = _toy()
    expected = _direct_average(model, _batches(10, 2) + _batches(11, 3))
    torch.testing.assert_close(r0["1.running_mean"], expected[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r0["5.running_var"], expected[1][1], rtol=1e-5, atol=1e-5)
