"""Streaming clip loader: shards → uint8 clip batches for every DDP rank and DataLoader worker.

Pipeline of one stream (one DataLoader worker of one rank), as small stages over sample records::

    plan (which samples)  →  read (tar walk; JSON; only the byte range of the clip's frames)
      →  shuffle buffer (train)  →  decode (simplejpeg, needed frames only)
      →  crop → resize → flip → (3, T, S, S) uint8 written straight into the batch  →  batch dict

Guarantees:

* **Equal batch counts.** Every rank yields ``len(dataset)`` batches per epoch, whatever the shard sizes
  (see :mod:`training.data.plan`), so DDP never waits at epoch end for a rank that ran out.
* **Determinism.** Shard order, shuffle-buffer order and every clip's temporal start, crop and flip are
  functions of ``(seed, epoch, sample)`` only — not of timing, worker scheduling or earlier samples.
* **Mid-epoch resume.** :class:`ClipLoader` counts the batches handed out; after
  ``load_state_dict`` the next iteration yields exactly the batches an uninterrupted epoch would have
  yielded next. The shuffle buffer's contents at the resume point are recomputed from indices and only
  those samples are re-read; everything before is skipped at the tar-header level.
* **Corrupt data.** A sample with unreadable metadata or a corrupt JPEG is skipped, counted and reported
  with a :class:`CorruptSampleWarning` naming shard and key. In training its place in the batch is taken
  by another clip from the shuffle buffer (flag ``corrupt``); in val/eval by a zero clip with
  ``valid = False``. Past ``max(max_corrupt, max_corrupt_fraction × samples)`` in one stream the epoch
  fails with :class:`CorruptDataError`.

Batches are dicts::

    clips    uint8  (B, 3, T, S, S)   RGB, 0–255; normalise on the device (training.data.normalize)
    labels   int64  (B,)              class index (-1: unlabelled)
    keys     list[str]                sample key of each clip's video
    window   int64  (B,)              eval: window index within the video; -1 otherwise
    index    int64  (B,)              train: global sample id; val/eval: item position; -1 for padding
    valid    bool   (B,)              False for padding and val/eval corrupt placeholders
    corrupt  bool   (B,)              the planned sample was corrupt (train: clip taken from another sample)
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import storage
from shards.format import CLS_EXT, META_EXT
from shards.reader import RawSample, ShardFormatError, ShardReader, open_shard, scan_shard
from training.data.config import LoaderConfig
from training.data.plan import (
    TAG_BUFFER,
    TAG_DONOR,
    TAG_SPACE,
    TAG_TIME,
    EpochPlanner,
    EvalItem,
    Segment,
    ShardSpec,
    StreamPlan,
    fingerprint,
    seed_for,
    sort_shards,
)
from training.data.sampling import (
    CounterRng,
    buffered_shuffle_order,
    center_clip,
    eval_window,
    held_at,
    random_clip,
)
from training.data.transforms import center_box, crop_resize, decode_frames, multiscale_crop_box

__all__ = [
    "ClipLoader",
    "ClipStream",
    "CorruptDataError",
    "CorruptSampleWarning",
    "ShardSpec",
    "scan_shard_specs",
    "shard_specs",
]


class CorruptDataError(RuntimeError):
    """Too many corrupt samples in one stream of an epoch."""


class CorruptSampleWarning(UserWarning):
    """A corrupt sample was skipped (the message names shard and key)."""


# -- shard lists ------------------------------------------------------------------------------------------


def shard_specs(root: str, split: str, *, videos: bool = True) -> list[ShardSpec]:
    """Shard specs of a split from its Parquet manifests (``manifest/<split>/{shards,videos}.parquet``).

    ``videos=False`` skips the per-video table (training needs only sample counts).
    """
    from shards import manifest

    rows = manifest.read_table(root, split, "shards").select(["path", "samples"]).to_pylist()
    urls = manifest.shard_urls(root, split)
    per_shard: dict[str, list[tuple[str, int, int]]] = {}
    if videos:
        cols = ["key", "num_frames", "stride", "status", "shard"]
        for v in manifest.read_table(root, split, "videos").select(cols).to_pylist():
            if v["status"] == "ok":
                entry = (v["key"], int(v["num_frames"]), int(v["stride"] or 1))
                per_shard.setdefault(v["shard"], []).append(entry)
    specs = []
    for row, url in zip(rows, urls, strict=True):
        vids = None
        if videos:
            # Stored order within a shard is by SHA-1 of the key (FORMAT.md); the loader matches videos by
            # key, so this order only decides the output order, never which clips are produced.
            vids = tuple(sorted(per_shard.get(row["path"], []),
                                key=lambda v: hashlib.sha1(v[0].encode("utf-8")).hexdigest()))
        specs.append(ShardSpec(url=url, samples=int(row["samples"]), videos=vids))
    return specs


def scan_shard_specs(urls: Sequence[str]) -> list[ShardSpec]:
    """Shard specs from the shards themselves (reads every sample's metadata; for data without manifests)."""
    specs = []
    for url in urls:
        vids = tuple(scan_shard(url))
        specs.append(ShardSpec(url=url, samples=len(vids), videos=vids))
    return specs


# -- sample records -----------------------------------------------------------------------------------


@dataclass
class _Source:
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


def _check_meta(raw: RawSample) -> tuple[dict[str, Any], int]:
    """Parse and validate a sample's metadata; raise ValueError saying what is wrong."""
    missing = raw.missing()
    if missing:
        raise ValueError(f"lacks member(s) {missing}")
    try:
        meta = json.loads(raw.members[META_EXT])
        label = int(raw.members[CLS_EXT])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a JSON object")
    offsets = meta.get("offsets")
    n = meta.get("num_frames")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"bad num_frames {n!r}")
    if not isinstance(offsets, list) or len(offsets) != n + 1 or offsets[0] != 0:
        raise ValueError("offset table does not match num_frames")
    assert raw.frames is not None
    if offsets[-1] != raw.frames.size or offsets != sorted(offsets):
        raise ValueError("offset table does not match the frame blob")
    if "label_index" in meta and meta["label_index"] != label:
        raise ValueError(f".cls label {label} differs from metadata label_index {meta['label_index']}")
    return meta, label


