"""Gradient numerics per memory format: float32 gradients against a float64 reference, and step speed.

For each model: one training-mode forward + backward (cross-entropy, fixed labels, dropout off) on the same
input -- uint8-range frames minus the ActivityNet mean, as the paper's recipe feeds them -- in float64
contiguous (the reference), float32 contiguous and float32 ``channels_last_3d``. Per parameter tensor the
relative error is ``||g32 - g64|| / ||g64||``; the table shows the worst tensor, the median over tensors, and
the median time of one float32 step per layout. A second table repeats the comparison per kernel (depthwise
and dense Conv3d, BatchNorm3d) on activation-sized inputs, to tell which one makes the difference::

    python bench/bench_numerics.py                                  # every family, batch 4, 16x112x112
    python bench/bench_numerics.py --models shufflenetv2_0.25x --size 56 --reps 2

Run on demand; speed ratios are within one run. ``--device cuda`` measures a GPU (TF32 off, so float32 is
float32).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from training.data.normalize import ACTIVITYNET_MEAN
from training.models import get_model

FAMILIES = ("shufflenetv2_0.25x", "shufflenetv1_0.5x", "mobilenetv1_0.5x", "mobilenetv2_0.2x", "squeezenet1_1",
            "resnet18", "resnext101")
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


def _input(batch: int, frames: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, frames, size, size), generator=g).double()
    return x - torch.tensor(ACTIVITYNET_MEAN, dtype=torch.float64)[None, :, None, None, None]


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, layout: torch.memory_format,
           device: torch.device) -> tuple[dict[str, torch.Tensor], float]:
    m = model.to(device=device, dtype=dtype, memory_format=layout).train()
    for mod in m.modules():
        if isinstance(mod, nn.Dropout | nn.Dropout3d):
            mod.eval()  # no random masks: all three runs compute the same function
    m.zero_grad(set_to_none=True)
    xin = x.to(device=device, dtype=dtype).contiguous(memory_format=layout)
    t0 = time.perf_counter()
    F.cross_entropy(m(xin), y.to(device)).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {n: p.grad.detach().double().cpu() for n, p in m.named_parameters()}, dt


def _errors(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for n, g in ref.items():
        denom = g.norm().item()
        out[n] = (got[n] - g).norm().item() / denom if denom > 0 else float("nan")
    return out


#: A tensor whose float64 gradient norm is below this fraction of the whole gradient's norm has a gradient
#: that is zero in exact arithmetic: the bias of a BatchNorm followed (through linear layers only) by another
#: training-mode BatchNorm, whose mean subtraction removes any per-channel constant. Its "gradient" in any
#: precision is round-off, so a relative error means nothing; such tensors are counted and reported apart.
ZERO_GRAD = 1e-9


def _split_zero(ref: dict[str, torch.Tensor]) -> tuple[set[str], float]:
    total = torch.sqrt(sum(g.norm() ** 2 for g in ref.values())).item()
    return {n for n, g in ref.items() if g.norm().item() <= ZERO_GRAD * total}, total


def model_rows(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    torch.manual_seed(args.seed)
    base = get_model(name, num_classes=args.classes)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    x = _input(args.batch, args.frames, args.size, args.seed)
    y = torch.arange(args.batch) % args.classes
    ref, _ = _grads(base, x, y, torch.float64, torch.contiguous_format, torch.device("cpu"))
    zero, total = _split_zero(ref)
    rows = []
    for lname, layout in LAYOUTS.items():
        times, errs, g = [], None, None
        for i in range(args.reps + 1):  # the first pass warms up (allocations, kernel selection), untimed
            base.load_state_dict(state)  # BN running stats move each pass; gradients do not depend on them
            g1, dt = _grads(base.float(), x, y, torch.float32, layout, device)
            if i:
                times.append(dt)
            g = g or g1
        errs = {k: v for k, v in _errors(ref, g).items() if k not in zero}
        worst = max(errs, key=lambda k: errs[k])
        # the round-off "gradient" of the exactly-zero tensors, relative to the whole gradient's norm
        noise = max((g[n].norm().item() / total for n in zero), default=0.0)
        rows.append({"model": name, "layout": lname, "worst": errs[worst], "worst_tensor": worst,
                     "median": statistics.median(errs.values()), "step_s": statistics.median(times),
                     "zero": len(zero), "zero_noise": noise, "tensors": len(ref)})
    return rows


def _kernel_case(name: str, build, shape: tuple[int, ...], device: torch.device, seed: int) -> list[dict]:
    """Output and weight/bias/input-gradient error of one layer, float32 per layout vs float64, for a random
    upstream gradient."""
    torch.manual_seed(seed)
    layer = build().double()
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    gy = None
    ref: dict[str, torch.Tensor] = {}
    rows = []
    for lname, layout in (("float64", torch.contiguous_format), *LAYOUTS.items()):
        dtype = torch.float64 if lname == "float64" else torch.float32
        m = layer.to(device=device, dtype=dtype, memory_format=layout).train()
        m.zero_grad(set_to_none=True)
        xin = x.to(device=device, dtype=dtype).contiguous(memory_format=layout).detach().clone(
            memory_format=torch.preserve_format).requires_grad_(True)
        out = m(xin)
        if gy is None:
            gy = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
        out.backward(gy.to(device=device, dtype=dtype).contiguous(memory_format=layout))
        grads = {"output": out.detach().double().cpu()}
        grads.update({f"grad {n}": p.grad.double().cpu() for n, p in m.named_parameters()})
        grads["grad input"] = xin.grad.double().cpu()
        if lname == "float64":
            ref = grads
            continue
        errs = _errors(ref, grads)
        rows.append({"kernel": name, "layout": lname, **errs})
    return rows


KERNELS = {
    # (name, layer builder, input shape): the layers the ShuffleNet/MobileNet blocks are made of, at the sizes
    # of their middle stages at 16x112x112 input
    "depthwise Conv3d 3x3x3 (C=58)": (lambda: nn.Conv3d(58, 58, 3, padding=1, groups=58, bias=False),
                                      (4, 58, 8, 28, 28)),
    "pointwise Conv3d 1x1x1 (58->58)": (lambda: nn.Conv3d(58, 58, 1, bias=False), (4, 58, 8, 28, 28)),
    "dense Conv3d 3x3x3 (3->24, stem)": (lambda: nn.Conv3d(3, 24, 3, stride=(1, 2, 2), padding=1, bias=False),
                                         (4, 3, 16, 56, 56)),
    "BatchNorm3d (C=58)": (lambda: nn.BatchNorm3d(58), (4, 58, 8, 28, 28)),
    # the stem's BN: 4 x 16 x 56 x 56 = 200,704 values per channel to reduce
    "BatchNorm3d (C=24, stem)": (lambda: nn.BatchNorm3d(24), (4, 24, 16, 56, 56)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(FAMILIES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--reps", type=int, default=3, help="float32 steps timed per layout (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--no-kernels", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
          f"{args.frames}x{args.size}x{args.size}, {args.reps} timed float32 steps per layout", flush=True)
    print(f"{'model':<20}{'layout':<18}{'worst rel err':>14}  {'worst tensor':<40}{'median':>9}{'step s':>8}"
          f"{'speed vs contiguous':>21}{'zero-grad tensors (noise)':>27}")
    for name in args.models.split(","):
        rows = model_rows(name, args, device)
        base_t = rows[0]["step_s"]
        for r in rows:
            print(f"{r['model']:<20}{r['layout']:<18}{r['worst']:>14.2e}  {r['worst_tensor'][:39]:<40}"
                  f"{r['median']:>9.1e}{r['step_s']:>8.2f}{base_t / r['step_s']:>20.2f}x"
                  f"{r['zero']:>10}/{r['tensors']} ({r['zero_noise']:.0e})", flush=True)
    if not args.no_kernels:
        print(f"\n{'kernel':<34}{'layout':<18}{'rel err of the output and each gradient (float32 vs float64)'}")
        for kname, (build, shape) in KERNELS.items():
            for r in _kernel_case(kname, build, shape, device, args.seed):
                errs = ", ".join(f"{k}: {v:.1e}" for k, v in r.items() if k not in ("kernel", "layout"))
                print(f"{r['kernel']:<34}{r['layout']:<18}{errs}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
