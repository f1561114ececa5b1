"""Streaming clip loader: shards → uint8 clip batches for every DDP rank and DataLoader worker.

Shape: :class:`ClipStream` (the rank's dataset: shards, config, rank) → ``at(epoch, batches_done)`` gives an
immutable :class:`EpochStream` that a DataLoader's workers iterate; each worker builds the
:class:`~training.data.stages.EpochContext` of the stream it plays (config, epoch, plan, file systems,
decode buffers, corrupt budget) and :func:`run_stream` drives the stages of :mod:`training.data.stages` over
:class:`~training.data.stages.Sample` records. What differs between train / val / eval is one strategy
object per mode (:mod:`training.data.modes`: plan, slots, clip placement, corrupt replacement).
:class:`ClipLoader` is the only owner of the position within an epoch::

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
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import storage
from shards.access import ShardAccess
from shards.reader import scan_shard
from training.data.config import LoaderConfig
from training.data.modes import Mode, mode_for
from training.data.plan import ItemPlanner, ShardSpec, TrainPlanner, fingerprint, sort_shards
from training.data.stages import (
    BatchBuilder,
    CorruptBudget,
    CorruptDataError,
    CorruptSampleWarning,
    EpochContext,
    Sample,
    batch_tensor,
    decode_into,
)

__all__ = [
    "ClipLoader",
    "ClipStream",
    "EpochStream",
    "CorruptDataError",
    "CorruptSampleWarning",
    "ShardSpec",
    "scan_shard_specs",
    "shard_specs",
]


# -- shard lists ------------------------------------------------------------------------------------------


def shard_specs(root: str, split: str, *, videos: bool = True) -> list[ShardSpec]:
    """Shard specs of a split from its Parquet manifests (``manifest/<split>/{shards,videos}.parquet``).

    ``videos=False`` skips the per-video table (training needs only sample counts).
    """
    from shards import manifest

    table = manifest.read_table(root, split, "shards")
    # index_path/index_sha256 are absent from manifests written before indexes existed.
    cols = [c for c in ("path", "samples", "bytes", "sha256", "index_path", "index_sha256") if c in table.column_names]
    rows = table.select(cols).to_pylist()
    urls = manifest.shard_urls(root, split)
    prefix = storage.canonical(root)
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
        index = row.get("index_path")
        specs.append(ShardSpec(url=url, samples=int(row["samples"]), videos=vids, bytes=row.get("bytes"),
                               sha256=row.get("sha256"), index_url=storage.join(prefix, index) if index else None,
                               index_sha256=row.get("index_sha256")))
    return specs


def scan_shard_specs(urls: Sequence[str]) -> list[ShardSpec]:
    """Shard specs from the shards themselves (reads every sample's metadata; for data without manifests)."""
    specs = []
    for url in urls:
        vids = tuple(scan_shard(url))
        specs.append(ShardSpec(url=url, samples=len(vids), videos=vids))
    return specs


# -- the dataset --------------------------------------------------------------------------------------


def _dist_default() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ClipStream(IterableDataset):
    """Iterable dataset of clip batches for one rank (use with ``DataLoader(batch_size=None)``).

    Args:
        shards: the split's shards (:func:`shard_specs`); any order, every rank must pass the same set.
        cfg: the :class:`LoaderConfig`; its ``num_workers`` must equal the DataLoader's.
        rank, world_size: this rank's place among the data-parallel ranks; by default from
            ``torch.distributed`` when initialised, else 0 and 1. Pass them to simulate any world size.

    Iterating it runs epoch :attr:`epoch` (``set_epoch``) from its start. :class:`ClipLoader`, which owns the
    position within an epoch, iterates :meth:`at` instead.
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
        self.mode = mode_for(cfg)
        self.shards = sort_shards(shards)
        if not self.shards:
            raise ValueError("no shards given")
        self.epoch = 0
        self.first_ids = np.cumsum([0] + [s.samples for s in self.shards])  # global id of each shard's 1st sample
        # Object-storage access (ranged reads, cache, verification); each DataLoader worker unpickles its own.
        sizes = [sp.bytes for sp in self.shards]
        self.access = ShardAccess(cfg.access_config(dataset_bytes=None if None in sizes else sum(sizes)))

    @property
    def streams(self) -> int:
        return self.world_size * self.cfg.workers

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that iterating this dataset directly runs."""
        self.epoch = epoch

    def planner(self, epoch: int | None = None) -> TrainPlanner | ItemPlanner:
        """The plan of ``epoch`` (default: :attr:`epoch`) for all streams; computed afresh, cheap."""
        return self.mode.planner(self.shards, self.cfg, self.epoch if epoch is None else epoch, self.streams)

    def batches(self, epoch: int) -> int:
        """Batches this rank yields in ``epoch`` (the same on every rank)."""
        return self.planner(epoch).batches * self.cfg.workers

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self.batches(self.epoch)

    def fingerprint(self) -> str:
        return fingerprint(self.shards, self.cfg, self.world_size)

    def at(self, epoch: int, batches_done: int = 0, corrupt_per_worker: Sequence[int] | None = None
           ) -> EpochStream:
        """The dataset of ``epoch`` starting after ``batches_done`` batches of this rank (mid-epoch resume)."""
        if batches_done and not 0 <= batches_done <= self.batches(epoch):  # 0 needs no plan (lazy errors)
            raise ValueError(f"batches_done {batches_done} outside [0, {self.batches(epoch)}]")
        prior = tuple(corrupt_per_worker) if corrupt_per_worker else (0,) * self.cfg.workers
        return EpochStream(self, epoch, batches_done, prior)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.at(self.epoch))


