"""Preprocessing benchmark: our shard writer against ffmpeg's own extraction, as ratios from one run.

Run on demand (not part of the tests)::

    .venv/bin/python bench/bench_preprocess.py [--videos 6] [--reps 3] [--scaling-videos 16]

Inputs are Kinetics-like: 340x256 h264 (CRF 23) 30 fps 10 s testsrc2 with temporal noise, made here with
ffmpeg. Every single-core figure is frames per CPU-second (this process plus its children), so waiting for
a busy CPU is not counted; variants are interleaved round-robin and the median over repetitions is kept.

Variants (all at short side 128 unless named):

* ours (av)      — ``process_shard``: decode (PyAV, in the shard task's long-lived decode process), scale,
  JPEG encode, spool, tar, sha256, record
* ours (ffmpeg)  — the same with the ffmpeg-binary decoder (``--decoder ffmpeg``)
* ffmpeg null    — ``ffmpeg -threads 1 -i v -vf scale=-2:128 -c:v mjpeg -q:v 2 -f null -``
* classic 128    — ``ffmpeg -i v -vf scale=-2:128 -q:v 2 dir/image_%05d.jpg`` + counting frames per folder
* classic 240    — the same at ``scale=-1:240`` (the classic 3D-ResNets setting)

Then Ray scaling: wall time of the same shard tasks on an embedded Ray with 1 CPU vs 2 CPUs (workers are
warmed up first so that start-up imports are not timed).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.datasets import Listing, VideoItem  # noqa: E402
from preprocess.shard_task import plan_shards, process_shard  # noqa: E402


def cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children, and the long-lived decode process (which is not
    reaped between videos, so it reports its own CPU time per video)."""
    from preprocess.isolate import shared_worker

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + shared_worker().cpu_s


def make_videos(d: Path, n: int) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"k{i:03d}.mp4"
        if not p.exists():
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size=340x256:rate=30:duration=10,noise=alls=10:allf=t:all_seed={i}",
                            "-c:v", "libx264", "-crf", "23", "-g", "250", "-pix_fmt", "yuv420p", str(p)], check=True)
        out.append(p)
    return out


def listing_for(videos: list[Path], root: Path) -> Listing:
    items = tuple(VideoItem(v.relative_to(root).as_posix(), "x", 0, ("train",)) for v in videos)
    return Listing("kinetics600", "video", ("x",), ("train",), items, ())


def run_ours(videos, root: Path, work: Path, decoder: str) -> int:
    out = work / f"ours-{decoder}"
    shutil.rmtree(out, ignore_errors=True)
    tasks = plan_shards(listing_for(videos, root), src_root=str(root), out_root=str(out), shard_size=len(videos),
                        short_side=128, quality=90, stride=1, decoder=decoder)
    return sum(process_shard(t)["frames"] for t in tasks)


def ffmpeg_args(v: Path, scale: str) -> list[str]:
    return ["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(v), "-threads", "1", "-vf", scale,
            "-q:v", "2"]


def run_null(videos, root, work) -> int:
    for v in videos:
        subprocess.run([*ffmpeg_args(v, "scale=-2:128"), "-c:v", "mjpeg", "-f", "null", "-"], check=True)
    return 300 * len(videos)


def run_classic(videos, root, work, scale: str) -> int:
    base = work / "classic"
    shutil.rmtree(base, ignore_errors=True)
    n = 0
    for v in videos:
        d = base / v.stem
        d.mkdir(parents=True)
        subprocess.run([*ffmpeg_args(v, scale), str(d / "image_%05d.jpg")], check=True)
    for d in sorted(base.iterdir()):  # the classic n_frames step: count the JPEGs of every folder
        n += sum(1 for f in os.listdir(d) if f.endswith(".jpg"))
    return n


def measure(variants: dict, videos, root, work, reps: int) -> dict[str, float]:
    """Median frames per CPU-second of each variant, interleaved round-robin."""
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            c0 = cpu_seconds()
            frames = fn(videos, root, work)
            rates[name].append(frames / (cpu_seconds() - c0))
    return {k: statistics.median(v) for k, v in rates.items()}


def ray_scaling(videos, root, work) -> dict[int, float]:
    """Wall seconds for the same shard tasks with 1 and 2 Ray CPUs (after warming the workers)."""
    import ray

    from preprocess.ray_tasks import run_tasks_ray

    walls = {}
    for cpus in (1, 2):
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=150 << 20, _temp_dir="/tmp/e3dray",
                 log_to_driver=False)
        try:
            def tasks(tag, vids):
                return plan_shards(listing_for(vids, root), src_root=str(root), out_root=str(work / f"ray-{tag}"),
                                   shard_size=2, short_side=128, quality=90, stride=1, decoder="av")

            shutil.rmtree(work / "ray-warm", ignore_errors=True)
            list(run_tasks_ray(tasks("warm", videos[: 2 * cpus])))  # import av/numpy in every worker
            shutil.rmtree(work / f"ray-{cpus}", ignore_errors=True)
            t0 = time.perf_counter()
            results = list(run_tasks_ray(tasks(str(cpus), videos)))
            walls[cpus] = time.perf_counter() - t0
            assert all(not isinstance(r, BaseException) for _, r in results)
        finally:
            ray.shutdown()
    return walls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scaling-videos", type=int, default=16)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "e3d-bench-preprocess"))
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(args.workdir)
    root = work / "src"
    videos = make_videos(root, max(args.videos, args.scaling_videos))
    sample = videos[: args.videos]
    variants = {
        "ours (av)": lambda v, r, w: run_ours(v, r, w, "av"),
        "ours (ffmpeg)": lambda v, r, w: run_ours(v, r, w, "ffmpeg"),
        "ffmpeg null": run_null,
        "classic 128": lambda v, r, w: run_classic(v, r, w, "scale=-2:128"),
        "classic 240": lambda v, r, w: run_classic(v, r, w, "scale=-1:240"),
    }
    rates = measure(variants, sample, root, work, args.reps)
    print(f"{len(sample)} videos x 300 frames (340x256 h264, 10 s), {args.reps} reps, median frames per CPU-second")
    for name, r in rates.items():
        print(f"  {name:<15} {r:8.0f} f/CPU-s")
    ours = rates["ours (av)"]
    print("ratios (ours av / baseline; targets: null >= 0.9, classic 128 >= 1.2):")
    for base in ("ffmpeg null", "classic 128", "classic 240"):
        print(f"  vs {base:<13} {ours / rates[base]:.2f}x   (ours ffmpeg-binary decoder: "
              f"{rates['ours (ffmpeg)'] / rates[base]:.2f}x)")
    walls = ray_scaling(videos[: args.scaling_videos], root, work)
    print(f"Ray scaling over {args.scaling_videos} videos: 1 CPU {walls[1]:.2f} s, 2 CPUs {walls[2]:.2f} s, "
          f"speed-up {walls[1] / walls[2]:.2f}x (target >= 1.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
