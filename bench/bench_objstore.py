"""Object-store benchmark: the training loader reading from S3 with latency, against local disk, one run.

Run on demand (not part of the tests)::

    .venv/bin/python bench/bench_objstore.py [--videos 256] [--epochs 2] [--workers 2] [--reps 3]

Data is generated here: ``--videos`` Kinetics-like videos of 300 frames (8 distinct ones, repeated),
170x128 JPEG q90 4:2:0 of a moving noisy texture (~7.7 KB per frame, the frames of ``bench_loader.py``), in 4
shards with their indexes and manifests, written to a local directory and uploaded to the project's S3 test
server (moto's server on loopback). The server runs in a child process behind ``tests/s3proxy.py``, which adds
a first-byte latency to every request (0, 20 and 50 ms) and caps the bandwidth of everything sent back
(``--bandwidth``, bytes/s, shared by all connections like a NIC). moto copies a whole object for every ranged
GET (~40 ms for a 150 MB shard, a cost no real store has); the server runs with ``--fast-ranges``, which keeps
each object's bytes once in memory so that a ranged GET costs what its range costs.

Every variant trains the same way: ``ClipLoader`` over ``ClipStream`` (kinetics600, train: random 16-frame
clip, multi-scale crop to 112 px, flip), batches of 16, ``--workers`` DataLoader workers, ``--epochs`` epochs;
the figure is wall-clock clips/s (the point is waiting), variants interleaved round-robin, median over
``--reps``. Bytes fetched are counted by the proxy (HTTP headers included) and divided by the bytes of the
frames the clips use (16 × the mean frame size). Loader CPU is this process plus its finished children (the
DataLoader workers); the S3 server's (moto and the proxy: one child process, so one GIL) is counted apart, from
``/proc``: on a 2-vCPU machine the two share the cores, and a store that needs as much CPU per request as the
loader needs per clip caps the throughput whatever the latency. Epochs of ``--videos 256`` last ~0.5 s at local
speed, so per-epoch start-up (DataLoader workers, S3 clients) weighs on every ratio; ``--videos 1024`` measures
the steady state.

* local     — shards on the local disk (warm page cache): the baseline of every ratio;
* s3 ranged — with the index: one ranged read per clip, ``--threads`` requests in flight per worker;
* s3 stream — the loader without index: each shard streamed from the store (``sequential_io``), the old path;
* s3 cache  — with ``cache_dir``, warm: one epoch started the fills, then they were completed.
"""

from __future__ import annotations

import argparse
import dataclasses
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.fs as pafs  # noqa: E402
from bench_loader import H, W, make_frames  # noqa: E402

from shards import manifest as mf  # noqa: E402
from shards import storage  # noqa: E402
from shards.format import TarSampleWriter, pack_frames  # noqa: E402
from shards.index import IndexEntry, index_path_for, make_index  # noqa: E402
from tests.s3proxy import ProxyControl  # noqa: E402

CLIP_LEN, SIZE, BATCH = 16, 112, 16
BUCKET = "e3d-bench"


# -- data -------------------------------------------------------------------------------------------------

_FRAMES: dict[tuple[int, int], list[bytes]] = {}


def _frames(n: int, seed: int) -> list[bytes]:
    # 8 distinct videos' frames reused: the bytes a loader reads and decodes are as real, generation is 8x faster.
    if (n, seed) not in _FRAMES:
        _FRAMES[n, seed] = make_frames(n, seed)
    return _FRAMES[n, seed]