def _read_frames(reader: ShardReader, raw: RawSample, offsets: list[int], clips: list[np.ndarray]
                 ) -> list[tuple[list[memoryview], np.ndarray]]:
    """Read the byte range covering the frames of ``clips`` once; return (distinct JPEGs, gather) per clip."""
    lo = min(int(c.min()) for c in clips)
    hi = max(int(c.max()) for c in clips)
    assert raw.frames is not None
    base = offsets[lo]
    blob = memoryview(reader.read_range(raw.frames, base, offsets[hi + 1]))
    out = []
    for c in clips:
        uniq = np.unique(c)
        jpegs = [blob[offsets[u] - base : offsets[u + 1] - base] for u in uniq.tolist()]
        # Most clips are increasing and repeat no frame: no gather step then.
        gather = None if len(uniq) == len(c) and (uniq == c).all() else np.searchsorted(uniq, c)
        out.append((jpegs, gather))
    return out


# -- the dataset --------------------------------------------------------------------------------------


def _dist_default() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shared_uint8(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised uint8 tensor; in shared memory inside a DataLoader worker (no copy when sent)."""
    if shared:
        numel = int(np.prod(shape))
        try:  # what torch's default_collate does for the same reason
            proto = torch.empty(0, dtype=torch.uint8)
            storage_ = proto._typed_storage()._new_shared(numel, device="cpu")
            return proto.new(storage_).resize_(*shape)
        except (AttributeError, RuntimeError):
            pass
    return torch.empty(shape, dtype=torch.uint8)


class _Batch:
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

    def add(self, src: _Source, *, index: int, valid: bool = True, corrupt: bool = False) -> None:
        self.labels.append(src.label)
        self.keys.append(src.key)
        self.window.append(src.window)
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


class ClipStream(IterableDataset):
    """Iterable dataset of clip batches for one rank (use with ``DataLoader(batch_size=None)``).

    Args:
        shards: the split's shards (:func:`shard_specs`); any order, every rank must pass the same set.
        cfg: the :class:`LoaderConfig`; its ``num_workers`` must equal the DataLoader's.
        rank, world_size: this rank's place among the data-parallel ranks; by default from
            ``torch.distributed`` when initialised, else 0 and 1. Pass them to simulate any world size.

    Normally used through :class:`ClipLoader`, which builds the DataLoader and tracks the position.
    """

    def __init__(self, shards: Sequence[ShardSpec], cfg: LoaderConfig, *, rank: int | None = None,
                 world_size: int | None = None):
        super().__init__()
        d_rank, d_world = _dist_default()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        self.cfg = cfg
        self.shards = sort_shards(shards)
        if not self.shards:
            raise ValueError("no shards given")
        self.epoch = 0
        self._start = 0  # batches of this rank already consumed in self.epoch
        self._prior_corrupt: list[int] = [0] * cfg.workers
        self._planner: EpochPlanner | None = None
        self._fs_cache: dict[str, Any] = {}  # url -> (filesystem, path), resolved once per worker
        self._gofs = np.cumsum([0] + [s.samples for s in self.shards])  # global id of each shard's 1st sample
        self._bufs: dict[tuple, np.ndarray] = {}

    # -- position ----------------------------------------------------------------------------------

    @property
    def streams(self) -> int:
        return self.world_size * self.cfg.workers

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (resets the resume position when it changes)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._planner = None
            self._start = 0
            self._prior_corrupt = [0] * self.cfg.workers

    def set_start(self, batches_done: int, corrupt_per_worker: Sequence[int] | None = None) -> None:
        """Start the current epoch after ``batches_done`` batches of this rank (mid-epoch resume)."""
        if not 0 <= batches_done <= len(self):
            raise ValueError(f"batches_done {batches_done} outside [0, {len(self)}]")
        self._start = batches_done
        self._prior_corrupt = list(corrupt_per_worker) if corrupt_per_worker else [0] * self.cfg.workers

    def planner(self) -> EpochPlanner:
        if self._planner is None or self._planner.epoch != self.epoch:
            self._planner = EpochPlanner(self.shards, self.cfg, self.epoch, self.streams)
        return self._planner

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self.planner().batches * self.cfg.workers

    def fingerprint(self) -> str:
        return fingerprint(self.shards, self.cfg, self.world_size)

    # -- iteration ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if nw != self.cfg.workers:
            raise ValueError(f"LoaderConfig.num_workers={self.cfg.num_workers} but the DataLoader runs {nw} "
                             "worker(s); build the DataLoader with the config's num_workers (or use "
                             "ClipLoader)")
        if info is not None:
            import cv2

            cv2.setNumThreads(1)  # one worker = one core; OpenCV's pool would oversubscribe
        # The DataLoader takes batches from workers round-robin starting at worker 0. After a resume at
        # batch b the next batch belongs to stream b mod W, so worker w plays stream (w + b) mod W.
        logical = (wid + self._start) % nw
        done = len(range(logical, self._start, nw))
        stream = self.rank * nw + logical
        yield from self._iter_stream(stream, logical, done)

    def _iter_stream(self, stream: int, logical: int, skip_batches: int) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        plan = self.planner().stream(stream)
        n_out = min(plan.items, plan.batches * cfg.batch_size)
        start = skip_batches * cfg.batch_size
        if start >= n_out:
            return
        self._corrupt = self._prior_corrupt[logical] if logical < len(self._prior_corrupt) else 0
        self._allowed = max(cfg.max_corrupt, int(cfg.max_corrupt_fraction * plan.items))
        self._where = f"stream {stream} (rank {self.rank}, worker {logical}) of epoch {self.epoch}"
        shared = get_worker_info() is not None
        train = cfg.mode == "train"
        outputs = self._train_outputs(plan, start, n_out) if train else self._item_outputs(plan, start)
        batch: _Batch | None = None
        for j, src, held in outputs:
            if j >= n_out:
                break
            if batch is None:
                n = min(cfg.batch_size, n_out - j)
                batch = _Batch(_shared_uint8((n, 3, cfg.clip_len, cfg.size, cfg.size), shared))
            self._emit(batch, src, held)
            if batch.full():
                yield batch.finish()
                batch = None

    # -- batch assembly ----------------------------------------------------------------------------

    def _emit(self, batch: _Batch, src: _Source, held: dict[int, _Source] | None) -> None:
        out = batch.next_slot()
        if src.pad:
            out[...] = 0
            batch.add(src, index=-1, valid=False)
            return
        if src.error is None:
            err = self._produce(src, out)
            if err is None:
                batch.add(src, index=src.index)
                return
            src.error = err
        self._report(src)
        if self.cfg.mode != "train" or held is None:
            out[...] = 0
            batch.add(src, index=src.index, valid=False, corrupt=True)
            return
        donor = self._substitute(src, out, held)
        batch.add(donor, index=src.index, corrupt=True)

    def _report(self, src: _Source) -> None:
        self._corrupt += 1
        msg = f"skipping corrupt sample {src.key!r} in {src.shard}: {src.error}"
        warnings.warn(msg, CorruptSampleWarning, stacklevel=2)
        if self._corrupt > self._allowed:
            raise CorruptDataError(
                f"{self._corrupt} corrupt samples in {self._where} exceed the limit of {self._allowed} "
                f"(max_corrupt={self.cfg.max_corrupt}, "
                f"max_corrupt_fraction={self.cfg.max_corrupt_fraction}); last: {msg}. Check the shards "
                "(`e3d verify <root>`) or raise the limits in LoaderConfig.")

    def _produce(self, src: _Source, out: np.ndarray, rng_index: int | None = None) -> str | None:
        """Decode and transform ``src`` into ``out`` (3, T, S, S); return an error message, never raise."""
        cfg = self.cfg
        assert src.jpegs is not None
        key = (len(src.jpegs),)
        try:
            frames = decode_frames(src.jpegs, fast=cfg.fast_decode, out=self._bufs.get(key))
        except ValueError as exc:
            return str(exc)
        self._bufs[key] = frames
        h, w = frames.shape[1:3]
        if cfg.mode == "train":
            rng = CounterRng(cfg.seed, self.epoch, TAG_SPACE, src.index if rng_index is None else rng_index)
            box = multiscale_crop_box(h, w, rng, cfg.scales, cfg.crop_position)
            flip = cfg.flip and rng.random() < 0.5
        else:
            box, flip = center_box(h, w), False
        scratch_key = ("s", len(src.jpegs))
        scratch = self._bufs.get(scratch_key)
        if scratch is None:
            scratch = self._bufs[scratch_key] = np.empty((len(src.jpegs), cfg.size, cfg.size, 3), np.uint8)
        crop_resize(frames, box, cfg.size, flip=flip, gather=src.gather, out=out, scratch=scratch)
        return None

    def _substitute(self, src: _Source, out: np.ndarray, held: dict[int, _Source]) -> _Source:
        """Fill a corrupt training sample's place with another clip (deterministic choice).

        Candidates are the samples in the shuffle buffer (the same set in a resumed epoch), tried from a
        random one onwards, augmented with the corrupt sample's crop/flip draws; when the buffer has none
        that decodes, the stream's samples are scanned from its start.
        """
        cands = sorted(held)
        if cands:
            k = CounterRng(self.cfg.seed, self.epoch, TAG_DONOR, src.index).integers(0, len(cands))
            for c in cands[k:] + cands[:k]:
                donor = held[c]
                if donor.error is None:
                    err = self._produce(donor, out, rng_index=src.index)
                    if err is None:
                        return donor
                    donor.error = err  # counted when its own turn comes
        for _, donor in self._read_inputs(self._plan_segments, lambda i: True):
            if donor is not None and donor.error is None and self._produce(donor, out, src.index) is None:
                return donor
        raise CorruptDataError(f"no readable sample left in {self._where} to replace {src.key!r} "
                               f"({src.error})")

    # -- training: read → shuffle buffer ---------------------------------------------------------------

    def _train_outputs(self, plan: StreamPlan, start: int, n_out: int
                       ) -> Iterator[tuple[int, _Source, dict[int, _Source]]]:
        cfg = self.cfg
        self._plan_segments = plan.segments
        rng = random.Random(seed_for(cfg.seed, self.epoch, TAG_BUFFER, plan.stream))
        order, reads = buffered_shuffle_order(plan.items, cfg.shuffle_buffer, rng)
        if start:
            keep = set(held_at(order, reads, start))
            first_new = int(reads[start])

            def want(i: int) -> bool:
                return i >= first_new or i in keep
        else:
            def want(i: int) -> bool:
                return True

        inputs = self._read_inputs(plan.segments, want)
        held: dict[int, _Source] = {}
        nread = 0
        for j in range(start, n_out):
            while nread < reads[j]:
                i, src = next(inputs)
                nread = i + 1
                if src is not None:
                    held[i] = src
            yield j, held.pop(int(order[j])), held

    def _open(self, url: str) -> tuple[Any, ShardReader]:
        fs = self._fs_cache.get(url)
        if fs is None:
            fs = self._fs_cache[url] = storage.resolve(url)
        return open_shard(url, sequential=self.cfg.sequential_io, filesystem=fs)

    def _read_inputs(self, segments: Sequence[Segment], want: Callable[[int], bool]
                     ) -> Iterator[tuple[int, _Source | None]]:
        """Yield ``(input index, source or None)`` for every input of ``segments`` in order.

        Inputs for which ``want`` is false are skipped at the tar-header level (None); a shard that cannot
        be read yields corrupt sources for the samples it should have held.
        """
        offsets = self._gofs
        idx = 0
        for seg in segments:
            spec = self.shards[seg.shard]
            n = len(seg)
            if not any(want(i) for i in range(idx, idx + n)):
                for i in range(idx, idx + n):
                    yield i, None
                idx += n
                continue
            done = 0
            error: str | None = None
            f = None
            try:
                f, reader = self._open(spec.url)
                for raw in reader.samples():
                    if raw.index < seg.start:
                        continue
                    if raw.index >= seg.stop:
                        break
                    i = idx + raw.index - seg.start
                    gid = int(offsets[seg.shard]) + raw.index
                    yield i, (self._train_source(reader, raw, spec.url, gid) if want(i) else None)
                    done += 1
                if done < n:
                    error = (f"shard ended after {seg.start + done} samples; the plan expects {spec.samples} "
                             "(manifest out of date?)")
            except (OSError, ShardFormatError) as exc:
                error = f"unreadable shard ({exc})"
            finally:
                if f is not None:
                    f.close()
            for k in range(done, n):
                i = idx + k
                gid = int(offsets[seg.shard]) + seg.start + k
                yield i, (_Source(index=gid, shard=spec.url, key=f"#{seg.start + k}", error=error)
                          if want(i) else None)
            idx += n

    def _train_source(self, reader: ShardReader, raw: RawSample, url: str, gid: int) -> _Source:
        cfg = self.cfg
        try:
            meta, label = _check_meta(raw)
            n = meta["num_frames"]
            step = cfg.step_for(int(meta.get("stride", 1)))
            clip = random_clip(n, cfg.clip_len, step, CounterRng(cfg.seed, self.epoch, TAG_TIME, gid))
            ((jpegs, gather),) = _read_frames(reader, raw, meta["offsets"], [clip])
        except (ValueError, ShardFormatError) as exc:
            return _Source(index=gid, shard=url, key=raw.key, error=str(exc))
        return _Source(index=gid, shard=url, key=raw.key, label=label, jpegs=jpegs, gather=gather)

    # -- val / eval: items in shard order, then padding -------------------------------------------------

    def _item_outputs(self, plan: StreamPlan, start: int) -> Iterator[tuple[int, _Source, None]]:
        j = 0
        runs: list[list[EvalItem]] = []
        for item in plan.eval_items:
            if runs and runs[-1][0].shard == item.shard:
                runs[-1].append(item)
            else:
                runs.append([item])
        first = plan.stream * self.planner().per_stream  # item position of this stream's first item
        for run in runs:
            if j + len(run) <= start:  # entirely before the resume point: not even opened
                j += len(run)
                continue
            for src in self._run_sources(run, first + j):
                if j >= start:
                    yield j, src, None
                j += 1
        while j < plan.items:
            if j >= start:
                yield j, _Source(index=-1, shard="", key="", pad=True), None
            j += 1

    def _run_sources(self, run: list[EvalItem], base: int) -> Iterator[_Source]:
        """Sources for the items of one shard, in the shard's stored order (window order per video).

        ``base`` is the item position of ``run[0]``; a source's ``index`` is its item's position.
        """
        url = self.shards[run[0].shard].url
        wanted: dict[str, list[tuple[int, EvalItem]]] = {}
        for pos, item in enumerate(run):
            wanted.setdefault(item.key, []).append((pos, item))
        f = None
        error: str | None = None
        try:
            f, reader = self._open(url)
            for raw in reader.samples():
                items = wanted.pop(raw.key, None)
                if items is None:
                    continue
                yield from self._video_sources(reader, raw, url, items, base)
                if not wanted:
                    break
        except (OSError, ShardFormatError) as exc:
            error = f"unreadable shard ({exc})"
        finally:
            if f is not None:
                f.close()
        for key, items in wanted.items():  # listed in the manifest but not (readably) in the shard
            for pos, item in items:
                yield _Source(index=base + pos, shard=url, key=key, window=item.window,
                              error=error or "not found in the shard (manifest out of date?)")

    def _video_sources(self, reader: ShardReader, raw: RawSample, url: str,
                       items: list[tuple[int, EvalItem]], base: int) -> Iterator[_Source]:
        cfg = self.cfg
        try:
            meta, label = _check_meta(raw)
            n = meta["num_frames"]
            planned = items[0][1]
            stride = int(meta.get("stride", 1))
            if (n, stride) != (planned.num_frames, planned.stride):
                raise ValueError(f"num_frames/stride {n}/{stride} differ from the manifest's "
                                 f"{planned.num_frames}/{planned.stride}")
            step = cfg.step_for(stride)
            clips = [center_clip(n, cfg.clip_len, step) if cfg.mode == "val"
                     else eval_window(item.window, n, cfg.clip_len, step) for _, item in items]
            frames = _read_frames(reader, raw, meta["offsets"], clips)
        except (ValueError, ShardFormatError) as exc:
            for pos, item in items:
                yield _Source(index=base + pos, shard=url, key=raw.key, window=item.window, error=str(exc))
            return
        for (pos, item), (jpegs, gather) in zip(items, frames, strict=True):
            yield _Source(index=base + pos, shard=url, key=raw.key, label=label, jpegs=jpegs, gather=gather,
                          window=item.window)


# -- the loader the trainer uses --------------------------------------------------------------------


class ClipLoader:
    """Owns the DataLoader of a :class:`ClipStream` and the loader's position within the epoch.

    ``for batch in loader`` yields ``len(loader)`` batches (see :mod:`training.data.stream` for their
    contents) and then advances to the next epoch. ``state_dict()`` saved with a checkpoint records the
    epoch and the batches handed out; ``load_state_dict()`` makes the next iteration continue exactly
    there. ``set_epoch(e)`` (DistributedSampler style) keeps the position when ``e`` is the current epoch.

    Keyword arguments go to ``torch.utils.data.DataLoader`` (``pin_memory``, ``prefetch_factor``,
    ``multiprocessing_context``, ``timeout``...). A fresh DataLoader is made per epoch: workers must learn
    the epoch and resume position, which persistent workers would not.
    """

    def __init__(self, dataset: ClipStream, **dataloader_kwargs: Any):
        self.dataset = dataset
        self.kwargs = dataloader_kwargs
        for bad in ("batch_size", "shuffle", "sampler", "num_workers", "persistent_workers", "collate_fn",
                    "in_order"):
            # in_order: resume relies on the DataLoader taking batches from its workers round-robin.
            if bad in dataloader_kwargs:
                raise ValueError(f"{bad} is decided by the LoaderConfig/ClipStream, not passed to ClipLoader")
        self._epoch = dataset.epoch
        self._done = 0
        self._corrupt = [0] * dataset.cfg.workers

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def batches_done(self) -> int:
        return self._done

    @property
    def corrupt_seen(self) -> int:
        """Corrupt samples met by this rank so far in the current epoch."""
        return sum(self._corrupt)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch = epoch
            self._done = 0
            self._corrupt = [0] * self.dataset.cfg.workers

    def __len__(self) -> int:
        self.dataset.set_epoch(self._epoch)
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        cfg = ds.cfg
        ds.set_epoch(self._epoch)
        total = len(ds)
        if self._done >= total > 0:  # the saved position was the end of the epoch
            self.set_epoch(self._epoch + 1)
            ds.set_epoch(self._epoch)
            total = len(ds)
        ds.set_start(self._done, self._corrupt)
        loader = DataLoader(ds, batch_size=None, num_workers=cfg.num_workers, **self.kwargs)
        workers = cfg.workers
        it = iter(loader)
        try:
            for batch in it:
                self._corrupt[self._done % workers] += int(batch["corrupt"].sum())
                self._done += 1
                yield batch
        finally:
            # Stop the workers now rather than whenever the garbage collector finds the iterator (an
            # exception's traceback keeps it alive, and a late shutdown waits seconds on each worker).
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del it
        if self._done != total:
            raise RuntimeError(f"rank {ds.rank} got {self._done} batches in epoch {self._epoch}, "
                               f"planned {total}")
        self.set_epoch(self._epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "epoch": self._epoch,
            "batches_done": self._done,
            "corrupt_per_worker": list(self._corrupt),
            "fingerprint": ds.fingerprint(),
            "rank": ds.rank,
            "world_size": ds.world_size,
            "num_workers": ds.cfg.num_workers,
            "batch_size": ds.cfg.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ds = self.dataset
        cfg = ds.cfg
        now = {"world_size": ds.world_size, "num_workers": cfg.num_workers, "batch_size": cfg.batch_size}
        changed = [f"{k} {state.get(k)} → {v}" for k, v in now.items() if state.get(k) != v]
        if changed or state.get("fingerprint") != ds.fingerprint():
            raise ValueError("cannot resume mid-epoch: the loader position was saved with a different "
                             f"{', '.join(changed) or 'shard list or sampling config'}; restore those "
                             "settings, or resume at the start of the next epoch with "
                             "set_epoch(state['epoch'] + 1)")
        self._epoch = int(state["epoch"])
        self._done = int(state["batches_done"])
        self._corrupt = list(state.get("corrupt_per_worker") or [0] * ds.cfg.workers)
