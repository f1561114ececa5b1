"""Loader benchmark: our shard loader against an upstream-style frame-folder loader, as ratios from one run.

Run on demand (not part of the tests)::

    .venv/bin/python bench/bench_loader.py [--reps 5] [--clips 160] [--workdir DIR]

Data is generated here: Kinetics-like videos stored as 170x128 JPEG frames, quality 90, 4:2:0, of noisy
textured content (~7-8 KB per frame, like real frames at that size and quality), written once with
``shards.format.TarSampleWriter`` (one sample per video) and once as ``vNNNN/image_%05d.jpg`` folders.
Both sides read from a warm page cache.

Both loaders make training clips: a random 16-frame window, one multi-scale crop per clip (scales 1 …
1/2 of the short side, random position), resized to 112x112, flipped with p = 0.5, in batches of 16.

* ours       — ``ClipStream`` (train, kinetics600) in this process: tar walk + one ranged read per clip,
               simplejpeg decode of the 16 frames, crop → cv2 INTER_LINEAR resize, uint8 ``(3,16,112,112)``
               written straight into the batch tensor. Normalisation happens later on the GPU.
* upstream   — what the released code's data path costs per clip: 16 ``os.path.exists`` + ``open`` +
               PIL decode + ``convert('RGB')``, flip, crop, PIL bilinear resize, ``ToTensor`` (float
               0–255) and per-channel mean subtraction on the CPU, ``torch.stack``; ``default_collate``.
* upstream, no normalise — the same without the mean subtraction (tensor conversion only).

Every single-core figure is CPU time of this process (``time.process_time``), one thread for torch and
OpenCV, so waiting for a busy CPU does not count; variants are interleaved round-robin and the median over
repetitions is kept. The multi-worker run counts the CPU of the DataLoader workers and the main process
(IPC and unpickling included) to estimate the cores needed to feed a GPU.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.format import TarSampleWriter, encode_jpeg_rgb, pack_frames  # noqa: E402
from training.data import ClipLoader, ClipStream, LoaderConfig, ShardSpec  # noqa: E402
from training.data.config import MULTISCALE  # noqa: E402

H, W, QUALITY = 128, 170, 90
CLIP_LEN, SIZE, BATCH = 16, 112, 16
MEAN = (114.7748, 107.7354, 99.4750)


# -- data -------------------------------------------------------------------------------------------------

def make_frames(n: int, seed: int) -> list[bytes]:
    """``n`` JPEG frames of a moving texture with per-frame noise (what a noisy real video looks like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : H + 64, 0 : W + 64].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    base = np.stack([127 + 60 * np.sin(xx / 7 + p) + 40 * np.cos(yy / 11 - p) + 30 * np.sin((xx + yy) / 5 + p)
                     for p in phase], axis=-1)
    out = []
    for t in range(n):
        dy, dx = t % 64, (2 * t) % 64
        f = base[dy : dy + H, dx : dx + W] + rng.normal(0, 6, (H, W, 3))
        out.append(encode_jpeg_rgb(np.clip(f, 0, 255).astype(np.uint8), QUALITY))
    return out


def write_dataset(root: Path, n_videos: int, n_frames: int, n_shards: int) -> tuple[list[ShardSpec], list]:
    """Shards and frame folders holding the same videos; returns shard specs and (folder, n) pairs."""
    (root / "frames").mkdir(parents=True)
    per_shard = [list(range(s, n_videos, n_shards)) for s in range(n_shards)]
    specs, folders = [], []
    for s, vids in enumerate(per_shard):
        path = root / f"shard-{s:06d}.tar"
        with open(path, "wb") as f:
            w = TarSampleWriter(f)
            for v in vids:
                key = f"v{v:04d}"
                frames = make_frames(n_frames, seed=v)
                blob, offsets = pack_frames(frames)
                meta = {"format_version": 1, "dataset": "kinetics600", "key": key, "source": f"{key}.mp4",
                        "label": "x", "label_index": v % 600, "splits": ["train"], "num_frames": n_frames,
                        "source_frames": n_frames, "stride": 1, "fps": 30.0, "source_fps": 30.0, "vfr": False,
                        "pts_ms": [round(i * 1000 / 30) for i in range(n_frames)], "width": W, "height": H,
                        "source_width": 340, "source_height": 256, "rotation": 0, "codec": "h264",
                        "offsets": offsets}
                w.write(key, v % 600, meta, blob)
                d = root / "frames" / key
                d.mkdir()
                for i, jpg in enumerate(frames):
                    (d / f"image_{i + 1:05d}.jpg").write_bytes(jpg)
                folders.append((str(d), n_frames))
            w.close()
        specs.append(ShardSpec(str(path), len(vids)))
    return specs, folders


