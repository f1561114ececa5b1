"""One strategy object per loader mode: what is planned, which clip of a video, where it is cropped, and what
replaces a corrupt sample.

* :class:`TrainMode` — shards shuffled and cut into equal streams, a shuffle buffer, a random clip per sample,
  multi-scale crop and flip (where the dataset allows), a corrupt sample replaced by another clip;
* :class:`ValMode` — one centre clip per video, centre crop, a corrupt sample becomes a zero clip
  (``valid = False``);
* :class:`EvalMode` — as val, but every non-overlapping window of every video.

:func:`mode_for` picks the strategy of a :class:`LoaderConfig` from :data:`MODE_STRATEGIES`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np

from shards.reader import RawSample, ShardFormatError, ShardReader, check_sample
from training.data.config import LoaderConfig
from training.data.plan import (
    TAG_BUFFER,
    TAG_DONOR,
    TAG_SPACE,
    TAG_TIME,
    EvalItem,
    ItemPlanner,
    ShardSpec,
    TrainPlanner,
    seed_for,
)
from training.data.sampling import (
    CounterRng,
    buffered_shuffle_order,
    center_clip,
    eval_window,
    held_at,
    num_windows,
    random_clip,
)
from training.data.stages import (
    CorruptDataError,
    EpochContext,
    Place,
    Sample,
    decode_into,
    read_frames,
    read_run,
    read_segments,
)
from training.data.transforms import center_box, multiscale_crop_box

#: One output position of a stream: ``(position j, sample, shuffle buffer or None)``.
Slot = tuple[int, Sample, "dict[int, Sample] | None"]


class TrainMode:
    """Training: random clips from a shuffle buffer over the stream's segments."""

    name = "train"

    def planner(self, shards: Sequence[ShardSpec], cfg: LoaderConfig, epoch: int, streams: int) -> TrainPlanner:
        return TrainPlanner(shards, cfg, epoch, streams)

    def slots(self, ctx: EpochContext, start: int, n_out: int) -> Iterator[Slot]:
        """Outputs ``start .. n_out-1`` in shuffle-buffer order; samples before ``start`` that were still
        buffered there are re-read, everything else before it is skipped unread."""
        plan = ctx.plan
        rng = random.Random(seed_for(ctx.cfg.seed, ctx.epoch, TAG_BUFFER, plan.stream))
        order, reads = buffered_shuffle_order(plan.items, ctx.cfg.shuffle_buffer, rng)
        keep = set(held_at(order, reads, start)) if start else set()
        first_new = int(reads[start]) if start else 0

        def want(i: int) -> bool:
            return i >= first_new or i in keep

        inputs = read_segments(ctx, plan.segments, want, lambda *a: self._sample(ctx, *a),
                               lambda entry, gid: [self._clip(ctx, entry.num_frames, entry.stride, gid)])
        held: dict[int, Sample] = {}
        nread = 0
        for j in range(start, n_out):
            while nread < reads[j]:
                i, sample = next(inputs)
                nread = i + 1
                if sample is not None:
                    held[i] = sample
            yield j, held.pop(int(order[j])), held

    @staticmethod
    def _clip(ctx: EpochContext, num_frames: int, stride: int, gid: int) -> np.ndarray:
        """The random clip of sample ``gid`` this epoch: a function of ``(seed, epoch, gid)`` only."""
        cfg = ctx.cfg
        rng = CounterRng(cfg.seed, ctx.epoch, TAG_TIME, gid)
        return random_clip(num_frames, cfg.clip_len, cfg.step_for(stride), rng)

    @staticmethod
    def _sample(ctx: EpochContext, reader: ShardReader, raw: RawSample, url: str, gid: int) -> Sample:
        try:
            meta, label = check_sample(raw, num_classes=ctx.cfg.num_classes)
            clip = TrainMode._clip(ctx, meta["num_frames"], meta["stride"], gid)
            ((jpegs, gather),) = read_frames(reader, raw, meta["offsets"], [clip])
        except (ValueError, ShardFormatError) as exc:
            return Sample(index=gid, shard=url, key=raw.key, error=str(exc))
        return Sample(index=gid, shard=url, key=raw.key, label=label, jpegs=jpegs, gather=gather,
                      width=meta.get("width"), height=meta.get("height"))

    def place(self, ctx: EpochContext, index: int) -> Place:
        """Multi-scale crop and flip drawn from ``(seed, epoch, index)``."""
        cfg = ctx.cfg

        def place(h: int, w: int):
            rng = CounterRng(cfg.seed, ctx.epoch, TAG_SPACE, index)
            box = multiscale_crop_box(h, w, rng, cfg.scales, cfg.crop_position)
            return box, cfg.flip and rng.random() < 0.5
        return place

    def replace_corrupt(self, ctx: EpochContext, sample: Sample, out: np.ndarray,
                        held: dict[int, Sample] | None) -> Sample:
        """Fill a corrupt sample's place with another clip (deterministic choice); return the donor.

        Candidates are the samples in the shuffle buffer (the same set in a resumed epoch), tried from a
        random one onwards, augmented with the corrupt sample's crop/flip draws; when the buffer has none
        that decodes, the stream's samples are scanned from its start.
        """
        place = self.place(ctx, sample.index)
        cands = sorted(held or ())
        if cands:
            k = CounterRng(ctx.cfg.seed, ctx.epoch, TAG_DONOR, sample.index).integers(0, len(cands))
            for c in cands[k:] + cands[:k]:
                donor = held[c]
                if donor.error is None:
                    err = decode_into(ctx, donor, out, place)
                    if err is None:
                        return donor
                    donor.error = err  # counted when its own turn comes
        for _, donor in read_segments(ctx, ctx.plan.segments, lambda i: True, lambda *a: self._sample(ctx, *a),
                                      lambda entry, gid: [self._clip(ctx, entry.num_frames, entry.stride, gid)]):
            if donor is not None and donor.error is None and decode_into(ctx, donor, out, place) is None:
                return donor
        raise CorruptDataError(f"no readable sample left in {ctx.budget.where} to replace {sample.key!r} "
                               f"({sample.error})")


