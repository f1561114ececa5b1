"""The stages of one loader stream, over :class:`Sample` records, and the per-epoch context they share.

``read`` (tar walk, metadata check, only the clip's frame bytes) → :class:`Sample` → ``decode`` (needed frames
only, crop, resize, flip, written into a batch slot) → :class:`BatchBuilder`. Which samples are read, in which
order, and how a clip is placed is the mode's business (:mod:`training.data.modes`); everything a stage needs
for one stream of one epoch — config, epoch, plan, open file systems, decode buffers, corrupt budget — travels
in an :class:`EpochContext` built when the stream starts, so no state is kept on the dataset object.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from shards import storage
from shards.access import ShardAccess
from shards.format import check_jpeg_headers
from shards.index import IndexEntry, ShardIndex
from shards.ranged import Request
from shards.reader import RawSample, ShardFormatError, ShardReader, check_sample, open_shard
from training.data.config import LoaderConfig
from training.data.plan import EvalItem, Segment, ShardSpec, StreamPlan
from training.data.transforms import CropBox, crop_resize, decode_frames


class CorruptDataError(RuntimeError):
    """Too many corrupt samples in one stream of an epoch."""


class CorruptSampleWarning(UserWarning):
    """A corrupt sample was skipped (the message names shard and key)."""


@dataclass
class Sample:
    """A clip ready to decode: the JPEG bytes of its distinct frames and how to lay them out in time."""

    index: int  # train: global sample id; val/eval: item position
    shard: str
    key: str
    label: int = -1
    jpegs: list[memoryview] | None = None
    gather: np.ndarray | None = None  # (T,) positions in jpegs; None: jpegs are the clip in order
    window: int = -1
    error: str | None = None  # set when the sample is corrupt
    pad: bool = False
    width: int | None = None  # frame size the metadata states; JPEG headers must agree before decoding
    height: int | None = None


#: Placement of a decoded clip: ``(height, width) -> (crop box, flip)``.
Place = Callable[[int, int], tuple[CropBox, bool]]


@dataclass
class CorruptBudget:
    """Corrupt samples one stream may meet in one epoch; :meth:`report` warns and enforces the limit."""

    allowed: int
    seen: int
    where: str  # "stream s (rank r, worker w) of epoch e", for messages
    cfg: LoaderConfig

    def report(self, sample: Sample) -> None:
        self.seen += 1
        msg = f"skipping corrupt sample {sample.key!r} in {sample.shard}: {sample.error}"
        warnings.warn(msg, CorruptSampleWarning, stacklevel=3)
        if self.seen > self.allowed:
            raise CorruptDataError(
                f"{self.seen} corrupt samples in {self.where} exceed the limit of {self.allowed} "
                f"(max_corrupt={self.cfg.max_corrupt}, "
                f"max_corrupt_fraction={self.cfg.max_corrupt_fraction}); last: {msg}. Check the shards "
                "(`e3d verify <root>`) or raise the limits in LoaderConfig.")


@dataclass
class EpochContext:
    """Everything the stages of one stream need for one epoch (built in the worker that runs the stream).

    Attributes:
        cfg, epoch: the loader config and the epoch.
        shards: the sorted shard list; ``first_ids[s]`` is the global id of shard ``s``'s first sample.
        plan: this stream's :class:`StreamPlan`.
        budget: the stream's :class:`CorruptBudget`.
        shared: allocate batches in shared memory (inside a DataLoader worker).
        filesystems: url → resolved (filesystem, path), filled as shards are opened.
        buffers: decode and resize work arrays reused from clip to clip, keyed by shape.
        access: object-storage access (ranged reads through shard indexes, shard cache, verification); None:
            every shard is opened with :func:`shards.reader.open_shard` as is.
    """

    cfg: LoaderConfig
    epoch: int
    shards: Sequence[ShardSpec]
    first_ids: np.ndarray
    plan: StreamPlan
    budget: CorruptBudget
    shared: bool = False
    filesystems: dict[str, Any] = field(default_factory=dict)
    buffers: dict[tuple, np.ndarray] = field(default_factory=dict)
    access: ShardAccess | None = None

    def open(self, spec: ShardSpec) -> tuple[Any, ShardReader]:
        """Open a shard for a tar walk: a local copy when there is one (local disk, shard cache, or a verified
        download of a remote shard without index), else the shard itself as ``sequential_io`` says."""
        url = spec.url
        access = self.access
        if access is not None and storage.is_remote(url):
            ref = spec.ref()
            local = access.local(ref)  # a cached copy was verified when it was filled
            if local is None:
                access.check_object(ref)
            if local is None and access.verifies(ref) and ref.sha256 is not None:
                local = access.open_stream(ref)  # the bytes a sequential read streams anyway, hashed
            if local is not None:
                return open_shard(url, sequential=False, filesystem=(pafs.LocalFileSystem(), local))
        fs = self.filesystems.get(url)
        if fs is None:
            fs = self.filesystems[url] = storage.resolve(url)
        return open_shard(url, sequential=self.cfg.sequential_io, filesystem=fs)

    def ranged_index(self, spec: ShardSpec) -> ShardIndex | None:
        """The shard's index when its clips are to be read by ranges (remote, indexed, not cached), else None."""
        access = self.access
        if access is None or not self.cfg.use_index or not storage.is_remote(spec.url) or spec.index_url is None:
            return None
        ref = spec.ref()
        if access.local(ref) is not None or access.bad(ref):
            return None  # a verified local copy (seeks are cheaper than requests), or a shard found bad
        index = access.index(ref)
        if index is None or len(index.entries) != spec.samples:
            return None  # unusable index (reported by `e3d verify`): walk the tar instead
        return index  # the object's size is checked against the manifest when the ranged reader opens it


