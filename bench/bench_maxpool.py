"""CPU max pooling: ``training.models.common.MaxPool3d`` against ``nn.MaxPool3d``, in one process.

PyTorch's CPU kernel for max pooling a contiguous ``(N, C, T, H, W)`` tensor is much slower than its
``channels_last_3d`` kernel; the models' ``MaxPool3d`` pools contiguous CPU input in ``channels_last_3d`` and
converts back (same numbers). This prints, for the stem pool of ShuffleNetV2 0.25x at the demo's size and for
whole models (a training step: forward, loss, backward; an evaluation forward under ``no_grad``), the time
with the models' pool, with ``nn.MaxPool3d`` swapped in, and their ratio::

    .venv/bin/python bench/bench_maxpool.py [--batch 8] [--frames 16] [--size 48] [--threads 1] [--reps 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from training.models import get_model  # noqa: E402
from training.models.common import MaxPool3d  # noqa: E402


def timed(fn: Callable[[nn.Module], object], module: nn.Module, reps: int) -> float:
    """Median ms of ``reps`` calls of ``fn(module)`` after 3 warm-up calls."""
    for _ in range(3):
        fn(module)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(module)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def with_native_pools(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose MaxPool3d layers are plain ``nn.MaxPool3d`` with the same settings."""
    slow = copy.deepcopy(model)
    for name, mod in list(slow.named_modules()):
        if isinstance(mod, MaxPool3d):
            parent = slow.get_submodule(name.rsplit(".", 1)[0]) if "." in name else slow
            setattr(parent, name.rsplit(".", 1)[-1], nn.MaxPool3d(mod.kernel_size, mod.stride, mod.padding))
    return slow


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="clips per step (the demo's per-worker batch)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a Ray Train CPU worker runs 1)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--models", default="shufflenetv2_0.25x,shufflenetv1_0.5x,resnet18")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    # the stem pool alone: ShuffleNetV2 0.25x's conv1 output (24 channels, H and W halved), after ReLU
    x = torch.relu(torch.randn(args.batch, 24, args.frames, args.size // 2, args.size // 2))
    xg = x.clone().requires_grad_(True)
    def forward(m: nn.Module) -> None:
        m(x)

    def forward_backward(m: nn.Module) -> None:
        m(xg).sum().backward()

    for label, fn in (("pool forward", forward), ("pool forward+backward", forward_backward)):
        rows.append((label, timed(fn, MaxPool3d(3, 2, 1), args.reps), timed(fn, nn.MaxPool3d(3, 2, 1), args.reps)))
    clips = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    labels = torch.randint(0, 4, (args.batch,))
    for name in args.models.split(","):
        model = get_model(name, num_classes=4)
        native = with_native_pools(model)

        def train_step(m: nn.Module) -> None:
            m.zero_grad(set_to_none=False)
            F.cross_entropy(m(clips), labels).backward()

        def eval_forward(m: nn.Module) -> None:
            with torch.no_grad():
                m(clips)

        model.train(), native.train()
        rows.append((f"{name} training step", timed(train_step, model, args.reps),
                     timed(train_step, native, args.reps)))
        model.eval(), native.eval()
        rows.append((f"{name} eval forward", timed(eval_forward, model, args.reps),
                     timed(eval_forward, native, args.reps)))
    print(f"batch {args.batch}, {args.frames}x{args.size}x{args.size}, {args.threads} thread(s), median of "
          f"{args.reps}; ms")
    print(f"{'':<34}{'MaxPool3d':>10}{'nn.MaxPool3d':>14}{'ratio':>8}")
    for label, fast, native in rows:
        print(f"{label:<34}{fast:>10.2f}{native:>14.2f}{fast / native:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