class ItemMode:
    """Validation and evaluation: the planned items in shard order, centre crop, then padding."""

    name = ""

    def windows(self, cfg: LoaderConfig, num_frames: int, stride: int) -> int:
        """Items (clips) of a video of ``num_frames`` stored frames at ``stride``."""
        raise NotImplementedError

    def clip(self, cfg: LoaderConfig, item: EvalItem, num_frames: int, step: int) -> np.ndarray:
        """``(T,)`` int64 stored-frame indices of ``item``'s clip."""
        raise NotImplementedError

    def planner(self, shards: Sequence[ShardSpec], cfg: LoaderConfig, epoch: int, streams: int) -> ItemPlanner:
        return ItemPlanner(shards, cfg, epoch, streams, lambda n, stride: self.windows(cfg, n, stride))

    def slots(self, ctx: EpochContext, start: int, n_out: int) -> Iterator[Slot]:
        """The stream's items from position ``start`` (shards wholly before it are not opened), then padding."""
        plan = ctx.plan
        runs: list[list[EvalItem]] = []
        for item in plan.eval_items:
            if runs and runs[-1][0].shard == item.shard:
                runs[-1].append(item)
            else:
                runs.append([item])
        first = plan.stream * plan.items  # item position of this stream's first item
        j = 0
        for run in runs:
            if j + len(run) <= start:
                j += len(run)
                continue
            for sample in read_run(ctx, run, first + j, lambda it, n, step: self.clip(ctx.cfg, it, n, step)):
                if j >= start:
                    yield j, sample, None
                j += 1
        for pad in range(max(j, start), plan.items):
            yield pad, Sample(index=-1, shard="", key="", pad=True), None

    def place(self, ctx: EpochContext, index: int) -> Place:
        return lambda h, w: (center_box(h, w), False)

    def replace_corrupt(self, ctx: EpochContext, sample: Sample, out: np.ndarray,
                        held: dict[int, Sample] | None) -> None:
        """No replacement: the caller writes a zero clip marked invalid."""
        return None


class ValMode(ItemMode):
    """One centre clip per video."""

    name = "val"

    def windows(self, cfg: LoaderConfig, num_frames: int, stride: int) -> int:
        return 1

    def clip(self, cfg: LoaderConfig, item: EvalItem, num_frames: int, step: int) -> np.ndarray:
        return center_clip(num_frames, cfg.clip_len, step)


class EvalMode(ItemMode):
    """Every non-overlapping window of every video."""

    name = "eval"

    def windows(self, cfg: LoaderConfig, num_frames: int, stride: int) -> int:
        return num_windows(num_frames, cfg.clip_len, cfg.step_for(stride))

    def clip(self, cfg: LoaderConfig, item: EvalItem, num_frames: int, step: int) -> np.ndarray:
        return eval_window(item.window, num_frames, cfg.clip_len, step)


Mode = TrainMode | ValMode | EvalMode

MODE_STRATEGIES: dict[str, Mode] = {"train": TrainMode(), "val": ValMode(), "eval": EvalMode()}


def mode_for(cfg: LoaderConfig) -> Mode:
    """The strategy object of ``cfg.mode``."""
    return MODE_STRATEGIES[cfg.mode]