# -- read ---------------------------------------------------------------------------------------------


def clip_span(clips: Sequence[np.ndarray]) -> tuple[int, int]:
    """First and last stored frame any of ``clips`` uses."""
    return min(int(c.min()) for c in clips), max(int(c.max()) for c in clips)


def read_frames(reader: ShardReader, raw: RawSample, offsets: Sequence[int], clips: list[np.ndarray]
                ) -> list[tuple[list[memoryview], np.ndarray | None]]:
    """Read the byte range covering the frames of ``clips`` once; return (distinct JPEGs, gather) per clip."""
    lo, hi = clip_span(clips)
    assert raw.frames is not None
    blob = reader.read_range(raw.frames, int(offsets[lo]), int(offsets[hi + 1]))
    return slice_clips(blob, offsets, lo, clips)


def slice_clips(blob: bytes, offsets: Sequence[int], lo: int, clips: list[np.ndarray]
                ) -> list[tuple[list[memoryview], np.ndarray | None]]:
    """(distinct JPEGs, gather) per clip from ``blob``, the bytes of stored frames ``lo`` onwards."""
    base = int(offsets[lo])
    blob = memoryview(blob)
    offsets = [int(o) for o in offsets] if not isinstance(offsets, list) else offsets
    out = []
    for c in clips:
        uniq = np.unique(c)
        jpegs = [blob[offsets[u] - base : offsets[u + 1] - base] for u in uniq.tolist()]
        # Most clips are increasing and repeat no frame: no gather step then.
        gather = None if len(uniq) == len(c) and (uniq == c).all() else np.searchsorted(uniq, c)
        out.append((jpegs, gather))
    return out


#: Makes the sample record of one stored sample: ``(reader, raw sample, shard url, global id) -> Sample``.
MakeSample = Callable[[ShardReader, RawSample, str, int], Sample]
#: The clip(s) of an indexed sample: ``(index entry, global id) -> [(T,) int64 stored-frame indices]``.
ClipsOfEntry = Callable[[IndexEntry, int], list[np.ndarray]]


def read_segments(ctx: EpochContext, segments: Sequence[Segment], want: Callable[[int], bool],
                  make: MakeSample, clips_of: ClipsOfEntry | None = None) -> Iterator[tuple[int, Sample | None]]:
    """Yield ``(input index, sample or None)`` for every input of ``segments`` in order.

    Inputs for which ``want`` is false are skipped at the tar-header level (None); a shard that cannot
    be read yields corrupt samples for the samples it should have held. With ``clips_of`` and a remote
    shard that has an index, a sample is one ranged read of its clip's frames, issued ahead of the consumer
    (``io_window``); the samples are the same as a tar walk's.
    """
    if clips_of is None or ctx.access is None:
        yield from _walk_segments(ctx, segments, want, make)
        return
    jobs = _planned_reads(ctx, segments, want, make, clips_of)
    for (i, job, sample), data in ctx.access.reader().prefetch(jobs, ctx.access.cfg.prefetch,
                                                                key=lambda it: it[1] and it[1][0]):
        yield i, (sample if job is None else _ranged_sample(ctx, job, data))


