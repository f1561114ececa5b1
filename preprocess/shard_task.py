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
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from preprocess.datasets import Listing, VideoItem
from preprocess.decode import DecodedVideo, DecodeError, decode_frame_folder, decode_video
from shards import storage
from shards.format import FORMAT_VERSION, TarSampleWriter, pack_frames
from shards.index import IndexEntry, index_path_for, make_index

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
        d["format_version"] = FORMAT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()


def _item_hash(item: VideoItem) -> str:
    return hashlib.sha1(item.key.encode()).hexdigest()


def plan_shards(listing: Listing, *, src_root: str, out_root: str, shard_size: int, short_side: int | None,
                quality: int, stride: int, decoder: str, native_fps: float | None = None,
                timeout_s: float = 600.0) -> list[ShardTask]:
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
                                   timeout_s))
    return tasks


def _cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _decode(task: ShardTask, item: VideoItem) -> DecodedVideo:
    path = os.path.join(task.src_root, item.source)
    if task.kind == "frames":
        return decode_frame_folder(path, short_side=task.short_side, quality=task.quality, stride=task.stride,
                                   fps=task.native_fps or 12.0)
    return decode_video(path, short_side=task.short_side, quality=task.quality, stride=task.stride,
                        backend=task.decoder, timeout_s=task.timeout_s)


def _metadata(task: ShardTask, item: VideoItem, v: DecodedVideo, offsets: list[int]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "dataset": task.dataset,
        "key": item.key,
        "source": item.source,
        "label": item.label,
        "label_index": item.label_index,
        "splits": list(item.splits),
        "num_frames": len(v.jpegs),
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


def read_record(task: ShardTask) -> dict[str, Any] | None:
    """The task's record if its shard is complete and was built from the same plan, else None."""
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
    return rec


def process_shard(task: ShardTask) -> dict[str, Any]:
    """Build one shard (or return the record of an identical finished one).

    Returns the task record: per-video rows (status ``ok`` or ``failed`` with a reason), and the shard's
    path, sample and frame counts, bytes and sha256. Per-video errors never raise; only infrastructure
    errors (e.g. the output is not writable) do, so that Ray retries them.
    """
    done = read_record(task)
    if done is not None:
        return {**done, "skipped": True}
    t0, c0 = time.monotonic(), _cpu_seconds()
    fs, base = storage.resolve(task.out_root)
    videos: list[dict[str, Any]] = []
    samples = frames = decoded = 0
    shard_rel = task.shard_path
    entries: list[IndexEntry] = []
    with storage.atomic_output(fs, storage.join(base, shard_rel)) as out:
        writer = TarSampleWriter(out)
        for item in sorted(task.items, key=_item_hash):
            row = {"source": item.source, "key": item.key, "label": item.label, "label_index": item.label_index,
                   "splits": list(item.splits), "status": "failed", "reason": "", "num_frames": 0,
                   "source_frames": 0, "stride": task.stride, "fps": 0.0, "width": 0, "height": 0}
            try:
                v = _decode(task, item)
            except DecodeError as exc:
                row["reason"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one odd file must not take its shard down with it
                row["reason"] = f"unexpected decoder error: {type(exc).__name__}: {exc}"
            else:
                blob, offsets = pack_frames(v.jpegs)
                meta = _metadata(task, item, v, offsets)
                writer.write(item.key, item.label_index, meta, blob)
                ranges = writer.layout[-1][1]
                entries.append(IndexEntry(item.key, item.label_index, len(v.jpegs), task.stride, v.width, v.height,
                                          ranges["json"], ranges["cls"], ranges["jpgs"], offsets))
                samples += 1
                frames += len(v.jpegs)
                decoded += v.source_frames
                row.update(status="ok", reason="; ".join(v.warnings), num_frames=len(v.jpegs),
                           source_frames=v.source_frames, fps=meta["fps"], width=v.width, height=v.height)
            videos.append(row)
        writer.close()
    index_rel = index_sha = None
    if samples == 0:
        # Nothing decodable: leave no empty tar behind (readers would have to special-case it).
        fs.delete_file(storage.join(base, shard_rel))
        shard_rel, nbytes, digest = None, 0, None
    else:
        nbytes, digest = out.nbytes, out.sha256.hexdigest()
        # The shard's index (shards/index.py), written before the record so a finished record implies it.
        index_rel = index_path_for(shard_rel)
        index_sha = storage.write_bytes_atomic(fs, storage.join(base, index_rel),
                                               make_index(entries, nbytes, digest).to_bytes())
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
        "index_path": index_rel,
        "index_sha256": index_sha,
        "videos": videos,
    }
    # Timings stay out of the record file so that reruns write identical bookkeeping.
    storage.write_bytes_atomic(fs, storage.join(base, task.record_path),
                               json.dumps(record, sort_keys=True, indent=1).encode())
    return {**record, "skipped": False, "cpu_s": _cpu_seconds() - c0, "wall_s": time.monotonic() - t0}
