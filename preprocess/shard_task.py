"""Plan shards and build one shard: the unit of work that runs as a Ray task (or directly in tests).

A shard task decodes a fixed, deterministic group of videos and writes ``shards/<set>/shard-NNNNNN.tar``
then ``records/<set>/shard-NNNNNN.json`` (both atomically, in that order). A rerun skips a task whose
record exists, matches the task's plan hash and whose tar has the recorded size, so finished work is
never redone and a task killed at any point is redone from scratch with identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from preprocess.datasets import Listing, VideoItem
from preprocess.decode import DecodedVideo, DecodeError
from preprocess.isolate import DecodeRequest, InfrastructureError, shared_worker
from shards import storage
from shards.format import FORMAT_VERSION, TarSampleWriter

# Sources up to this size are also compared by content (sha256) on a rerun; larger ones by size and mtime.
HASH_LIMIT = 4 << 20
# Stored frames per video at most, unless --max-frames says otherwise: 1 h at 30 stored frames/s.
DEFAULT_MAX_FRAMES = 108_000

RECORD_VERSION = 1


@dataclass(frozen=True)
class ShardTask:
    """Everything needed to build one shard; a pure value, cheap to send to a Ray worker."""

    dataset: str
    kind: str  # "video" or "frames"
    src_root: str
    out_root: str
    shard_set: str
    index: int
    items: tuple[VideoItem, ...]
    short_side: int | None
    quality: int
    stride: int
    decoder: str
    native_fps: float | None
    timeout_s: float
    max_frames: int = DEFAULT_MAX_FRAMES

    @property
    def shard_path(self) -> str:
        return f"shards/{self.shard_set}/shard-{self.index:06d}.tar"

    @property
    def record_path(self) -> str:
        return f"records/{self.shard_set}/shard-{self.index:06d}.json"

    def plan_hash(self) -> str:
        """Hash of everything that determines the shard's bytes (not where the source lives)."""
        d = asdict(self)
        for k in ("src_root", "out_root", "timeout_s"):
            d.pop(k)
        if d["max_frames"] == DEFAULT_MAX_FRAMES:
            d.pop("max_frames")  # records written before the cap existed stay valid
        d["format_version"] = FORMAT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()


def _item_hash(item: VideoItem) -> str:
    return hashlib.sha1(item.key.encode()).hexdigest()


def plan_shards(listing: Listing, *, src_root: str, out_root: str, shard_size: int, short_side: int | None,
                quality: int, stride: int, decoder: str, native_fps: float | None = None,
                timeout_s: float = 600.0, max_frames: int = DEFAULT_MAX_FRAMES) -> list[ShardTask]:
    """Split a listing into shard tasks, deterministically.

    Within each shard set, videos are ordered by the SHA-1 of their key (which mixes classes) and dealt
    round-robin into ``ceil(n / shard_size)`` shards, so shard sample counts differ by at most one.
    """
    by_set: dict[str, list[VideoItem]] = defaultdict(list)
    for item in listing.items:
        by_set[item.shard_set].append(item)
    tasks = []
    for shard_set in sorted(by_set):
        items = sorted(by_set[shard_set], key=_item_hash)
        n_shards = math.ceil(len(items) / shard_size)
        for i in range(n_shards):
            tasks.append(ShardTask(listing.dataset, listing.kind, src_root, out_root, shard_set, i,
                                   tuple(items[i::n_shards]), short_side, quality, stride, decoder, native_fps,
                                   timeout_s, max_frames))
    return tasks


def _cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _decode(task: ShardTask, item: VideoItem, spool: str) -> DecodedVideo:
    """Decode one video in the isolated decode process; its stored frames end up in ``spool``."""
    req = DecodeRequest(kind=task.kind, path=os.path.join(task.src_root, item.source), short_side=task.short_side,
                        quality=task.quality, stride=task.stride, backend=task.decoder, native_fps=task.native_fps,
                        timeout_s=task.timeout_s, max_frames=task.max_frames, spool=spool)
    return shared_worker().decode(req, task.timeout_s)


def _offsets(sizes: list[int]) -> list[int]:
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    return offsets


def _metadata(task: ShardTask, item: VideoItem, v: DecodedVideo, offsets: list[int]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "dataset": task.dataset,
        "key": item.key,
        "source": item.source,
        "label": item.label,
        "label_index": item.label_index,
        "splits": list(item.splits),
        "num_frames": v.num_stored,
        "source_frames": v.source_frames,
        "stride": task.stride,
        "fps": round(v.probe.fps / task.stride, 6),
        "source_fps": round(v.probe.fps, 6),
        "vfr": v.vfr,
        "pts_ms": v.pts_ms,
        "width": v.width,
        "height": v.height,
        "source_width": v.probe.width,
        "source_height": v.probe.height,
        "rotation": v.probe.rotation,
        "codec": v.probe.codec,
        "offsets": offsets,
    }


def source_stamp(path: str, *, with_hash: bool = True, limit: int | None = None) -> dict[str, Any] | None:
    """What identifies a source's content: ``{"size", "mtime_ns"}`` (bytes, nanoseconds) plus ``"sha256"``
    when ``with_hash`` and the size is at most ``limit`` bytes (default :data:`HASH_LIMIT`). A folder of
    frames counts as the sum of its files' sizes, its newest mtime, and a hash over its file names and
    contents. None when it is gone."""
    try:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
            stats = [os.stat(os.path.join(path, n)) for n in names]
            files = [os.path.join(path, n) for n in names]
            size, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
        else:
            st = os.stat(path)
            names, files, size, mtime = [""], [path], st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return None
    stamp: dict[str, Any] = {"size": size, "mtime_ns": mtime}
    if with_hash and size <= (HASH_LIMIT if limit is None else limit):
        h = hashlib.sha256()
        for name, f in zip(names, files, strict=True):
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(fh.read())
        stamp["sha256"] = h.hexdigest()
    return stamp


