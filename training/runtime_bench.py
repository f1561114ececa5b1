"""Deployment runtimes per model (``e3d bench models --runtime eager,onnxruntime[,torchscript]``).

For each model x runtime x batch x threads it times the *deployed* model, :class:`training.export.DeployModel`
(uint8 ``(B, 3, T, H, W)`` clip in, normalisation inside, logits out), warm (``--warmup`` untimed calls
first) and synchronised, and prints a Table 8 style table: params, MFLOPs (Table 8's, and ours in the paper's
convention), latency median and p90 (ms per batch) and clips/s per runtime, plus the ratio of each runtime's
median to eager's measured in the same run. ``--markdown`` prints Markdown.

Runtimes:

* ``eager``: PyTorch eager, fp32, contiguous layout, ``torch.inference_mode()``;
* ``eager_cl``: the same in ``channels_last_3d`` (depthwise 3D convolutions take other kernels);
* ``torchscript``: the frozen traced export (``e3d export --format torchscript``);
* ``onnxruntime``: the ONNX export (``e3d export --format onnx``) in ONNX Runtime's CPU provider, with
  ``intra_op_num_threads`` = the threads column;
* ``cuda`` (eager, bf16 autocast, channels_last_3d) and ``onnxruntime_cuda`` (CUDA provider): GPU rows,
  "not measured" when there is no CUDA device / no CUDA provider.

Threads: torch's intra-op threads (``torch.set_num_threads``) for the PyTorch runtimes, the session's intra-op
threads for ONNX Runtime.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from training.data import normalization_for
from training.export import DeployModel, example_input, export, metadata, onnx_session
from training.models import TABLE8, list_models

CPU_RUNTIMES = ("eager", "eager_cl", "torchscript", "onnxruntime")
GPU_RUNTIMES = ("cuda", "onnxruntime_cuda")
RUNTIMES = CPU_RUNTIMES + GPU_RUNTIMES


@dataclass(frozen=True)
class RuntimeResult:
    model: str
    runtime: str
    batch: int
    threads: int
    ms_median: float = math.nan
    ms_p90: float = math.nan
    iters: int = 0
    note: str = ""  # "not measured: ..." or an error

    @property
    def clips_per_s(self) -> float:
        return self.batch / (self.ms_median / 1e3) if self.ms_median > 0 else math.nan


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _times(step: Callable[[], object], sync: Callable[[], None], warmup: int, iters: int,
           clock: Callable[[], float] = time.perf_counter) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    out = []
    for _ in range(iters):
        t0 = clock()
        step()
        sync()
        out.append(clock() - t0)
    return out


def _p90(xs: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(xs), 90))


class _Exports:
    """Exports a model once per format (into a temporary folder) for all batch/thread settings."""

    def __init__(self, deploy: DeployModel, meta: dict, clip_len: int, size: int, folder: str):
        self.deploy, self.meta, self.clip_len, self.size, self.folder = deploy, meta, clip_len, size, folder
        self.paths: dict[str, str] = {}

    def path(self, fmt: str) -> str:
        if fmt not in self.paths:
            ext = ".onnx" if fmt == "onnx" else ".pt"
            self.paths[fmt] = export(self.deploy, fmt, os.path.join(self.folder, f"{self.meta['model']}{ext}"),
                                     example=example_input(1, self.clip_len, self.size), meta=self.meta)
        return self.paths[fmt]


def _step(runtime: str, deploy: DeployModel, exports: _Exports, x: torch.Tensor, threads: int
          ) -> tuple[Callable[[], object], Callable[[], None]]:
    """A callable running one batch in ``runtime`` and its synchronisation; raises RuntimeError('not
    measured: ...') when the runtime is unavailable here."""
    nosync = lambda: None  # noqa: E731
    if runtime in ("eager", "eager_cl"):
        model = deploy
        if runtime == "eager_cl":
            model = copy.deepcopy(deploy).to(memory_format=torch.channels_last_3d)

        def eager():
            with torch.inference_mode():
                return model(x)

        return eager, nosync
    if runtime == "torchscript":
        ts = torch.jit.load(exports.path("torchscript"), map_location="cpu")

        def script():
            with torch.inference_mode():
                return ts(x)

        return script, nosync
    if runtime in ("onnxruntime", "onnxruntime_cuda"):
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if runtime == "onnxruntime_cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise RuntimeError(f"not measured (no {provider.removesuffix('ExecutionProvider')} provider)")
        sess = onnx_session(exports.path("onnx"), threads=threads, providers=[provider])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return (lambda: sess.run(None, feed)), nosync
    if runtime == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("not measured (no CUDA device)")
        dev = torch.device("cuda")
        model = copy.deepcopy(deploy).to(dev).to(memory_format=torch.channels_last_3d)
        xd = x.to(dev)

        def gpu():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                return model(xd)

        return gpu, (lambda: torch.cuda.synchronize(dev))
    raise ValueError(f"unknown runtime {runtime!r}; valid: {RUNTIMES}")


def bench_model(name: str, runtimes: Sequence[str], batches: Sequence[int], threads: Sequence[int], *,
                clip_len: int, size: int, num_classes: int, warmup: int, iters: int, folder: str,
                clock: str = "wall") -> list[RuntimeResult]:
    """Every runtime x batch x threads of one model; failures and unavailable runtimes become notes.

    ``clock="cpu"`` times with this process's CPU time (all its threads) instead of wall time: on a shared,
    busy machine waiting for a core then does not count (at 1 thread it is the latency a quiet machine gives,
    up to cache effects); GPU runtimes are always timed in wall time."""
    torch.manual_seed(0)
    from training.models import get_model

    model = get_model(name, num_classes=num_classes).eval()
    norm = normalization_for("kinetics600")
    deploy = DeployModel(model, norm).eval()
    exports = _Exports(deploy, metadata(model=name, classes=[str(i) for i in range(num_classes)],
                                        clip_len=clip_len, size=size, norm=norm), clip_len, size, folder)
    out = []
    for runtime in runtimes:
        for b in batches:
            x = example_input(b, clip_len, size)
            for t in threads:
                torch.set_num_threads(t)
                base = RuntimeResult(name, runtime, b, t)
                try:
                    step, sync = _step(runtime, deploy, exports, x, t)
                    use = CLOCKS["wall" if runtime in GPU_RUNTIMES else clock]
                    ts = _times(step, sync, warmup, iters, use)
                except (RuntimeError, ValueError, OSError) as exc:
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    note = msg if msg.startswith("not measured") else f"error: {type(exc).__name__}: {msg}"
                    out.append(RuntimeResult(**{**asdict(base), "note": note}))
                    continue
                out.append(RuntimeResult(**{**asdict(base), "ms_median": statistics.median(ts) * 1e3,
                                            "ms_p90": _p90(ts) * 1e3, "iters": iters}))
    deploy.to(memory_format=torch.contiguous_format)
    return out


def _counts(name: str, clip_len: int, size: int, num_classes: int) -> tuple[int, float, int | None]:
    from training.flops import count_params, paper_flops
    from training.models import get_model

    with torch.device("meta"):
        m = get_model(name, num_classes=num_classes)
    paper = next((e.paper_mflops for e in TABLE8 if e.name == name), None)
    return count_params(m), paper_flops(m, (1, 3, clip_len, size, size)) / 1e6, paper


def format_table(results: Sequence[RuntimeResult], counts: dict[str, tuple[int, float, int | None]],
                 markdown: bool = False) -> str:
    """One row per model x batch x threads; per runtime: median / p90 ms and clips/s; ratios vs eager."""
    runtimes = list(dict.fromkeys(r.runtime for r in results))
    keyed = {(r.model, r.batch, r.threads, r.runtime): r for r in results}
    header = ["model", "params (M)", "MFLOPs (T8)", "MFLOPs (ours)", "batch", "threads"]
    for rt in runtimes:
        header += [f"{rt} ms med/p90", f"{rt} clips/s"]
    header += [f"{rt}/eager" for rt in runtimes if rt not in ("eager",)] if "eager" in runtimes else []
    rows = []
    for (model, b, t) in dict.fromkeys((r.model, r.batch, r.threads) for r in results):
        params, ours, paper = counts[model]
        row = [model, f"{params / 1e6:.2f}", "-" if paper is None else str(paper), f"{ours:.0f}", str(b), str(t)]
        for rt in runtimes:
            r = keyed[(model, b, t, rt)]
            if r.note:
                row += [r.note, "-"]
            else:
                row += [f"{r.ms_median:.1f} / {r.ms_p90:.1f}", f"{r.clips_per_s:.1f}"]
        if "eager" in runtimes:
            ref = keyed[(model, b, t, "eager")]
            for rt in runtimes:
                if rt == "eager":
                    continue
                r = keyed[(model, b, t, rt)]
                ok = not r.note and not ref.note
                row.append(f"{r.ms_median / ref.ms_median:.2f}" if ok else "-")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in [header, *rows])


