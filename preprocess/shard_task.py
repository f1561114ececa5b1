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

from preprocess.config import PreprocessConfig
from preprocess.datasets import Listing, VideoItem
from preprocess.decode import DecodedVideo, DecodeError, decode_frame_folder, decode_video
from preprocess.isolate import DecodeRequest, InfrastructureError, shared_worker
from preprocess.shard_record import ShardRecord, ShardResult, SourceStamp, VideoRecord
from shards import storage, strict_json
from shards.format import FORMAT_VERSION, TarSampleWriter
from shards.index import IndexEntry, index_path_for, make_index

# Sources up to this size are also compared by content (sha256) on a rerun; larger ones by size and mtime.
HASH_LIMIT = 4 << 20
# Stored frames per video at most, unless --max-frames says otherwise.
DEFAULT_MAX_FRAMES = PreprocessConfig.max_frames


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
                timeout_s: float = PreprocessConfig.timeout_s, max_frames: int = DEFAULT_MAX_FRAMES) -> list[ShardTask]:
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


def decode_source(path: str, *, kind: str, short_side: int | None, quality: int, stride: int, decoder: str,
                  native_fps: float | None = None, timeout_s: float = 600.0) -> DecodedVideo:
    """Decode one source video (``kind="video"``) or frame folder (``kind="frames"``) exactly as a shard task
    does: the same decoder, rotation, short side, temporal stride and JPEG round trip at ``quality``.

    ``e3d predict`` calls this on new videos so that they reach a model the way the training shards did.
    Raises ``DecodeError`` with the reason.
    """
    if kind == "frames":
        return decode_frame_folder(path, short_side=short_side, quality=quality, stride=stride,
                                   fps=native_fps or 12.0)
    if kind != "video":
        raise ValueError(f"kind must be 'video' or 'frames', got {kind!r}")
    return decode_video(path, short_side=short_side, quality=quality, stride=stride, backend=decoder,
                        timeout_s=timeout_s)


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