def _walk_segments(ctx: EpochContext, segments: Sequence[Segment], want: Callable[[int], bool],
                   make: MakeSample) -> Iterator[tuple[int, Sample | None]]:
    idx = 0
    for seg in segments:
        n = len(seg)
        if any(want(i) for i in range(idx, idx + n)):
            yield from _read_segment(ctx, seg, idx, want, make)
        else:
            for i in range(idx, idx + n):
                yield i, None
        idx += n


def _planned_reads(ctx: EpochContext, segments: Sequence[Segment], want: Callable[[int], bool], make: MakeSample,
                   clips_of: ClipsOfEntry) -> Iterator[tuple[int, tuple | None, Sample | None]]:
    """``(input index, ranged job or None, sample or None)`` in order: a job for each wanted input of an indexed
    remote shard, a finished sample (tar walk) or None (not wanted) otherwise."""
    if ctx.access is not None and ctx.cfg.use_index:
        ctx.access.warm([ctx.shards[seg.shard].ref() for seg in segments])
    idx = 0
    for seg in segments:
        spec = ctx.shards[seg.shard]
        n = len(seg)
        index = ctx.ranged_index(spec) if any(want(i) for i in range(idx, idx + n)) else None
        if index is None:
            for i, sample in _walk_segments(ctx, [seg], lambda k, o=idx: want(k + o), make):
                yield i + idx, None, sample
            idx += n
            continue
        first = int(ctx.first_ids[seg.shard])
        for k in range(seg.start, seg.stop):
            i = idx + k - seg.start
            if want(i):
                yield (i, *_ranged_job(ctx, spec, index.entries[k], first + k, clips_of))
            else:
                yield i, None, None
        idx += n


def _ranged_job(ctx: EpochContext, spec: ShardSpec, entry: IndexEntry, gid: int, clips_of: ClipsOfEntry
                ) -> tuple[tuple | None, Sample | None]:
    try:
        n_cls = ctx.cfg.num_classes
        if entry.label < -1 or (n_cls is not None and entry.label >= n_cls):
            raise ValueError(f"label {entry.label} outside the {n_cls} classes")
        clips = clips_of(entry, gid)
        lo, hi = clip_span(clips)
        start, stop = entry.frame_range(lo, hi)
    except (ValueError, IndexError) as exc:
        return None, Sample(index=gid, shard=spec.url, key=entry.key, error=str(exc))
    return (Request(spec.url, start, stop, spec.bytes), entry, clips, lo, gid, spec.url), None


def _ranged_sample(ctx: EpochContext, job: tuple, data: bytes | BaseException | None) -> Sample:
    _, entry, clips, lo, gid, url = job
    if not isinstance(data, bytes | bytearray | memoryview):
        return Sample(index=gid, shard=url, key=entry.key, error=f"unreadable ({data})")
    ((jpegs, gather),) = slice_clips(data, entry.frames, lo, clips)
    return Sample(index=gid, shard=url, key=entry.key, label=entry.label, jpegs=jpegs, gather=gather,
                  width=entry.width, height=entry.height)


def _read_segment(ctx: EpochContext, seg: Segment, idx: int, want: Callable[[int], bool],
                  make: MakeSample) -> Iterator[tuple[int, Sample | None]]:
    spec = ctx.shards[seg.shard]
    first = int(ctx.first_ids[seg.shard])
    done = 0
    error: str | None = None
    f = None
    try:
        f, reader = ctx.open(spec)
        for raw in reader.samples():
            if raw.index < seg.start:
                continue
            if raw.index >= seg.stop:
                break
            i = idx + raw.index - seg.start
            yield i, (make(reader, raw, spec.url, first + raw.index) if want(i) else None)
            done += 1
        if done < len(seg):
            error = (f"shard ended after {seg.start + done} samples; the plan expects {spec.samples} "
                     "(manifest out of date?)")
    except (OSError, ShardFormatError) as exc:
        error = f"unreadable shard ({exc})"
    finally:
        if f is not None:
            f.close()
    for k in range(done, len(seg)):
        i = idx + k
        yield i, (Sample(index=first + seg.start + k, shard=spec.url, key=f"#{seg.start + k}", error=error)
                  if want(i) else None)