def write_dataset(root: Path, n_videos: int, n_frames: int, n_shards: int) -> float:
    """A preprocessed-dataset layout (shards, indexes, manifests, dataset.json); returns the mean frame bytes."""
    (root / "shards" / "train").mkdir(parents=True)
    rows, videos, frame_bytes = [], [], []
    for s in range(n_shards):
        rel = f"shards/train/shard-{s:06d}.tar"
        entries = []
        with storage.atomic_output(pafs.LocalFileSystem(), str(root / rel)) as out:
            w = TarSampleWriter(out)
            for v in range(s, n_videos, n_shards):
                key = f"v{v:04d}"
                frames = _frames(n_frames, v % 8)
                frame_bytes.extend(len(f) for f in frames)
                blob, offsets = pack_frames(frames)
                meta = {"format_version": 1, "dataset": "kinetics600", "key": key, "source": f"{key}.mp4",
                        "label": f"c{v % 600}", "label_index": v % 600, "splits": ["train"],
                        "num_frames": n_frames, "source_frames": n_frames, "stride": 1, "fps": 30.0,
                        "source_fps": 30.0, "vfr": False, "pts_ms": [round(i * 1000 / 30) for i in range(n_frames)],
                        "width": W, "height": H, "source_width": 340, "source_height": 256, "rotation": 0,
                        "codec": "h264", "offsets": offsets}
                w.write(key, v % 600, meta, blob)
                r = w.layout[-1][1]
                entries.append(IndexEntry(key, v % 600, n_frames, 1, W, H, r["json"], r["cls"], r["jpgs"], offsets))
                videos.append(mf.VideoRow(key=key, source=f"{key}.mp4", label=f"c{v % 600}", label_index=v % 600,
                                          split="train", shard_set="train", status="ok", num_frames=n_frames,
                                          stride=1, fps=30.0, width=W, height=H, shard=rel))
            w.close()
        irel = index_path_for(rel)
        isha = storage.write_bytes_atomic(pafs.LocalFileSystem(), str(root / irel),
                                          make_index(entries, out.nbytes, out.sha256.hexdigest()).to_bytes())
        rows.append(mf.ShardRow(rel, "train", len(entries), n_frames * len(entries), out.nbytes,
                                out.sha256.hexdigest(), irel, isha))
    mf.write_split(str(root), "train", mf.Manifest(videos=videos, shards=rows))
    (root / "dataset.json").write_text('{"dataset": "kinetics600", "classes": [], "splits": {"train": ["train"]}}')
    return statistics.fmean(frame_bytes)