def read_all(root: Path) -> None:
    """Warm the page cache for both layouts."""
    for p in root.rglob("*"):
        if p.is_file():
            p.read_bytes()


# -- the upstream-style loader (own code, mirroring what the released data path does per clip) -------------

class UpstreamStyleLoader:
    """Frame folders → float clips the way the released code's Dataset + transforms compute them."""

    def __init__(self, folders: list[tuple[str, int]], seed: int, normalise: bool = True):
        self.folders = folders
        self.rng = random.Random(seed)
        self.normalise = normalise

    def _indices(self, n: int) -> list[int]:
        # TemporalRandomCrop of the released code (1-based frame numbers, loop padded).
        begin = self.rng.randint(0, max(0, n - CLIP_LEN - 1))
        out = list(range(begin + 1, min(begin + CLIP_LEN, n) + 1))
        for i in out:
            if len(out) >= CLIP_LEN:
                break
            out.append(i)
        return out

    def clip(self, folder: str, n: int) -> torch.Tensor:
        from PIL import Image

        frames = []
        for i in self._indices(n):
            path = os.path.join(folder, f"image_{i:05d}.jpg")
            if not os.path.exists(path):
                break
            with open(path, "rb") as f, Image.open(f) as img:
                frames.append(img.convert("RGB"))
        # One random draw per clip, applied to every frame (RandomHorizontalFlip + MultiScaleRandomCrop).
        flip = self.rng.random() < 0.5
        scale = MULTISCALE[self.rng.randrange(len(MULTISCALE))]
        tl_x, tl_y = self.rng.random(), self.rng.random()
        out = []
        for img in frames:
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            w, h = img.size
            side = int(min(w, h) * scale)
            x1, y1 = tl_x * (w - side), tl_y * (h - side)
            img = img.crop((x1, y1, x1 + side, y1 + side)).resize((SIZE, SIZE), Image.BILINEAR)
            t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(SIZE, SIZE, 3)
            t = t.transpose(0, 1).transpose(0, 2).contiguous().float().div(1)  # ToTensor(norm_value=1)
            if self.normalise:
                for c, m in zip(t, MEAN, strict=True):  # Normalize(mean, [1, 1, 1])
                    c.sub_(m).div_(1)
            out.append(t)
        return torch.stack(out, 0).permute(1, 0, 2, 3)

    def batches(self, n_clips: int):
        order = list(range(len(self.folders)))
        made = 0
        while made < n_clips:
            self.rng.shuffle(order)
            for i in range(0, len(order), BATCH):
                chunk = order[i : i + BATCH][: n_clips - made]
                if not chunk:
                    break
                yield torch.utils.data.default_collate([self.clip(*self.folders[j]) for j in chunk])
                made += len(chunk)
                if made >= n_clips:
                    return


# -- measurements -------------------------------------------------------------------------------------------

def ours_batches(specs, n_clips: int, epoch: int, **cfg_kw):
    cfg = LoaderConfig("kinetics600", batch_size=BATCH, shuffle_buffer=64, seed=0, drop_last=False, **cfg_kw)
    ds = ClipStream(specs, cfg)
    made = 0
    while made < n_clips:
        ds.set_epoch(epoch)
        epoch += 1
        for b in ds:
            made += len(b["keys"])
            yield b
            if made >= n_clips:
                return


def cpu_ms_per_clip(batches) -> float:
    t0 = time.process_time()
    n = sum(len(b["keys"]) if isinstance(b, dict) else b.shape[0] for b in batches)
    return (time.process_time() - t0) * 1000 / n


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def loader_epoch(specs, workers: int) -> tuple[float, int, float]:
    """One epoch through a ClipLoader: (CPU seconds of main process + workers, clips, wall seconds)."""
    cfg = LoaderConfig("kinetics600", batch_size=BATCH, shuffle_buffer=64, num_workers=workers, seed=0,
                       drop_last=False)
    loader = ClipLoader(ClipStream(specs, cfg))
    c0, s0, t0 = children_cpu(), time.process_time(), time.perf_counter()
    made = sum(len(b["keys"]) for b in loader)  # the workers have been joined when this returns
    wall = time.perf_counter() - t0
    return (time.process_time() - s0) + (children_cpu() - c0), made, wall


