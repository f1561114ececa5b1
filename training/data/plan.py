"""Epoch plans: which stream (rank × DataLoader worker) reads which samples, decided before reading.

A plan is a pure function of the shard list (URLs and sample counts), the :class:`LoaderConfig`, the
epoch and the number of streams, so every rank computes the same plan without talking to the others.

Training: the shards are put in a random order for the epoch and each is rotated by a random offset
(so a different tail is dropped every epoch); the resulting sequence of samples is cut into equal
contiguous ranges, one per stream. A range can begin and end inside a shard, which is how *fewer shards
than streams* is handled: several streams read disjoint parts of one shard (skipping the rest at the
header level). Every stream gets the same number of samples, hence the same number of batches; the
``N mod streams`` samples left over (plus, with ``drop_last``, those that do not fill a last batch) are
dropped for this epoch only.

Validation/evaluation: the items (one per video, or one per evaluation window) are listed in shard order
and cut into equal ranges; the last streams are topped up with padding items (``valid = False``) so that
every rank still yields the same number of batches and no video is counted twice.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shards.access import ShardRef
from training.data.config import LoaderConfig
from training.data.sampling import CounterRng

# Stream tags for CounterRng keys, so that the draws of different purposes never coincide.
TAG_SHARDS, TAG_BUFFER, TAG_TIME, TAG_SPACE, TAG_DONOR = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class ShardSpec:
    """One shard as the loader needs to know it before reading it.

    Attributes:
        url: local path or pyarrow.fs URI of the ``.tar``.
        samples: number of samples (videos) in the shard.
        videos: ``(key, num_frames, stride)`` per sample in stored order; needed by ``val``/``eval``
            (keys to pick videos, frame counts to count evaluation windows), unused in training.
        bytes, sha256: the shard's size and digest from the manifest (None when unknown).
        index_url, index_sha256: its index (``shards/index.py``) and the index's digest; None without one.
    """

    url: str
    samples: int
    videos: tuple[tuple[str, int, int], ...] | None = None
    bytes: int | None = None
    sha256: str | None = None
    index_url: str | None = None
    index_sha256: str | None = None

    def ref(self) -> ShardRef:
        return ShardRef(self.url, self.bytes, self.sha256, self.index_url, self.index_sha256)

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"{self.url}: negative sample count")
        if self.videos is not None and len(self.videos) != self.samples:
            raise ValueError(f"{self.url}: {len(self.videos)} videos listed for {self.samples} samples")


@dataclass(frozen=True)
class Segment:
    """Samples ``start .. stop-1`` (stored order) of shard ``shard`` (index into the sorted shard list)."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class EvalItem:
    """One val/eval clip: window ``window`` of video ``key`` in shard ``shard``."""

    shard: int
    key: str
    window: int
    num_frames: int
    stride: int = 1


@dataclass(frozen=True)
class StreamPlan:
    """What one stream reads in one epoch.

    ``items`` outputs (training: samples read in ``segments`` order, then shuffled; val/eval: the
    ``eval_items`` followed by ``items - len(eval_items)`` padding items), in ``batches`` batches.
    """

    stream: int
    items: int
    batches: int
    segments: tuple[Segment, ...] = ()
    eval_items: tuple[EvalItem, ...] = ()


def sort_shards(shards: Sequence[ShardSpec]) -> list[ShardSpec]:
    """Canonical order (by URL), so every rank indexes shards alike whatever order it listed them in."""
    out = sorted(shards, key=lambda s: s.url)
    for a, b in zip(out, out[1:], strict=False):
        if a.url == b.url:
            raise ValueError(f"shard listed twice: {a.url}")
    return out


def seed_for(*key: int) -> int:
    return CounterRng(*key).integers(0, 1 << 62)


def fingerprint(shards: Sequence[ShardSpec], cfg: LoaderConfig, world_size: int) -> str:
    """Identifies everything a saved loader position depends on (not the epoch)."""
    h = hashlib.sha1()
    for s in shards:
        h.update(f"{s.url}\0{s.samples}\0".encode())
    # Only what decides which sample lands in which batch; decode or augmentation settings may change.
    fields = ("dataset", "mode", "clip_len", "downsample", "source_stride", "batch_size", "num_workers",
              "drop_last", "shuffle_buffer", "seed")
    h.update(repr(([getattr(cfg, f) for f in fields], world_size)).encode())
    return h.hexdigest()[:16]


