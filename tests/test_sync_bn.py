"""Synchronised BatchNorm over gloo: 2 ranks with parts of a batch compute what one process does with all of it."""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from tests.helpers import free_port
from tests.test_train import tiny_shards  # noqa: F401  (session fixture)
from training.config import TrainConfig
from training.models import get_model
from training.precise_bn import update_bn_stats
from training.sync_bn import SyncBatchNorm, convert_sync_bn

SIZES = (3, 5)  # uneven per-rank batches: the statistics must be weighted by element count, not by rank


def _toy() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU(),
                          nn.Conv3d(4, 6, 1), nn.BatchNorm3d(6), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(6, 2))
    with torch.no_grad():  # non-trivial affine parameters, so that their gradients matter
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # a large offset: E[x^2] - E[x]^2 in float32 would lose digits here; the float64 sums must not
    x = torch.randn(sum(SIZES), 3, 4, 6, 6, generator=g) * 3 + 40
    return x, torch.randn(sum(SIZES), 2, generator=g)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    # a bug that lets ranks disagree on the number of collectives fails within a minute instead of hanging
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        x, target = _data()
        lo = sum(SIZES[:rank])
        x, target = x[lo:lo + SIZES[rank]], target[lo:lo + SIZES[rank]]
        model = nn.parallel.DistributedDataParallel(convert_sync_bn(_toy()))
        xs = x.clone().requires_grad_(True)
        y = model(xs)
        # DDP averages the ranks' gradients; scaling by the world size makes their sum that of the whole batch
        ((y - target).square().sum() * world).backward()
        inner = model.module
        result = {"y": y.detach(), "x_grad": xs.grad,
                  "grads": {n: p.grad.clone() for n, p in inner.named_parameters()},
                  "stats": {k: v.clone() for k, v in inner.state_dict().items() if "running" in k or "tracked" in k}}
        # precise BN (no_grad, training mode) with a different number of batches per rank: per-rank statistics,
        # averaged by update_bn_stats itself -- no per-layer collective that would wait for the other rank
        g = torch.Generator().manual_seed(10 + rank)
        batches = [torch.randn(2, 3, 4, 6, 6, generator=g) + 5 * rank for _ in range(2 + rank)]
        update_bn_stats(inner, batches, num_batches=len(batches))
        result["precise"] = {k: v.clone() for k, v in inner.state_dict().items() if "running" in k}
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_compute_what_one_process_computes_on_the_whole_batch(tmp_path) -> None:
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))

    x, target = _data()
    ref = _toy()
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    (y - target).square().sum().backward()

    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y.detach(), rtol=1e-5, atol=1e-5)
    # an input's gradient sees every rank's loss through the shared statistics: each was scaled by the world size
    torch.testing.assert_close(torch.cat([r0["x_grad"], r1["x_grad"]]) / 2, xr.grad, rtol=1e-4, atol=1e-5)
    for n, p in ref.named_parameters():
        # DDP left the same (averaged) gradient on both ranks: that of the whole batch
        assert torch.equal(r0["grads"][n], r1["grads"][n]), n
        torch.testing.assert_close(r0["grads"][n], p.grad, rtol=1e-4, atol=1e-4, msg=n)
    for k, v in ref.state_dict().items():
        if "running" in k or "tracked" in k:
            assert torch.equal(r0["stats"][k], r1["stats"][k]), k
            torch.testing.assert_close(r0["stats"][k], v, rtol=1e-5, atol=1e-5, msg=k)
    for k in r0["precise"]:
        assert torch.equal(r0["precise"][k], r1["precise"][k]), k  # precise BN's own cross-rank average


def test_one_process_is_plain_batchnorm_and_checkpoints_keep_their_keys() -> None:
    plain, sync = _toy(), convert_sync_bn(_toy())
    assert sum(isinstance(m, SyncBatchNorm) for m in sync.modules()) == 2
    assert sync.state_dict().keys() == plain.state_dict().keys()
    x, _ = _data()
    plain.train(), sync.train()
    assert torch.equal(sync(x), plain(x))  # outside distributed training: nn.BatchNorm3d's own kernel
    assert all(torch.equal(a, b) for a, b in zip(sync.state_dict().values(), plain.state_dict().values(),
                                                 strict=True))
    fresh = _toy()
    fresh.load_state_dict(sync.state_dict())  # a sync-BN checkpoint loads into the plain model


@pytest.mark.parametrize("name", ["shufflenetv2_0.25x", "mobilenetv2_0.2x", "squeezenet1_1"])
def test_conversion_keeps_every_tensor_and_its_trainability(name: str) -> None:
    model = get_model(name, num_classes=3)
    next(model.parameters()).requires_grad_(False)  # a frozen tensor must stay frozen
    before = {n: (p, p.requires_grad) for n, p in model.named_parameters()}
    bns = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convert_sync_bn(model)
    assert sum(isinstance(m, SyncBatchNorm) for m in model.modules()) == bns > 0
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for n, (p, grad) in before.items():
        assert after[n] is p and p.requires_grad == grad, n  # the optimizer's references stay valid


def test_sync_bn_is_a_train_flag_and_a_config_field() -> None:
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["train", "--dataset", "jester", "--shards", "s", "--out", "o", "--sync-bn"])
    assert args.sync_bn is True
    assert TrainConfig.for_dataset("jester", "s", "o").sync_bn is False  # the paper's code has none


@pytest.mark.slow
@pytest.mark.ray
def test_a_two_worker_run_with_sync_bn_precise_bn_and_ema_finishes_and_loads_as_a_plain_model(
        ray_local, tiny_shards, tmp_path):  # noqa: F811
    from tests.test_train import tiny_cfg
    from training.checkpoints import load_checkpoint
    from training.ray_train import run_training

    # precise BN and the EMA both run forwards in training mode; neither may wait on a per-layer collective
    cfg = tiny_cfg(tiny_shards, tmp_path / "run", epochs=2, sync_bn=True, precise_bn=2, ema=0.9)
    result = run_training(cfg, workers=2)
    assert result.status == "finished" and result.world_size == 2 and result.step == 6
    _, ckpt = load_checkpoint(result.checkpoint)
    assert TrainConfig.from_dict(ckpt["extra"]["train_config"]).sync_bn is True
    plain = get_model(cfg.model, num_classes=3)
    plain.load_state_dict(ckpt["state_dict"])  # the same keys as the plain model: strict load