def multi_worker(specs, workers: int, reps: int) -> tuple[float, float, float]:
    """Steady-state CPU ms per clip over all processes (IPC included), fixed CPU ms per epoch (worker
    start and stop), and wall clips/s, from epochs over half and over all of ``specs``.

    Worker start-up is paid once per epoch; real epochs are long, so the per-clip figure is the slope
    between a short and a long epoch.
    """
    half = specs[: len(specs) // 2]
    small, big = [], []
    for _ in range(reps):
        small.append(loader_epoch(half, workers))
        big.append(loader_epoch(specs, workers))
    cpu_s = statistics.median(c for c, _, _ in small)
    cpu_b = statistics.median(c for c, _, _ in big)
    n_s, n_b = small[0][1], big[0][1]
    per_clip = (cpu_b - cpu_s) / (n_b - n_s)
    fixed = cpu_b - per_clip * n_b
    rate = n_b / statistics.median(w for _, _, w in big)
    return per_clip * 1000, fixed * 1000, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--clips", type=int, default=160, help="clips per variant per repetition")
    ap.add_argument("--videos", type=int, default=48, help="300-frame videos (and 10x as many 30-frame ones)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the multi-worker run")
    ap.add_argument("--gpu-rate", type=float, default=2000.0, help="clips/s the GPU consumes")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        t = time.perf_counter()
        long_specs, long_folders = write_dataset(root / "v300", args.videos, 300, 4)
        short_specs, _ = write_dataset(root / "v30", args.videos * 10, 30, 4)
        read_all(root)
        frame_bytes = os.path.getsize(Path(long_folders[0][0]) / "image_00001.jpg")
        print(f"data: {args.videos} x 300 frames and {args.videos * 10} x 30 frames, {W}x{H} q{QUALITY} "
              f"(~{frame_bytes / 1000:.1f} KB/frame), made in {time.perf_counter() - t:.1f} s under {root}")

        variants = {
            "ours (300-frame videos)": lambda r: ours_batches(long_specs, args.clips, r),
            "ours (30-frame videos)": lambda r: ours_batches(short_specs, args.clips, r),
            "ours, fast_decode": lambda r: ours_batches(long_specs, args.clips, r, fast_decode=True),
            "upstream": lambda r: UpstreamStyleLoader(long_folders, r).batches(args.clips),
            "upstream, no normalise": lambda r: UpstreamStyleLoader(long_folders, r, False).batches(args.clips),
        }
        for fn in variants.values():  # warm-up (imports, buffers)
            cpu_ms_per_clip(fn(99))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.reps):
            for name, fn in variants.items():
                times[name].append(cpu_ms_per_clip(fn(r)))
        med = {k: statistics.median(v) for k, v in times.items()}

        print(f"\nsingle core, CPU ms per 3x16x112x112 clip (median of {args.reps} reps x {args.clips} clips):")
        for name, ms in med.items():
            print(f"  {name:26s} {ms:6.2f} ms   {1000 / ms:6.0f} clips/CPU-s   "
                  f"(reps {', '.join(f'{x:.2f}' for x in times[name])})")
        ours = med["ours (300-frame videos)"]
        # Ratio within each repetition (the variants ran back to back), then the median: robust to load
        # that drifts over the run on a shared machine.
        per_rep = [u / o for u, o in zip(times["upstream"], times["ours (300-frame videos)"], strict=True)]
        print("\nratios (same run):")
        print(f"  clips/s per core, ours vs upstream, per repetition: {', '.join(f'{r:.2f}' for r in per_rep)}"
              f" (median {statistics.median(per_rep):.2f}x)")
        print(f"  clips/s per core, ours vs upstream:               {med['upstream'] / ours:5.2f}x  (target >= 3.5x)")
        print(f"  clips/s per core, ours vs upstream w/o normalise: {med['upstream, no normalise'] / ours:5.2f}x")
        print(f"  same, ours with fast_decode vs upstream:          {med['upstream'] / med['ours, fast_decode']:5.2f}x")
        print(f"  clip cost, 300-frame vs 30-frame videos:          "
              f"{ours / med['ours (30-frame videos)']:5.2f}x  (target <= 1.2x)")

        cpu_ms, fixed_ms, wall_rate = multi_worker(short_specs, args.workers, args.reps)
        cores_single = args.gpu_rate * ours / 1000
        cores_multi = args.gpu_rate * cpu_ms / 1000
        print(f"\nClipLoader with {args.workers} DataLoader workers (30-frame set, {len(short_specs)} shards): "
              f"{cpu_ms:.2f} CPU ms per clip over all processes (IPC and unpickling included), "
              f"plus {fixed_ms:.0f} CPU ms per epoch for starting and stopping workers; "
              f"{wall_rate:.0f} clips/s wall on {os.cpu_count()} cores")
        print(f"cores to feed a GPU at {args.gpu_rate:.0f} clips/s (e.g. ShuffleNetV2 1.0x training): "
              f"{cores_multi:.1f} (from the DataLoader CPU cost; {cores_single:.1f} from the single-core cost)")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