class _Planner:
    """Common shape of an epoch plan: ``streams`` equal streams of ``per_stream`` items in ``batches``
    batches; :meth:`stream` computes one stream's :class:`StreamPlan` on demand."""

    def __init__(self, shards: Sequence[ShardSpec], cfg: LoaderConfig, epoch: int, streams: int):
        if streams < 1:
            raise ValueError("need at least one stream")
        self.shards = list(shards)
        self.cfg = cfg
        self.epoch = epoch
        self.streams = streams

    def stream(self, k: int) -> StreamPlan:
        if not 0 <= k < self.streams:
            raise ValueError(f"stream {k} outside [0, {self.streams})")
        return self._stream(k)

    def _stream(self, k: int) -> StreamPlan:
        raise NotImplementedError


class TrainPlanner(_Planner):
    """Training plan: shards in a random order, each rotated by a random offset, cut into equal ranges."""

    def __init__(self, shards: Sequence[ShardSpec], cfg: LoaderConfig, epoch: int, streams: int):
        super().__init__(shards, cfg, epoch, streams)
        rng = random.Random(seed_for(cfg.seed, self.epoch, TAG_SHARDS))
        order = list(range(len(self.shards)))
        rng.shuffle(order)
        pieces: list[Segment] = []
        for i in order:
            n = self.shards[i].samples
            if n == 0:
                continue
            r = rng.randrange(n)
            pieces.append(Segment(i, r, n))
            if r:
                pieces.append(Segment(i, 0, r))
        self._pieces = pieces
        self._cum = np.cumsum([0] + [len(p) for p in pieces])
        self.total = int(self._cum[-1])
        per = self.total // self.streams
        if cfg.drops_last:
            per -= per % cfg.batch_size
        if per == 0:
            need = self.streams * (cfg.batch_size if cfg.drops_last else 1)
            what = f"a full batch of {cfg.batch_size}" if cfg.drops_last else "a sample"
            raise ValueError(
                f"{self.total} training samples cannot give each of the {self.streams} streams (world_size × "
                f"max(num_workers, 1)) {what}; at least {need} samples are needed: use fewer DataLoader "
                "workers or ranks, a smaller batch_size, or drop_last=False")
        self.per_stream = per
        self.batches = -(-per // cfg.batch_size)
        self.dropped = self.total - per * self.streams

    def _stream(self, k: int) -> StreamPlan:
        a, b = k * self.per_stream, (k + 1) * self.per_stream
        segs = []
        first = int(np.searchsorted(self._cum, a, side="right")) - 1
        for p in range(first, len(self._pieces)):
            lo = int(self._cum[p])
            if lo >= b:
                break
            piece = self._pieces[p]
            s = piece.start + max(0, a - lo)
            e = piece.start + min(len(piece), b - lo)
            if e > s:
                segs.append(Segment(piece.shard, s, e))
        return StreamPlan(stream=k, items=self.per_stream, batches=self.batches, segments=tuple(segs))


class ItemPlanner(_Planner):
    """Validation/evaluation plan: ``windows(num_frames, stride)`` items per video, listed in shard order,
    cut into equal ranges (the last ones topped up with padding)."""

    def __init__(self, shards: Sequence[ShardSpec], cfg: LoaderConfig, epoch: int, streams: int,
                 windows: Callable[[int, int], int]):
        super().__init__(shards, cfg, epoch, streams)
        self._windows = windows
        counts = []
        for s in self.shards:
            if s.videos is None:
                raise ValueError(f"{s.url}: mode {cfg.mode!r} needs the videos of each shard "
                                 "(ShardSpec.videos); build the specs with shard_specs(root, split) or "
                                 "scan_shard_specs(urls)")
            counts.append(sum(windows(n, st) for _, n, st in s.videos))
        self._cum = np.cumsum([0] + counts)
        self.total = int(self._cum[-1])
        self.per_stream = -(-self.total // self.streams)
        self.batches = (self.per_stream // cfg.batch_size if cfg.drops_last
                        else -(-self.per_stream // cfg.batch_size))
        self.dropped = 0

    def _stream(self, k: int) -> StreamPlan:
        a, b = k * self.per_stream, min((k + 1) * self.per_stream, self.total)
        items: list[EvalItem] = []
        if a < b:
            first = int(np.searchsorted(self._cum, a, side="right")) - 1
            pos = int(self._cum[first])
            for si in range(first, len(self.shards)):
                if pos >= b:
                    break
                for key, n, st in self.shards[si].videos or ():
                    w = self._windows(n, st)
                    for win in range(w):
                        if a <= pos + win < b:
                            items.append(EvalItem(si, key, win, n, st))
                    pos += w
                    if pos >= b:
                        break
        return StreamPlan(stream=k, items=self.per_stream, batches=self.batches, eval_items=tuple(items))
