"""Shared-decode benchmark: K models trained from one decode pass (``training.loop.train_group``, what
``e3d sweep --shared-decode`` runs) against the same K models trained in separate runs that each decode
their own clips. Ratios come from one run of this script.

Run on demand (not part of the tests)::

    .venv/bin/python bench/bench_shared_decode.py [--videos 12] [--epochs 1] [--size 112] [--sweep]

Data is made here: synthetic Jester (4 classes, ``--videos`` per class and split, 12 fps frame folders)
preprocessed to shards at the default 128 px short side. Models: the three cheapest Table 8 configurations
(ShuffleNetV2 0.25x, MobileNetV2 0.2x, ShuffleNetV1 0.5x), 16-frame clips, batch 8, the paper's multi-scale
crops, no final evaluation (one validation pass at the end of the run).

* in-process (always): CPU time of this process (``getrusage``; torch and the loader on one thread, loader
  in-process), separate ``train_loop`` runs against one ``train_group`` run; plus the loader alone for one
  epoch, which is the decode cost every separate run pays and a group pays once.
* ``--sweep``: the whole ``run_sweep`` on the local Ray, one trial at a time against one shared-decode group:
  wall time and CPU time of the whole machine (``/proc/stat``), Ray's per-run start-up included.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.sweep import SweepConfig, TrialSpec, run_sweep  # noqa: E402
from preprocess.config import PreprocessConfig  # noqa: E402
from preprocess.ray_tasks import run_tasks_local  # noqa: E402
from preprocess.run import preprocess  # noqa: E402
from preprocess.synth import SynthConfig, generate  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import ClipLoader, ClipStream, LoaderConfig, shard_specs  # noqa: E402
from training.loop import LocalSession, train_group, train_loop  # noqa: E402

MODELS = ("shufflenetv2_0.25x", "mobilenetv2_0.2x", "shufflenetv1_0.5x")


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_cpu() -> float:
    """CPU seconds spent by the whole machine (all processes, all cores) since boot."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def loader_epoch_cpu(shards: str, cfg: TrainConfig) -> tuple[float, int]:
    """(CPU-s, clips) of one training epoch of the loader alone: read, decode, crop, resize."""
    lcfg = LoaderConfig.for_dataset(cfg.dataset, "train", clip_len=cfg.clip_len, size=cfg.size,
                                    batch_size=cfg.batch_size, num_workers=0, seed=cfg.seed)
    loader = ClipLoader(ClipStream(shard_specs(shards, "train", videos=False), lcfg))
    loader.set_epoch(0)
    c0, n = process_cpu(), 0
    for batch in loader:
        n += len(batch["labels"])
    return process_cpu() - c0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=12, help="videos per class and split (4 classes)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--size", type=int, default=112, help="crop side in pixels")
    ap.add_argument("--sweep", action="store_true", help="also compare whole sweeps on the local Ray")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="e3d-bench-shared-"))
    shards = work / "shards"
    if not (shards / "dataset.json").exists():
        generate("jester", work / "src", SynthConfig(num_classes=4, videos_per_class=args.videos, seed=1,
                                                     bad_inputs=False))
        preprocess(PreprocessConfig(dataset="jester", src=str(work / "src"), out=str(shards),
                                    splits=("train", "validation"), progress=False), executor=run_tasks_local)
    recipe = {"epochs": args.epochs, "clip_len": 16, "size": args.size, "batch_size": 8, "loader_workers": 0,
              "final_eval": False, "lr": 0.02, "log_every": 1000}
    cfgs = [TrainConfig.for_dataset("jester", str(shards), str(work / f"runs-{os.getpid()}" / m), model=m, **recipe)
            for m in MODELS]
    k = len(cfgs)

    decode_cpu, clips = loader_epoch_cpu(str(shards), cfgs[0])
    decode_cpu *= args.epochs
    clips *= args.epochs
    c0 = process_cpu()
    for c in cfgs:
        train_loop(c.replace(out=c.out + "-alone"))
    separate = process_cpu() - c0
    c0 = process_cpu()
    train_group(cfgs, LocalSession(str(work / f"runs-{os.getpid()}" / "group-ckpt")))
    shared = process_cpu() - c0
    trained = k * clips
    print(f"\n{k} models x {clips} training clips ({args.epochs} epoch(s), 16x{args.size}x{args.size}, batch 8), "
          f"1 thread, CPU time of this process")
    print(f"  loader alone, {args.epochs} epoch(s): {decode_cpu:.2f} CPU-s = {1000 * decode_cpu / clips:.2f} "
          "CPU-ms per clip")
    print(f"  separate runs: {separate:7.2f} CPU-s; decode {1000 * k * decode_cpu / trained:.2f} CPU-ms per "
          f"trained clip ({100 * k * decode_cpu / separate:.0f}% of the CPU)")
    print(f"  shared decode: {shared:7.2f} CPU-s; decode {1000 * decode_cpu / trained:.2f} CPU-ms per trained clip "
          f"({100 * decode_cpu / shared:.0f}% of the CPU)")
    print(f"  separate / shared: {separate / shared:.2f}x CPU (decode saved: {(k - 1) * decode_cpu:.2f} CPU-s; "
          "the rest is each separate run's own set-up and loader start)")

    if args.sweep:
        trials = tuple(TrialSpec(m, m) for m in MODELS)
        base = {key: v for key, v in recipe.items()}
        out = {}
        for shared_decode in (False, True):
            cfg = SweepConfig(dataset="jester", shards=str(shards), trials=trials, base=base, workers_per_trial=1,
                              max_concurrent=1, speed_iters=1, shared_decode=shared_decode,
                              out=str(work / f"sweep-{os.getpid()}-{'shared' if shared_decode else 'separate'}"))
            w0, m0 = time.perf_counter(), machine_cpu()
            results = run_sweep(cfg, log=lambda _: None)
            out[shared_decode] = (time.perf_counter() - w0, machine_cpu() - m0)
            assert all(r.status == "finished" for r in results), results
        (ws, cs), (wg, cg) = out[False], out[True]
        print(f"\nwhole sweep on the local Ray ({os.cpu_count()} cores), one run at a time, "
              "machine CPU from /proc/stat:")
        print(f"  separate runs: {ws:6.1f} s wall, {cs:6.1f} CPU-s")
        print(f"  shared decode: {wg:6.1f} s wall, {cg:6.1f} CPU-s")
        print(f"  separate / shared: {ws / wg:.2f}x wall, {cs / cg:.2f}x CPU")


if __name__ == "__main__":
    main()