def source_stamp(path: str, *, with_hash: bool = True, limit: int | None = None) -> SourceStamp | None:
    """What identifies a source's content: its size (bytes) and mtime (nanoseconds) plus its SHA-256
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
    if not (with_hash and size <= (HASH_LIMIT if limit is None else limit)):
        return SourceStamp(size, mtime)
    h = hashlib.sha256()
    for name, f in zip(names, files, strict=True):
        h.update(name.encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(fh.read())
    return SourceStamp(size, mtime, h.hexdigest())


def source_changed(task: ShardTask, video: VideoRecord) -> bool:
    """True when a recorded video's source differs from what its stamp says: another size; for a small
    source another content (a copy with new mtimes but the same bytes is unchanged); for a large one
    another mtime. Records written before stamps existed count as unchanged."""
    old = video.source_stamp
    if old is None:
        return False
    path = os.path.join(task.src_root, video.source)
    new = source_stamp(path, with_hash=False)
    if new is None or new.size != old.size:
        return True
    if old.sha256 is not None:
        hashed = source_stamp(path)
        return hashed is None or hashed.sha256 != old.sha256
    return new.mtime_ns != old.mtime_ns


def read_record(task: ShardTask) -> ShardRecord | None:
    """The task's record if its shard is complete, was built from the same plan and none of its sources
    changed since (:func:`source_changed`), else None. A record file that does not parse (truncated,
    edited, another version:
    :class:`~preprocess.shard_record.RecordError`) counts as absent, so the shard is rebuilt."""
    fs, base = storage.resolve(task.out_root)
    rpath = storage.join(base, task.record_path)
    if not storage.exists(fs, rpath):
        return None
    try:
        rec = ShardRecord.from_dict(json.loads(storage.read_bytes(fs, rpath)), task.record_path)
    except (ValueError, OSError):  # RecordError is a ValueError, as is bad JSON or UTF-8
        return None
    if rec.plan_hash != task.plan_hash():
        return None
    if (rec.shard_set, rec.index) != (task.shard_set, task.index) or rec.shard not in (None, task.shard_path):
        return None  # a record of another shard copied here: not this task's
    if rec.shard is not None and storage.size(fs, storage.join(base, rec.shard)) != rec.bytes:
        return None
    if any(source_changed(task, v) for v in rec.videos):
        return None
    return rec


def process_shard(task: ShardTask) -> ShardResult:
    """Build one shard (or return the record of an identical finished one).

    Returns the task's :class:`ShardResult`: its record holds per-video rows (status ``ok`` or ``failed``
    with a reason), and the shard's path, sample and frame counts, bytes and sha256. Per-video errors never
    raise (a video that hangs, crashes or exhausts memory in its decode process is recorded ``failed`` with
    the reason); errors of the machine (the output or the spool not writable, disk full) raise
    :class:`InfrastructureError`.
    """
    done = read_record(task)
    if done is not None:
        return ShardResult(done, skipped=True)
    t0, c0, w0 = time.monotonic(), _cpu_seconds(), shared_worker().cpu_s
    fs, base = storage.resolve(task.out_root)
    try:
        with tempfile.TemporaryDirectory(prefix="e3d-spool-") as spool_dir:
            record = _build(task, fs, base, spool_dir)
    except OSError as exc:
        # Writing the shard (or the local spool) failed: the machine's fault, not the videos'.
        raise InfrastructureError(f"{task.shard_path}: {type(exc).__name__}: {exc}") from exc
    try:
        storage.write_bytes_atomic(fs, storage.join(base, task.record_path),
                                   strict_json.dumps(record.to_dict(), sort_keys=True, indent=1).encode())
    except OSError as exc:
        raise InfrastructureError(f"{task.record_path}: {type(exc).__name__}: {exc}") from exc
    cpu_s = _cpu_seconds() - c0 + shared_worker().cpu_s - w0
    return ShardResult(record, skipped=False, cpu_s=cpu_s, wall_s=time.monotonic() - t0)


def video_record(task: ShardTask, item: VideoItem, status: str, reason: str, stamp: SourceStamp | None = None,
                 **counts: Any) -> VideoRecord:
    """The row of ``item`` in ``task``'s record; ``counts`` (``num_frames``, ``source_frames``, ``fps``,
    ``width``, ``height``) are 0 unless given, as for a video that produced no sample."""
    return VideoRecord(source=item.source, key=item.key, label=item.label, label_index=item.label_index,
                       splits=tuple(item.splits), status=status, reason=reason, stride=task.stride,
                       source_stamp=stamp, **{"num_frames": 0, "source_frames": 0, "fps": 0.0, "width": 0,
                                              "height": 0, **counts})


def failed_record(task: ShardTask, reason: str) -> ShardRecord:
    """The in-memory record of a task that failed as a whole (never written): every video ``failed``."""
    return ShardRecord(shard_set=task.shard_set, index=task.index, shard=None, samples=0, frames=0,
                       decoded_frames=0, bytes=0, sha256=None,
                       videos=tuple(video_record(task, i, "failed", reason) for i in task.items))


def _build(task: ShardTask, fs, base: str, spool_dir: str) -> ShardRecord:
    """Decode the task's videos one by one into the shard tar; each video's frames are streamed from its
    spool file, so memory does not grow with video length or shard size."""
    videos: list[VideoRecord] = []
    samples = frames = decoded = 0
    shard_rel = task.shard_path
    spool = os.path.join(spool_dir, "frames.jpgs")
    entries: list[IndexEntry] = []
    with storage.atomic_output(fs, storage.join(base, shard_rel)) as out:
        writer = TarSampleWriter(out)
        for item in sorted(task.items, key=_item_hash):
            # Taken before decoding: a source that changes during or after it is re-decoded by the next run.
            stamp = source_stamp(os.path.join(task.src_root, item.source))
            try:
                v = _decode(task, item, spool)
            except DecodeError as exc:
                videos.append(video_record(task, item, "failed", str(exc), stamp))
                continue
            offsets = _offsets(v.frame_sizes)
            meta = _metadata(task, item, v, offsets)
            with open(spool, "rb") as f:
                writer.write_stream(item.key, item.label_index, meta, f, offsets[-1])
            ranges = writer.layout[-1][1]
            entries.append(IndexEntry(item.key, item.label_index, v.num_stored, task.stride, v.width, v.height,
                                      ranges["json"], ranges["cls"], ranges["jpgs"], offsets))
            samples += 1
            frames += v.num_stored
            decoded += v.source_frames
            videos.append(video_record(task, item, "ok", "; ".join(v.warnings), stamp, num_frames=v.num_stored,
                                       source_frames=v.source_frames, fps=meta["fps"], width=v.width,
                                       height=v.height))
        writer.close()
    common = dict(shard_set=task.shard_set, index=task.index, frames=frames, decoded_frames=decoded,
                  videos=tuple(videos), plan_hash=task.plan_hash())
    if samples == 0:
        # Nothing decodable: leave no empty tar behind (readers would have to special-case it).
        fs.delete_file(storage.join(base, shard_rel))
        return ShardRecord(shard=None, samples=0, bytes=0, sha256=None, **common)
    nbytes, digest = out.nbytes, out.sha256.hexdigest()
    # The shard's index (shards/index.py), written before the record so a finished record implies it.
    index_rel = index_path_for(shard_rel)
    index_sha = storage.write_bytes_atomic(fs, storage.join(base, index_rel),
                                           make_index(entries, nbytes, digest).to_bytes())
    return ShardRecord(shard=shard_rel, samples=samples, bytes=nbytes, sha256=digest, index_path=index_rel,
                       index_sha256=index_sha, **common)
