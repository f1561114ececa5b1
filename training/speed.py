"""Model speed bench (``e3d bench models``): clips per second at the paper's batch size of 8.

For every model x mode (inference, training step) x memory layout (contiguous NCDHW, channels_last_3d) x
precision (fp32, bf16 autocast) it runs warm-up iterations, then times each iteration between device
synchronisations and reports the median.  Depthwise 3D convolutions pick entirely different kernels in the
two layouts (on CPU a depthwise 3x3x3 layer was measured ~25x faster in channels_last_3d), so both are timed.

* inference: ``model.eval()`` under ``torch.inference_mode()``.
* training step: forward, cross-entropy, ``backward()``, SGD step (momentum 0.9), gradients set to None.

Inputs are random ``(B, 3, T, H, W)`` float32 clips already on the device (the released ``speed_gpu.py``
also timed a host-to-device copy per batch and no synchronisation, so its numbers are not comparable).

Run ``python -m training.speed --help``.  Default models: all 17 Table 8 configurations on CUDA; on CPU
only ShuffleNetV2 1.0x and MobileNetV2 1.0x, because a CPU training step of the bigger ones takes seconds.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shards import strict_json
from training.models import TABLE8, get_model, list_models

CPU_DEFAULT_MODELS = ("shufflenetv2_1.0x", "mobilenetv2_1.0x")
LAYOUTS: dict[str, torch.memory_format] = {
    "contiguous": torch.contiguous_format,
    "channels_last_3d": torch.channels_last_3d,
}
PRECISIONS = ("fp32", "bf16")
MODES = ("infer", "train")


@dataclass(frozen=True)
class BenchResult:
    """One timed configuration: ``ms`` is the median milliseconds per batch, ``error`` set if it failed."""

    model: str
    mode: str
    layout: str
    precision: str
    batch: int
    ms: float = math.nan
    ms_min: float = math.nan
    iters: int = 0
    error: str = ""

    @property
    def clips_per_s(self) -> float:
        return self.batch / (self.ms / 1e3) if self.ms > 0 else math.nan


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def bench_one(
    name: str,
    mode: str,
    layout: str,
    precision: str,
    *,
    device: torch.device,
    batch: int = 8,
    frames: int = 16,
    size: int = 112,
    num_classes: int = 600,
    warmup: int = 3,
    iters: int = 10,
) -> BenchResult:
    """Time ``iters`` iterations (after ``warmup``) of one model/mode/layout/precision.  Errors such as
    out-of-memory are returned in ``BenchResult.error`` instead of raised, so a sweep keeps going."""
    base = BenchResult(name, mode, layout, precision, batch)
    memory_format = LAYOUTS[layout]
    try:
        model = get_model(name, num_classes=num_classes).to(device=device, memory_format=memory_format)
        x = torch.randn(batch, 3, frames, size, size, device=device).contiguous(memory_format=memory_format)
        target = torch.randint(0, num_classes, (batch,), device=device)
        step = _make_step(model, mode, x, target, device, precision)
        sync = _sync(device)
        for _ in range(warmup):
            step()
        sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    except (RuntimeError, ValueError, NotImplementedError) as exc:  # OOM, unsupported kernel/dtype
        return BenchResult(**{**asdict(base), "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return BenchResult(
        **{**asdict(base), "ms": statistics.median(times) * 1e3, "ms_min": min(times) * 1e3, "iters": iters}
    )


def _make_step(
    model: nn.Module,
    mode: str,
    x: torch.Tensor,
    target: torch.Tensor,
    device: torch.device,
    precision: str,
) -> Callable[[], None]:
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), _autocast(device, precision):
                model(x)

        return infer
    if mode != "train":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train() -> None:
        with _autocast(device, precision):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train


def format_table(results: Sequence[BenchResult]) -> str:
    """Aligned text table; ``vs contig.`` is the speed-up over the contiguous run of the same model, mode and
    precision."""
    contiguous = {(r.model, r.mode, r.precision): r.ms for r in results if r.layout == "contiguous"}
    header = ["model", "mode", "layout", "precision", "ms/batch", "min ms", "clips/s", "vs contig."]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.model, r.mode, r.layout, r.precision, "-", "-", "-", r.error])
            continue
        ref = contiguous.get((r.model, r.mode, r.precision), math.nan)
        rows.append(
            [
                r.model,
                r.mode,
                r.layout,
                r.precision,
                f"{r.ms:.1f}",
                f"{r.ms_min:.1f}",
                f"{r.clips_per_s:.1f}",
                f"{ref / r.ms:.2f}x" if ref == ref else "-",
            ]
        )
    # The last column (speed-up, or the error text) is left unpadded.
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: list[str]) -> str:
        pairs = enumerate(zip(row[:-1], widths, strict=True))
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join([*cells, row[-1]])

    return "\n".join([line(header), line(["-" * w for w in widths] + ["-" * 10]), *map(line, rows)])


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} {torch.cuda.get_device_name(device)}"
    return f"cpu {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``e3d bench models`` (without ``--runtime``)."""
    p = argparse.ArgumentParser(
        prog="e3d bench models",
        description="Clips/s of the paper's models for inference and a training step (batch 8 by default).",
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated registry names, 'table8' (the 17 Table 8 configs) or 'all'; default: table8 on "
        f"CUDA, {','.join(CPU_DEFAULT_MODELS)} on CPU",
    )
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch (paper: 8)")
    p.add_argument("--frames", type=int, default=16, help="clip length T (paper: 16)")
    p.add_argument("--size", type=int, default=112, help="crop size H = W (paper: 112)")
    p.add_argument("--num-classes", type=int, default=600)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (cuDNN autotune, caches)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--modes", default=",".join(MODES), help="infer,train")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="contiguous,channels_last_3d")
    p.add_argument(
        "--precisions",
        default=None,
        help="fp32,bf16 (bf16 = autocast); default fp32,bf16 on CUDA, fp32 on CPU",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave cudnn.benchmark off")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def _resolve_models(spec: str | None, device: torch.device) -> list[str]:
    if spec is None:
        spec = "table8" if device.type == "cuda" else ",".join(CPU_DEFAULT_MODELS)
    names: list[str] = []
    for item in _split(spec):
        if item == "table8":
            names += [e.name for e in TABLE8]
        elif item == "all":
            names += list_models()
        else:
            names.append(item)
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; valid: table8, all, {', '.join(list_models())}")
    return list(dict.fromkeys(names))


def _choose(values: list[str], allowed: Sequence[str], what: str) -> list[str]:
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise SystemExit(f"--{what}: expected a comma-separated subset of {','.join(allowed)}, got {values}")
    return values


def _json_row(r: BenchResult) -> dict[str, object]:
    row: dict[str, object] = {**asdict(r), "clips_per_s": r.clips_per_s}
    # NaN is not valid JSON: failed rows get nulls.
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``e3d bench models``; prints the table and returns 0 (1 if any configuration failed).

    With ``--runtime`` it runs the deployment-runtime table instead (:mod:`training.runtime_bench`)."""
    if argv and any(a == "--runtime" or a.startswith("--runtime=") for a in argv):
        from training.runtime_bench import main as runtime_main

        return runtime_main(argv)
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    models = _resolve_models(args.models, device)
    modes = _choose(_split(args.modes), MODES, "modes")
    layouts = _choose(_split(args.layouts), list(LAYOUTS), "layouts")
    default_precisions = "fp32,bf16" if device.type == "cuda" else "fp32"
    precisions = _choose(_split(args.precisions or default_precisions), PRECISIONS, "precisions")
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0:
        raise SystemExit("--batch-size and --iters must be >= 1, --warmup >= 0")

    print(
        f"device: {_device_description(device)}; torch {torch.__version__}; input {args.batch_size}x3x"
        f"{args.frames}x{args.size}x{args.size}; {args.warmup} warm-up + {args.iters} timed iterations "
        "(median)",
        flush=True,
    )
    results: list[BenchResult] = []
    for name in models:
        for mode in modes:
            for precision in precisions:
                for layout in layouts:
                    results.append(
                        bench_one(
                            name,
                            mode,
                            layout,
                            precision,
                            device=device,
                            batch=args.batch_size,
                            frames=args.frames,
                            size=args.size,
                            num_classes=args.num_classes,
                            warmup=args.warmup,
                            iters=args.iters,
                        )
                    )
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            f.write(strict_json.dumps(
                {
                    "device": _device_description(device),
                    "torch": torch.__version__,
                    "input": [args.batch_size, 3, args.frames, args.size, args.size],
                    "results": [_json_row(r) for r in results],
                },
                indent=2,
            ))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