class EpochStream(IterableDataset):
    """One epoch of a :class:`ClipStream` from a fixed position: what a DataLoader's workers iterate.

    Immutable; each worker builds the :class:`EpochContext` of the stream it plays and runs the stages.
    """

    def __init__(self, stream: ClipStream, epoch: int, start: int, prior_corrupt: tuple[int, ...]):
        super().__init__()
        self.stream = stream
        self.epoch = epoch
        self.start = start
        self.prior_corrupt = prior_corrupt

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds, cfg = self.stream, self.stream.cfg
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if nw != cfg.workers:
            raise ValueError(f"LoaderConfig.num_workers={cfg.num_workers} but the DataLoader runs {nw} "
                             "worker(s); build the DataLoader with the config's num_workers (or use "
                             "ClipLoader)")
        if info is not None:
            import cv2

            cv2.setNumThreads(1)  # one worker = one core; OpenCV's pool would oversubscribe
        # The DataLoader takes batches from workers round-robin starting at worker 0. After a resume at
        # batch b the next batch belongs to stream b mod W, so worker w plays stream (w + b) mod W.
        logical = (wid + self.start) % nw
        skip = len(range(logical, self.start, nw))
        ctx = self._context(ds.rank * nw + logical, logical, shared=info is not None)
        yield from run_stream(ctx, ds.mode, skip)

    def _context(self, stream: int, logical: int, *, shared: bool) -> EpochContext:
        ds, cfg = self.stream, self.stream.cfg
        plan = ds.planner(self.epoch).stream(stream)
        where = f"stream {stream} (rank {ds.rank}, worker {logical}) of epoch {self.epoch}"
        seen = self.prior_corrupt[logical] if logical < len(self.prior_corrupt) else 0
        budget = CorruptBudget(allowed=max(cfg.max_corrupt, int(cfg.max_corrupt_fraction * plan.items)),
                               seen=seen, where=where, cfg=cfg)
        return EpochContext(cfg=cfg, epoch=self.epoch, shards=ds.shards, first_ids=ds.first_ids, plan=plan,
                            budget=budget, shared=shared, access=ds.access)


def run_stream(ctx: EpochContext, mode: Mode, skip_batches: int) -> Iterator[dict[str, Any]]:
    """The batches of one stream, after skipping its first ``skip_batches``: the mode's slots decoded into
    batch slots, corrupt samples reported and replaced as the mode says."""
    cfg, plan = ctx.cfg, ctx.plan
    n_out = min(plan.items, plan.batches * cfg.batch_size)
    start = skip_batches * cfg.batch_size
    if start >= n_out:
        return
    batch: BatchBuilder | None = None
    for j, sample, held in mode.slots(ctx, start, n_out):
        if j >= n_out:
            break
        if batch is None:
            n = min(cfg.batch_size, n_out - j)
            batch = BatchBuilder(batch_tensor((n, 3, cfg.clip_len, cfg.size, cfg.size), ctx.shared))
        fill_slot(ctx, mode, batch, sample, held)
        if batch.full():
            yield batch.finish()
            batch = None


def fill_slot(ctx: EpochContext, mode: Mode, batch: BatchBuilder, sample: Sample,
              held: dict[int, Sample] | None) -> None:
    """Write ``sample``'s clip into the batch's next slot: padding is a zero clip, a corrupt sample is
    counted against the budget and replaced by the mode's choice (or a zero clip with ``valid = False``)."""
    out = batch.next_slot()
    if sample.pad:
        out[...] = 0
        batch.add(sample, index=-1, valid=False)
        return
    if sample.error is None:
        err = decode_into(ctx, sample, out, mode.place(ctx, sample.index))
        if err is None:
            batch.add(sample, index=sample.index)
            return
        sample.error = err
    ctx.budget.report(sample)
    donor = mode.replace_corrupt(ctx, sample, out, held)
    if donor is None:
        out[...] = 0
        batch.add(sample, index=sample.index, valid=False, corrupt=True)
    else:
        batch.add(donor, index=sample.index, corrupt=True)


# -- the loader the trainer uses --------------------------------------------------------------------


class ClipLoader:
    """Owns the DataLoader of a :class:`ClipStream` and the loader's position within the epoch (the only owner).

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
        """Batches of the current epoch (changes nothing)."""
        return self.dataset.batches(self._epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        cfg = ds.cfg
        total = ds.batches(self._epoch)
        if self._done >= total > 0:  # the saved position was the end of the epoch
            self.set_epoch(self._epoch + 1)
            total = ds.batches(self._epoch)
        epoch = ds.at(self._epoch, self._done, self._corrupt)
        workers = cfg.workers
        it = iter(DataLoader(epoch, batch_size=None, num_workers=cfg.num_workers, **self.kwargs))
        try:
            for batch in it:
                self._corrupt[self._done % workers] += int(batch["corrupt"].sum())
                self._done += 1
                yield batch
        finally:
            # Drop the only reference to the iterator now, so its workers stop at once (its finaliser shuts
            # them down) rather than when the garbage collector finds it: an exception's traceback keeps
            # this frame, and a late shutdown waits seconds on each worker.
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