#: Frame indices of an item's clip: ``(item, num_frames, step) -> (T,) int64``.
ClipOf = Callable[[EvalItem, int, int], np.ndarray]


def read_run(ctx: EpochContext, run: list[EvalItem], base: int, clip_of: ClipOf) -> Iterator[Sample]:
    """Samples for the items of one shard, in the shard's stored order (window order per video).

    ``base`` is the item position of ``run[0]``; a sample's ``index`` is its item's position.
    """
    spec = ctx.shards[run[0].shard]
    url = spec.url
    wanted: dict[str, list[tuple[int, EvalItem]]] = {}
    for pos, item in enumerate(run):
        wanted.setdefault(item.key, []).append((pos, item))
    f = None
    error: str | None = None
    index = ctx.ranged_index(spec)
    if index is not None:
        yield from _ranged_run(ctx, spec, index, wanted, base, clip_of)
    try:
        if not wanted:
            return
        f, reader = ctx.open(spec)
        for raw in reader.samples():
            items = wanted.pop(raw.key, None)
            if items is None:
                continue
            yield from _video_samples(ctx, reader, raw, url, items, base, clip_of)
            if not wanted:
                break
    except (OSError, ShardFormatError) as exc:
        error = f"unreadable shard ({exc})"
    finally:
        if f is not None:
            f.close()
    for key, items in wanted.items():  # listed in the manifest but not (readably) in the shard
        for pos, item in items:
            yield Sample(index=base + pos, shard=url, key=key, window=item.window,
                         error=error or "not found in the shard (manifest out of date?)")


def _ranged_run(ctx: EpochContext, spec: ShardSpec, index: ShardIndex, wanted: dict[str, list[tuple[int, EvalItem]]],
                base: int, clip_of: ClipOf) -> Iterator[Sample]:
    """The items of an indexed remote shard: one ranged read per video (all its windows), in stored order, with
    reads issued ahead; found videos are removed from ``wanted``."""
    assert ctx.access is not None
    url = spec.url
    videos = []
    for entry in index.entries:
        items = wanted.pop(entry.key, None)
        if items is not None:
            videos.append((entry, items))

    def plan() -> Iterator[tuple[tuple, Request | None]]:
        for entry, items in videos:
            try:
                planned = items[0][1]
                if (entry.num_frames, entry.stride) != (planned.num_frames, planned.stride):
                    raise ValueError(f"num_frames/stride {entry.num_frames}/{entry.stride} differ from the "
                                     f"manifest's {planned.num_frames}/{planned.stride}")
                n_cls = ctx.cfg.num_classes
                if entry.label < -1 or (n_cls is not None and entry.label >= n_cls):
                    raise ValueError(f"label {entry.label} outside the {n_cls} classes")
                step = ctx.cfg.step_for(entry.stride)
                clips = [clip_of(item, entry.num_frames, step) for _, item in items]
                lo, hi = clip_span(clips)
                yield (entry, items, clips, lo, None), Request(url, *entry.frame_range(lo, hi), spec.bytes)
            except (ValueError, IndexError) as exc:
                yield (entry, items, None, 0, str(exc)), None

    for ((entry, items, clips, lo, err), _), data in ctx.access.reader().prefetch(
            plan(), ctx.access.cfg.prefetch, key=lambda it: it[1]):
        if err is None and not isinstance(data, bytes | bytearray | memoryview):
            err = f"unreadable ({data})"
        if err is not None:
            for pos, item in items:
                yield Sample(index=base + pos, shard=url, key=entry.key, window=item.window, error=err)
            continue
        for (pos, item), (jpegs, gather) in zip(items, slice_clips(data, entry.frames, lo, clips), strict=True):
            yield Sample(index=base + pos, shard=url, key=entry.key, label=entry.label, jpegs=jpegs,
                         gather=gather, window=item.window, width=entry.width, height=entry.height)