def source_changed(task: ShardTask, video: dict[str, Any]) -> bool:
    """True when a recorded video's source differs from what its stamp says: another size; for a small
    source another content (a copy with new mtimes but the same bytes is unchanged); for a large one
    another mtime. Records written before stamps existed count as unchanged."""
    old = video.get("source_stamp")
    if old is None:
        return False
    path = os.path.join(task.src_root, video["source"])
    new = source_stamp(path, with_hash=False)
    if new is None or new["size"] != old.get("size"):
        return True
    if "sha256" in old:
        return (source_stamp(path) or {}).get("sha256") != old["sha256"]
    return new["mtime_ns"] != old.get("mtime_ns")


def read_record(task: ShardTask) -> dict[str, Any] | None:
    """The task's record if its shard is complete, was built from the same plan and none of its sources
    changed since (:func:`source_changed`), else None."""
    fs, base = storage.resolve(task.out_root)
    rpath = storage.join(base, task.record_path)
    if not storage.exists(fs, rpath):
        return None
    try:
        rec = json.loads(storage.read_bytes(fs, rpath))
    except (ValueError, OSError):
        return None
    if rec.get("plan_hash") != task.plan_hash():
        return None
    if rec["shard"] is not None and storage.size(fs, storage.join(base, rec["shard"])) != rec["bytes"]:
        return None
    if any(source_changed(task, v) for v in rec.get("videos", [])):
        return None
    return rec


def process_shard(task: ShardTask) -> dict[str, Any]:
    """Build one shard (or return the record of an identical finished one).

    Returns the task record: per-video rows (status ``ok`` or ``failed`` with a reason), and the shard's
    path, sample and frame counts, bytes and sha256. Per-video errors never raise (a video that hangs,
    crashes or exhausts memory in its decode process is recorded ``failed`` with the reason); errors of the
    machine (the output or the spool not writable, disk full) raise :class:`InfrastructureError`.
    """
    done = read_record(task)
    if done is not None:
        return {**done, "skipped": True}
    t0, c0, w0 = time.monotonic(), _cpu_seconds(), shared_worker().cpu_s
    fs, base = storage.resolve(task.out_root)
    try:
        with tempfile.TemporaryDirectory(prefix="e3d-spool-") as spool_dir:
            videos, samples, frames, decoded, shard_rel, nbytes, digest = _build(task, fs, base, spool_dir)
    except OSError as exc:
        # Writing the shard (or the local spool) failed: the machine's fault, not the videos'.
        raise InfrastructureError(f"{task.shard_path}: {type(exc).__name__}: {exc}") from exc
    record = {
        "record_version": RECORD_VERSION,
        "plan_hash": task.plan_hash(),
        "shard_set": task.shard_set,
        "index": task.index,
        "shard": shard_rel,
        "samples": samples,
        "frames": frames,
        "decoded_frames": decoded,
        "bytes": nbytes,
        "sha256": digest,
        "videos": videos,
    }
    # Timings stay out of the record file so that reruns write identical bookkeeping.
    try:
        storage.write_bytes_atomic(fs, storage.join(base, task.record_path),
                                   json.dumps(record, sort_keys=True, indent=1).encode())
    except OSError as exc:
        raise InfrastructureError(f"{task.record_path}: {type(exc).__name__}: {exc}") from exc
    cpu_s = _cpu_seconds() - c0 + shared_worker().cpu_s - w0
    return {**record, "skipped": False, "cpu_s": cpu_s, "wall_s": time.monotonic() - t0}


def _build(task: ShardTask, fs, base: str, spool_dir: str):
    """Decode the task's videos one by one into the shard tar; each video's frames are streamed from its
    spool file, so memory does not grow with video length or shard size."""
    videos: list[dict[str, Any]] = []
    samples = frames = decoded = 0
    shard_rel = task.shard_path
    spool = os.path.join(spool_dir, "frames.jpgs")
    with storage.atomic_output(fs, storage.join(base, shard_rel)) as out:
        writer = TarSampleWriter(out)
        for item in sorted(task.items, key=_item_hash):
            row = {"source": item.source, "key": item.key, "label": item.label, "label_index": item.label_index,
                   "splits": list(item.splits), "status": "failed", "reason": "", "num_frames": 0,
                   "source_frames": 0, "stride": task.stride, "fps": 0.0, "width": 0, "height": 0}
            # Taken before decoding: a source that changes during or after it is re-decoded by the next run.
            row["source_stamp"] = source_stamp(os.path.join(task.src_root, item.source))
            try:
                v = _decode(task, item, spool)
            except DecodeError as exc:
                row["reason"] = str(exc)
            else:
                offsets = _offsets(v.frame_sizes)
                meta = _metadata(task, item, v, offsets)
                with open(spool, "rb") as f:
                    writer.write_stream(item.key, item.label_index, meta, f, offsets[-1])
                samples += 1
                frames += v.num_stored
                decoded += v.source_frames
                row.update(status="ok", reason="; ".join(v.warnings), num_frames=v.num_stored,
                           source_frames=v.source_frames, fps=meta["fps"], width=v.width, height=v.height)
            videos.append(row)
        writer.close()
    if samples == 0:
        # Nothing decodable: leave no empty tar behind (readers would have to special-case it).
        fs.delete_file(storage.join(base, shard_rel))
        return videos, samples, frames, decoded, None, 0, None
    return videos, samples, frames, decoded, shard_rel, out.nbytes, out.sha256.hexdigest()