def upload(root: Path, endpoint: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")
    pafs.copy_files(str(root), f"{BUCKET}/root", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return f"s3://{BUCKET}/root"


# -- loaders ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    remote: bool
    latency: float = 0.0
    ranged: bool = True
    cache: bool = False


def make_loader(root: str, v: Variant, args, cache_dir: str | None):
    """The training loader for a variant (the same config everywhere but where the bytes come from)."""
    from training.data import ClipLoader, ClipStream, LoaderConfig, shard_specs

    specs = shard_specs(root, "train")
    extra = {}
    if v.remote and v.ranged:
        extra = {"io_threads": args.threads, "use_index": True, "cache_dir": cache_dir}
    elif v.remote:  # today's path: every shard streamed, unverified
        extra = {"sequential_io": True, "use_index": False, "verify_shards": False}
    cfg = LoaderConfig.for_dataset("kinetics600", "train", clip_len=CLIP_LEN, size=SIZE, batch_size=BATCH,
                                   num_workers=args.workers, shuffle_buffer=64, seed=1, **extra)
    return ClipLoader(ClipStream(specs, cfg))


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the DataLoader workers of past epochs; the
    S3 server process runs to the end, so it is not counted)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds a process has used so far (Linux /proc; the S3 server and proxy child)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_epochs(loader, epochs: int) -> tuple[int, float]:
    clips = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            clips += len(batch["clips"])
    return clips, time.perf_counter() - t0


# -- main -------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=256)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16, help="ranged requests in flight per DataLoader worker")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bandwidth", type=float, default=200e6, help="bytes/s for everything the store sends")
    ap.add_argument("--latencies", default="0,0.02,0.05",
                    help="first-byte latencies in seconds (0: the proxy and server without added latency)")
    ap.add_argument("--only", help="comma-separated name prefixes of the variants to run (local always runs)")
    ap.add_argument("--workdir")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="e3d-bench-objstore-"))
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)
    t = time.perf_counter()
    frame_bytes = write_dataset(root, args.videos, args.frames, args.shards)
    print(f"data: {args.videos} videos x {args.frames} frames, mean frame {frame_bytes / 1e3:.2f} KB, "
          f"written in {time.perf_counter() - t:.0f} s")

    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "tests" / "s3proxy.py"),
                               "--fast-ranges"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        direct, proxied, control_port = server.stdout.readline().split()
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        os.environ.update(env)
        uri = upload(root, direct)
        os.environ["AWS_ENDPOINT_URL"] = proxied  # every loader (and its workers) reads through the proxy
        control = ProxyControl(int(control_port))
        control.set("bandwidth", args.bandwidth)
        lat = [float(x) for x in args.latencies.split(",")]
        variants = [Variant("local", False)]
        variants += [Variant(f"s3 ranged {round(x * 1000)} ms", True, x) for x in lat]
        stream_lat = next((x for x in lat if x > 0), lat[0])
        variants += [Variant(f"s3 stream {round(stream_lat * 1000)} ms", True, stream_lat, ranged=False)]
        variants += [Variant(f"s3 cache (warm) {round(lat[-1] * 1000)} ms", True, lat[-1], cache=True)]
        if args.only:
            keep = tuple(x.strip() for x in args.only.split(","))
            variants = [v for v in variants if v.name == "local" or v.name.startswith(keep)]
        cache_dir = str(work / "cache")
        shutil.rmtree(cache_dir, ignore_errors=True)
        rates: dict[str, list[float]] = {v.name: [] for v in variants}
        per_clip: dict[str, list[float]] = {v.name: [] for v in variants}
        cpu: dict[str, list[float]] = {v.name: [] for v in variants}
        server_cpu: dict[str, list[float]] = {v.name: [] for v in variants}
        for v in variants:
            if v.cache:  # one epoch starts filling the cache while it trains; the fills are then completed
                control.set("latency", v.latency)
                run_epochs(make_loader(uri, v, args, cache_dir), 1)
                from shards.cache import ShardCache
                from training.data import shard_specs

                cache = ShardCache(cache_dir, max_bytes=int(100e9))
                for spec in shard_specs(uri, "train"):
                    cache.fill(spec.url, spec.sha256, spec.bytes)
                print(f"cache: {cache.stats().entries} shards, {cache.stats().bytes / 1e6:.0f} MB")
        for rep in range(args.reps):
            for v in variants:
                control.set("latency", v.latency)
                loader = make_loader(uri if v.remote else str(root), v, args, cache_dir if v.cache else None)
                control.reset()
                c0, s0 = _cpu(), _proc_cpu(server.pid)
                clips, wall = run_epochs(loader, args.epochs)
                cpu_ms = (_cpu() - c0) / clips * 1e3
                server_cpu[v.name].append((_proc_cpu(server.pid) - s0) / clips * 1e3)
                _, nbytes = control.stats()
                rates[v.name].append(clips / wall)
                per_clip[v.name].append(nbytes / clips)
                cpu[v.name].append(cpu_ms)
                print(f"  rep {rep} {v.name:24s} {clips / wall:7.1f} clips/s  {nbytes / clips / 1e3:8.1f} KB/clip  "
                      f"{cpu_ms:5.2f} loader CPU ms/clip  {server_cpu[v.name][-1]:5.2f} server CPU ms/clip")
        control.close()
    finally:
        server.stdin.close()
        server.wait(timeout=30)

    clip_bytes = CLIP_LEN * frame_bytes
    base = statistics.median(rates["local"])
    print(f"\nclip frame bytes: {clip_bytes / 1e3:.1f} KB (16 x {frame_bytes / 1e3:.2f} KB); bandwidth cap "
          f"{args.bandwidth / 1e6:.0f} MB/s; {args.workers} workers, {args.threads} threads each\n")
    print("| variant | clips/s | vs local disk | bytes fetched per clip / clip frame bytes | loader CPU ms/clip "
          "| S3 server + proxy CPU ms/clip |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        r = statistics.median(rates[v.name])
        ratio = statistics.median(per_clip[v.name]) / clip_bytes if v.remote else float("nan")
        print(f"| {v.name} | {r:.1f} | {r / base:.2f} | {'—' if not v.remote else f'{ratio:.2f}'} | "
              f"{statistics.median(cpu[v.name]):.2f} | {statistics.median(server_cpu[v.name]):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