def speed_ranking(results: Sequence[RuntimeResult], counts: dict[str, tuple[int, float, int | None]],
                  runtime: str, batch: int, threads: int) -> str:
    """Models ordered by clips/s in one setting next to their rank by Table 8 MFLOPs (fewest first), and the
    rank correlation (Spearman). Disagreements are the rows whose two ranks differ most."""
    rows = [r for r in results if r.runtime == runtime and r.batch == batch and r.threads == threads and not r.note]
    if len(rows) < 2:
        return ""
    by_speed = sorted(rows, key=lambda r: -r.clips_per_s)
    flops = {r.model: (counts[r.model][2] if counts[r.model][2] is not None else counts[r.model][1]) for r in rows}
    by_flops = sorted(flops, key=lambda m: flops[m])
    frank = {m: i + 1 for i, m in enumerate(by_flops)}
    lines = [f"speed ranking ({runtime}, batch {batch}, {threads} thread(s)) vs MFLOPs ranking:",
             "| speed rank | model | clips/s | MFLOPs | MFLOPs rank | shift |", "|---|---|---|---|---|---|"]
    d2 = 0
    for i, r in enumerate(by_speed, 1):
        shift = frank[r.model] - i
        d2 += shift * shift
        lines.append(f"| {i} | {r.model} | {r.clips_per_s:.1f} | {flops[r.model]:.0f} | {frank[r.model]} | "
                     f"{shift:+d} |")
    n = len(rows)
    rho = 1 - 6 * d2 / (n * (n * n - 1))
    lines.append(f"Spearman rank correlation speed vs (fewer) MFLOPs: {rho:.2f}")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    vals = [int(v) for v in text.split(",") if v.strip()]
    if not vals or any(v < 1 for v in vals):
        raise SystemExit(f"expected comma-separated positive integers, got {text!r}")
    return vals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``e3d bench models --runtime``."""
    p = argparse.ArgumentParser(prog="e3d bench models --runtime",
                                description="Latency and clips/s of the deployed models per runtime.")
    p.add_argument("--runtime", required=True, help=f"comma-separated: {','.join(RUNTIMES)}")
    p.add_argument("--models", default="table8", help="comma-separated names, 'table8' or 'all'")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma-separated CPU thread counts")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--num-classes", type=int, default=600)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: latency; cpu: this process's CPU time per call (robust on a busy shared machine)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise SystemExit(f"--runtime: unknown {bad}; valid: {','.join(RUNTIMES)}")
    names: list[str] = []
    for item in (m.strip() for m in args.models.split(",") if m.strip()):
        names += [e.name for e in TABLE8] if item == "table8" else list_models() if item == "all" else [item]
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}")
    batches, threads = _ints(args.batch), _ints(args.threads)
    print(f"device: cpu {platform.processor() or platform.machine()} ({os.cpu_count()} cores), cuda "
          f"{'yes' if torch.cuda.is_available() else 'no'}; torch {torch.__version__}; input uint8 Bx3x{args.frames}"
          f"x{args.size}x{args.size}; {args.warmup} warm-up + {args.iters} timed calls per cell; "
          f"clock: {args.clock}{' (CPU ms of this process per call)' if args.clock == 'cpu' else ''}", flush=True)
    results: list[RuntimeResult] = []
    counts = {}
    with tempfile.TemporaryDirectory(prefix="e3d-rt-") as folder:
        for name in dict.fromkeys(names):
            counts[name] = _counts(name, args.frames, args.size, args.num_classes)
            t0 = time.perf_counter()
            results += bench_model(name, runtimes, batches, threads, clip_len=args.frames, size=args.size,
                                   num_classes=args.num_classes, warmup=args.warmup, iters=args.iters, folder=folder,
                                   clock=args.clock)
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(format_table(results, counts, markdown=args.markdown))
    cpu_rt = next((r for r in ("onnxruntime", "eager", "eager_cl", "torchscript") if r in runtimes), None)
    if cpu_rt:
        for b in batches:
            text = speed_ranking(results, counts, cpu_rt, b, max(threads))
            if text:
                print("\n" + text)
    if args.json:
        rows = [{**asdict(r), "clips_per_s": r.clips_per_s} for r in results]
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
        with open(args.json, "w") as f:
            json.dump({"counts": counts, "results": rows}, f, indent=1)
    errors = [r for r in results if r.note.startswith("error")]
    return 1 if errors else 0
