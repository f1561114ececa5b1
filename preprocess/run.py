"""Preprocess one dataset: list → plan shards → run shard tasks → manifests → summary.

The executor is pluggable: Ray tasks by default (``preprocess.ray_tasks``), in-process for tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from preprocess.config import PreprocessConfig
from preprocess.datasets import Listing, get_adapter, shard_set_name
from preprocess.isolate import InfrastructureError, is_infrastructure_errno
from preprocess.ray_tasks import Executor
from preprocess.shard_record import ShardRecord
from preprocess.shard_task import ShardTask, failed_record, plan_shards
from shards import manifest as mf
from shards import storage, strict_json
from shards.datasets import dataset_spec
from shards.format import FORMAT_VERSION, safe_key
from shards.lease import Lease, LeaseLost


@dataclass(frozen=True)
class SplitSummary:
    split: str
    ok: int
    failed: int
    missing: int
    shards: int
    bytes: int
    frames: int


@dataclass(frozen=True)
class PreprocessSummary:
    dataset: str
    out: str
    splits: tuple[SplitSummary, ...]
    videos_ok: int  # distinct videos (a UCF-101 video is in three splits)
    videos_failed: int
    unlisted: int
    shards_built: int
    shards_skipped: int
    shard_errors: int
    frames_decoded: int
    wall_s: float
    cpu_s: float
    failed_fraction: float
    max_failed: float
    failure_reasons: tuple[tuple[str, int], ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return 1 if self.videos_ok == 0 or self.failed_fraction > self.max_failed else 0

    def format(self) -> str:
        lines = [f"{self.dataset} → {self.out}",
                 f"  {'split':<12}{'ok':>8}{'failed':>8}{'missing':>9}{'shards':>8}{'MB':>10}{'frames':>10}"]
        for s in self.splits:
            lines.append(f"  {s.split:<12}{s.ok:>8}{s.failed:>8}{s.missing:>9}{s.shards:>8}"
                         f"{s.bytes / 1e6:>10.1f}{s.frames:>10}")
        fps = self.frames_decoded / self.wall_s if self.wall_s > 0 else 0.0
        lines.append(f"  unlisted files: {self.unlisted}; shards built {self.shards_built}, skipped (already done) "
                     f"{self.shards_skipped}, task errors {self.shard_errors}")
        listed = sum(s.shards for s in self.splits)
        if listed != self.shards_built + self.shards_skipped + self.shard_errors:
            # UCF-101's three train/test splits list the same videos: a video is stored once, in one shard set
            lines.append(f"  the splits list {listed} shards in all: splits share shard sets (a video in several "
                         f"splits is stored once), so {self.shards_built + self.shards_skipped} shards hold them")
        stride = get_adapter(self.dataset).stride
        kept = (f"; {self.dataset} stores every {stride}{'nd' if stride == 2 else 'th'} frame (temporal stride "
                f"{stride}), hence fewer stored frames above" if stride > 1 else "")
        lines.append(f"  decoded {self.frames_decoded} frames in this run's {self.shards_built} built shards in "
                     f"{self.wall_s:.1f} s = {fps:.0f} frames/s ({self.cpu_s:.1f} CPU-s in tasks){kept}")
        for reason, n in self.failure_reasons[:8]:
            lines.append(f"  failed x{n}: {reason}")
        verdict = "OK" if self.exit_code == 0 else "FAILED"
        lines.append(f"  failed fraction {self.failed_fraction:.1%} (max {self.max_failed:.1%}): {verdict}")
        return "\n".join(lines)


def make_tasks(cfg: PreprocessConfig) -> tuple[Listing, list[ShardTask]]:
    adapter = get_adapter(cfg.dataset)
    spec = dataset_spec(cfg.dataset)
    listing = adapter.list(cfg.src, cfg.splits or None)
    tasks = plan_shards(
        listing,
        src_root=str(storage.resolve(cfg.src)[1]),
        out_root=storage.canonical(cfg.out),
        shard_size=cfg.shard_size or spec.shard_size,
        short_side=cfg.short_side,
        quality=cfg.quality,
        stride=adapter.stride,
        decoder=cfg.decoder,
        native_fps=spec.native_fps,
        timeout_s=cfg.timeout_s,
        max_frames=cfg.max_frames,
    )
    return listing, tasks


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", disable=not enabled, file=sys.stderr, mininterval=0.5,
                dynamic_ncols=True, desc="preprocess")


def preprocess(cfg: PreprocessConfig, executor: Executor | None = None) -> PreprocessSummary:
    """Run (or resume) preprocessing of one dataset and write its shards, manifests and dataset.json."""
    listing, tasks = make_tasks(cfg)
    with _infrastructure(cfg.out):
        lease = Lease(cfg.out, force_unlock=cfg.force_unlock).acquire()  # LeaseHeld: another run owns --out
    try:
        return _preprocess(cfg, listing, tasks, executor, lease)
    except LeaseLost as exc:
        raise InfrastructureError(str(exc)) from exc
    finally:
        lease.release()


def _preprocess(cfg: PreprocessConfig, listing: Listing, tasks: list[ShardTask], executor: Executor | None,
                lease: Lease) -> PreprocessSummary:
    fs, base = storage.resolve(cfg.out)
    with _infrastructure(cfg.out):
        # Under the lease every temporary file belongs to a run that no longer holds it: stale.
        for sub in ("shards", "records", "manifest"):
            storage.remove_stale_temporaries(fs, storage.join(base, sub))

    started_ray = False
    if executor is None:
        import functools

        from preprocess.ray_tasks import init_ray, run_tasks_ray

        started_ray = init_ray(cfg.address, cfg.num_cpus)
        executor = functools.partial(run_tasks_ray, memory_bytes=cfg.task_memory_mb << 20)
    records: list[ShardRecord] = []
    built = skipped = errors = frames_decoded = 0
    cpu_s = 0.0
    ok = failed = 0
    bar = _progress(len(listing.items), cfg.progress)
    t_run = time.monotonic()
    try:
        for task, result in executor(tasks):
            if isinstance(result, BaseException) and is_infrastructure(result):
                # Disk full, permission denied, object store down: no video's fault, so none is marked
                # failed; finished shards keep their records and a rerun resumes after the fix.
                raise InfrastructureError(f"{task.shard_path}: {_first_line(result)}") from result
            if isinstance(result, BaseException):
                errors += 1
                record = failed_record(task, _task_failure(result))
            else:
                record = result.record
                if result.skipped:
                    skipped += 1
                else:
                    built += 1
                    frames_decoded += record.decoded_frames
                    cpu_s += result.cpu_s
            records.append(record)
            n_ok = sum(v.ok for v in record.videos)
            ok += n_ok
            failed += len(record.videos) - n_ok
            el = time.monotonic() - t_run
            bar.set_postfix_str(f"ok={ok} failed={failed} {frames_decoded / max(el, 1e-9):.0f} frames/s")
            bar.update(len(record.videos))
    finally:
        bar.close()
        if started_ray:
            import ray

            ray.shutdown()
    with _infrastructure(cfg.out):
        summary_splits = write_manifests(cfg, listing, records, lease=lease)
    attempted = ok + failed + sum(1 for p in listing.problems if p.status == "failed")
    n_failed = failed + sum(1 for p in listing.problems if p.status == "failed")
    reasons = Counter(_reason_kind(v.reason) for r in records for v in r.videos if not v.ok)
    reasons.update(_reason_kind(p.reason) for p in listing.problems if p.status == "failed")
    return PreprocessSummary(
        dataset=cfg.dataset,
        out=cfg.out,
        splits=summary_splits,
        videos_ok=ok,
        videos_failed=n_failed,
        unlisted=sum(1 for p in listing.problems if p.status == "unlisted"),
        shards_built=built,
        shards_skipped=skipped,
        shard_errors=errors,
        frames_decoded=frames_decoded,
        wall_s=time.monotonic() - t_run,
        cpu_s=cpu_s,
        failed_fraction=n_failed / attempted if attempted else 0.0,
        max_failed=cfg.max_failed,
        failure_reasons=tuple(reasons.most_common()),
    )


def is_infrastructure(exc: BaseException) -> bool:
    """True for an error of the machine (see :class:`InfrastructureError`), also when Ray wraps it."""
    cause = getattr(exc, "cause", None) or exc
    return isinstance(cause, InfrastructureError) or is_infrastructure_errno(cause)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


@contextlib.contextmanager
def _infrastructure(out: str):
    """Turn storage errors of the driver (manifests, dataset.json) into :class:`InfrastructureError`."""
    try:
        yield
    except OSError as exc:
        raise InfrastructureError(f"{out}: {type(exc).__name__}: {exc}") from exc


def _reason_kind(reason: str) -> str:
    """The reason without its details (``unreadable container: <ffmpeg message>`` → ``unreadable container``)."""
    return re.split(r": | \(| \[", reason, maxsplit=1)[0]


def _task_failure(exc: BaseException) -> str:
    """The reason recorded for each video of a shard task that raised ``exc`` even after retries."""
    return f"shard task failed after retries: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def write_manifests(cfg: PreprocessConfig, listing: Listing, records: Sequence[ShardRecord], *,
                    lease: Lease | None = None) -> tuple[SplitSummary, ...]:
    """Write ``manifest/<split>/*.parquet`` for every split of this run, then ``dataset.json``.

    With ``lease``, each write first checks that this run still holds it (:class:`LeaseLost` otherwise), so
    ``dataset.json``'s read-modify-write never interleaves with another run's.
    """
    check = lease.check if lease is not None else (lambda: None)
    per_split: dict[str, mf.Manifest] = defaultdict(mf.Manifest)
    sets_of_split: dict[str, set[str]] = defaultdict(set)
    for rec in sorted(records, key=lambda r: (r.shard_set, r.index)):
        for v in rec.videos:
            for split in v.splits:
                if split not in listing.splits:
                    continue
                per_split[split].videos.append(mf.VideoRow(
                    key=v.key, source=v.source, label=v.label, label_index=v.label_index, split=split,
                    shard_set=rec.shard_set, status=v.status, reason=v.reason, num_frames=v.num_frames,
                    source_frames=v.source_frames, stride=v.stride, fps=v.fps, width=v.width, height=v.height,
                    shard=rec.shard if v.ok else None))
        if rec.shard is None or rec.sha256 is None:
            continue
        for split in rec.shard_set.split("+"):
            if split in listing.splits:
                sets_of_split[split].add(rec.shard_set)
                per_split[split].shards.append(mf.ShardRow(rec.shard, rec.shard_set, rec.samples, rec.frames,
                                                           rec.bytes, rec.sha256, rec.index_path,
                                                           rec.index_sha256))
    unlisted = mf.Manifest()
    for p in listing.problems:
        row = dict(key=safe_key(p.source), source=p.source, label=p.label,
                   label_index=listing.classes.index(p.label) if p.label in listing.classes else -1,
                   shard_set=shard_set_name(p.splits), status=p.status, reason=p.reason)
        if p.status == "unlisted":
            unlisted.videos.append(mf.VideoRow(split="unlisted", **row))
        for split in p.splits:
            if split in listing.splits:
                per_split[split].videos.append(mf.VideoRow(split=split, **row))
    summaries = []
    for split in listing.splits:
        m = per_split[split]
        check()
        mf.write_split(cfg.out, split, m)
        status = Counter(v.status for v in m.videos)
        summaries.append(SplitSummary(split, status["ok"], status["failed"], status["missing"], len(m.shards),
                                      sum(s.bytes for s in m.shards), sum(s.frames for s in m.shards)))
    check()
    mf.write_split(cfg.out, "unlisted", unlisted)
    check()
    _write_dataset_json(cfg, listing, {s: sorted(sets_of_split[s]) for s in listing.splits}, summaries)
    return tuple(summaries)


def _write_dataset_json(cfg: PreprocessConfig, listing: Listing, splits: dict[str, list[str]],
                        summaries: Sequence[SplitSummary]) -> None:
    fs, base = storage.resolve(cfg.out)
    path = storage.join(base, "dataset.json")
    info: dict[str, Any] = {}
    if storage.exists(fs, path):
        info = json.loads(storage.read_bytes(fs, path))
        old = {k: v for k, v in info.get("config", {}).items() if k != "splits"}
        new = {k: v for k, v in cfg.output_fields().items() if k != "splits"}
        if info.get("dataset") != cfg.dataset or old != new or info.get("classes") != list(listing.classes):
            info = {}  # a different dataset or settings: the earlier splits' entries no longer describe it
    counts = dict(info.get("counts", {}))
    counts.update({s.split: {"ok": s.ok, "failed": s.failed, "missing": s.missing, "shards": s.shards,
                             "bytes": s.bytes, "frames": s.frames} for s in summaries})
    all_splits = {**info.get("splits", {}), **splits}
    info = {
        "format_version": FORMAT_VERSION,
        "dataset": cfg.dataset,
        "kind": listing.kind,
        "stride": get_adapter(cfg.dataset).stride,
        "classes": list(listing.classes),
        "splits": dict(sorted(all_splits.items())),
        "counts": dict(sorted(counts.items())),
        "config": cfg.output_fields(),
    }
    storage.write_bytes_atomic(fs, path, strict_json.dumps(info, indent=1, sort_keys=True, ensure_ascii=False).encode())
