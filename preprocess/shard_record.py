"""The shard task's record: what one shard task did, per video and for its shard.

:class:`ShardRecord` (with one :class:`VideoRecord` per video) is what :func:`preprocess.shard_task.process_shard`
returns inside a :class:`ShardResult`, what ``preprocess.run`` counts and turns into manifests, and what is written
as ``records/<set>/shard-NNNNNN.json`` for the next run to resume from. That file is input like any other (a
truncated write of an older version, a hand edit, another tool's file under the same name):
:meth:`ShardRecord.from_dict` checks each field's presence, type and range and raises :class:`RecordError`
naming the field, never anything else. ``to_dict`` gives exactly the JSON object the earlier dict-based code
wrote, so records and their bytes do not change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RECORD_VERSION = 1
# Per-video outcome inside a record; "missing"/"unlisted" rows come from the listing, never from a task.
VIDEO_STATUSES = ("ok", "failed")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A record file (or dict) that is not a valid shard record; the message names the field and why."""


def _field(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise RecordError(f"{where}: missing field {key!r}")
    return d[key]


def _int(d: Mapping[str, Any], key: str, where: str, *, minimum: int | None = 0) -> int:
    v = _field(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"{where}: {key!r} must be an integer, got {type(v).__name__}")
    if minimum is not None and v < minimum:
        raise RecordError(f"{where}: {key!r} must be >= {minimum}, got {v}")
    return v


def _float(d: Mapping[str, Any], key: str, where: str) -> float:
    v = _field(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise RecordError(f"{where}: {key!r} must be a finite number >= 0, got {v!r}")
    return float(v)


def _str(d: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> Any:
    v = _field(d, key, where)
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise RecordError(f"{where}: {key!r} must be a string, got {type(v).__name__}")
    return v


def _sha256(d: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> str | None:
    v = _str(d, key, where, nullable=nullable)
    if v is not None and not _HEX64.fullmatch(v):
        raise RecordError(f"{where}: {key!r} must be 64 lowercase hex digits")
    return v


def _mapping(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise RecordError(f"{where}: expected an object, got {type(v).__name__}")
    return v


@dataclass(frozen=True)
class SourceStamp:
    """What identified a source's content when it was decoded: total size (bytes), newest mtime (ns), and the
    SHA-256 of its content for sources up to the hash limit (None above it)."""

    size: int
    mtime_ns: int
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256 is not None:
            d["sha256"] = self.sha256
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "source_stamp") -> SourceStamp:
        d = _mapping(d, where)
        sha = _sha256(d, "sha256", where) if "sha256" in d else None
        return cls(size=_int(d, "size", where), mtime_ns=_int(d, "mtime_ns", where, minimum=None), sha256=sha)


@dataclass(frozen=True)
class VideoRecord:
    """One video's outcome in a shard task. ``status`` is ``ok`` (stored in the shard; ``reason`` lists decode
    warnings, "; "-joined) or ``failed`` (``reason`` says why; counts are 0). ``num_frames`` stored frames,
    ``source_frames`` decoded frames, ``stride`` source frames per stored frame, ``fps`` stored frames per
    second, ``width``/``height`` stored pixels. ``source_stamp`` is None when the source was gone when the
    task ran, or in records written before stamps existed."""

    source: str
    key: str
    label: str | None
    label_index: int
    splits: tuple[str, ...]
    status: str
    reason: str
    num_frames: int
    source_frames: int
    stride: int
    fps: float
    width: int
    height: int
    source_stamp: SourceStamp | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "key": self.key, "label": self.label, "label_index": self.label_index,
                "splits": list(self.splits), "status": self.status, "reason": self.reason,
                "num_frames": self.num_frames, "source_frames": self.source_frames, "stride": self.stride,
                "fps": self.fps, "width": self.width, "height": self.height,
                "source_stamp": None if self.source_stamp is None else self.source_stamp.to_dict()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "video") -> VideoRecord:
        d = _mapping(d, where)
        splits = _field(d, "splits", where)
        if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
            raise RecordError(f"{where}: 'splits' must be a non-empty list of strings")
        status = _str(d, "status", where)
        if status not in VIDEO_STATUSES:
            raise RecordError(f"{where}: 'status' must be one of {VIDEO_STATUSES}, got {status!r}")
        stamp = d.get("source_stamp")
        return cls(
            source=_str(d, "source", where), key=_str(d, "key", where), label=_str(d, "label", where, nullable=True),
            label_index=_int(d, "label_index", where, minimum=None), splits=tuple(splits), status=status,
            reason=_str(d, "reason", where), num_frames=_int(d, "num_frames", where),
            source_frames=_int(d, "source_frames", where), stride=_int(d, "stride", where, minimum=1),
            fps=_float(d, "fps", where), width=_int(d, "width", where), height=_int(d, "height", where),
            source_stamp=None if stamp is None else SourceStamp.from_dict(stamp, f"{where}.source_stamp"))


@dataclass(frozen=True)
class ShardRecord:
    """What one shard task produced. ``shard`` is the tar's path relative to the output root (None when no
    video decoded: no tar is written); ``samples`` videos in it, ``frames`` stored and ``decoded_frames``
    decoded frames, ``bytes`` its size and ``sha256`` its digest (None without a tar). ``plan_hash`` ties
    the record to the plan it was built from; None for the in-memory record of a task that failed as a
    whole (never written)."""

    shard_set: str
    index: int
    shard: str | None
    samples: int
    frames: int
    decoded_frames: int
    bytes: int
    sha256: str | None
    videos: tuple[VideoRecord, ...]
    plan_hash: str | None = None
    record_version: int = RECORD_VERSION
    index_path: str | None = None  # the shard's index (shards/index.py), relative to the output root
    index_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``records/<set>/shard-NNNNNN.json`` (written with sorted keys)."""
        return {"record_version": self.record_version, "plan_hash": self.plan_hash, "shard_set": self.shard_set,
                "index": self.index, "shard": self.shard, "samples": self.samples, "frames": self.frames,
                "decoded_frames": self.decoded_frames, "bytes": self.bytes, "sha256": self.sha256,
                "index_path": self.index_path, "index_sha256": self.index_sha256,
                "videos": [v.to_dict() for v in self.videos]}

    @classmethod
    def from_dict(cls, d: Any, where: str = "record") -> ShardRecord:
        """Parse a record read from disk; :class:`RecordError` (naming ``where`` and the field) if it is not one."""
        d = _mapping(d, where)
        version = _int(d, "record_version", where)
        if version != RECORD_VERSION:
            raise RecordError(f"{where}: record_version {version} is not {RECORD_VERSION}")
        videos = _field(d, "videos", where)
        if not isinstance(videos, list):
            raise RecordError(f"{where}: 'videos' must be a list")
        shard = _str(d, "shard", where, nullable=True)
        sha = _sha256(d, "sha256", where, nullable=True)
        if (shard is None) != (sha is None):
            raise RecordError(f"{where}: 'shard' and 'sha256' must both be set or both be null")
        return cls(
            shard_set=_str(d, "shard_set", where), index=_int(d, "index", where), shard=shard,
            samples=_int(d, "samples", where), frames=_int(d, "frames", where),
            decoded_frames=_int(d, "decoded_frames", where), bytes=_int(d, "bytes", where), sha256=sha,
            videos=tuple(VideoRecord.from_dict(v, f"{where}.videos[{i}]") for i, v in enumerate(videos)),
            plan_hash=_sha256(d, "plan_hash", where), record_version=version,
            # absent from records written before shards had an index (e3d index adds them)
            index_path=_str(d, "index_path", where, nullable=True) if "index_path" in d else None,
            index_sha256=_sha256(d, "index_sha256", where, nullable=True) if "index_sha256" in d else None)


@dataclass(frozen=True)
class ShardResult:
    """What a shard task returns to the driver: its record, whether it was ``skipped`` (an identical finished
    record was reused), and for a built shard the task's CPU seconds (this process and its decode process)
    and wall seconds. Timings stay out of the record file so that reruns write identical bookkeeping."""

    record: ShardRecord
    skipped: bool
    cpu_s: float = 0.0
    wall_s: float = 0.0