def _video_samples(ctx: EpochContext, reader: ShardReader, raw: RawSample, url: str,
                   items: list[tuple[int, EvalItem]], base: int, clip_of: ClipOf) -> Iterator[Sample]:
    try:
        meta, label = check_sample(raw, num_classes=ctx.cfg.num_classes)
        n = meta["num_frames"]
        planned = items[0][1]
        stride = int(meta.get("stride", 1))
        if (n, stride) != (planned.num_frames, planned.stride):
            raise ValueError(f"num_frames/stride {n}/{stride} differ from the manifest's "
                             f"{planned.num_frames}/{planned.stride}")
        step = ctx.cfg.step_for(stride)
        frames = read_frames(reader, raw, meta["offsets"], [clip_of(item, n, step) for _, item in items])
    except (ValueError, ShardFormatError) as exc:
        for pos, item in items:
            yield Sample(index=base + pos, shard=url, key=raw.key, window=item.window, error=str(exc))
        return
    for (pos, item), (jpegs, gather) in zip(items, frames, strict=True):
        yield Sample(index=base + pos, shard=url, key=raw.key, label=label, jpegs=jpegs, gather=gather,
                     window=item.window, width=meta.get("width"), height=meta.get("height"))


# -- decode -------------------------------------------------------------------------------------------


def decode_into(ctx: EpochContext, sample: Sample, out: np.ndarray, place: Place) -> str | None:
    """Decode and transform ``sample`` into ``out`` (3, T, S, S) uint8; return an error message, never raise."""
    cfg = ctx.cfg
    assert sample.jpegs is not None
    key = (len(sample.jpegs),)
    try:
        # The first frame's header sizes the decode buffer, so it must match the metadata before anything is
        # allocated (a crafted header can claim 65535² px, a 12 GB "decompression bomb"); decode_frames refuses
        # any later frame whose size differs from the buffer's.
        check_jpeg_headers(sample.jpegs[:1], sample.width, sample.height)
        frames = decode_frames(sample.jpegs, fast=cfg.fast_decode, out=ctx.buffers.get(key))
    except ValueError as exc:
        return str(exc)
    ctx.buffers[key] = frames
    box, flip = place(*frames.shape[1:3])
    scratch_key = ("s", len(sample.jpegs))
    scratch = ctx.buffers.get(scratch_key)
    if scratch is None:
        scratch = ctx.buffers[scratch_key] = np.empty((len(sample.jpegs), cfg.size, cfg.size, 3), np.uint8)
    crop_resize(frames, box, cfg.size, flip=flip, gather=sample.gather, out=out, scratch=scratch)
    return None


# -- batch --------------------------------------------------------------------------------------------


def batch_tensor(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised uint8 tensor; in shared memory inside a DataLoader worker, where sending a tensor
    moves it to shared memory anyway (doing it here lets the clips be written there directly)."""
    t = torch.empty(shape, dtype=torch.uint8)
    return t.share_memory_() if shared else t


class BatchBuilder:
    """Collects one batch: clips are written in place, the small fields go to lists (cheaper than
    per-element tensor writes) and become tensors in :meth:`finish`."""

    def __init__(self, clips: torch.Tensor):
        self.clips = clips
        self.n = 0
        self.labels: list[int] = []
        self.keys: list[str] = []
        self.window: list[int] = []
        self.index: list[int] = []
        self.valid: list[bool] = []
        self.corrupt: list[bool] = []

    def next_slot(self) -> np.ndarray:
        return self.clips[self.n].numpy()

    def add(self, sample: Sample, *, index: int, valid: bool = True, corrupt: bool = False) -> None:
        self.labels.append(sample.label)
        self.keys.append(sample.key)
        self.window.append(sample.window)
        self.index.append(index)
        self.valid.append(valid)
        self.corrupt.append(corrupt)
        self.n += 1

    def full(self) -> bool:
        return self.n == len(self.clips)

    def finish(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "labels": torch.tensor(self.labels, dtype=torch.int64),
            "keys": self.keys,
            "window": torch.tensor(self.window, dtype=torch.int64),
            "index": torch.tensor(self.index, dtype=torch.int64),
            "valid": torch.tensor(self.valid, dtype=torch.bool),
            "corrupt": torch.tensor(self.corrupt, dtype=torch.bool),
        }
