"""The preprocessing stage's configuration, built once at the CLI edge and saved with every output."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PreprocessConfig:
    """What to preprocess and how.

    ``short_side`` is in pixels (frames are never upscaled); ``quality`` is the JPEG quality (1–100) of
    re-encoded frames; ``shard_size`` is videos per shard (None: the dataset's default); ``max_failed`` is
    the largest tolerated fraction of failed videos among those attempted before the run exits non-zero.
    ``timeout_s`` is the hard wall-clock limit per video (seconds); ``max_frames`` caps the stored frames of one
    video (the rest is not decoded, and the manifest row says so); ``task_memory_mb`` is the memory (MiB) each
    shard task declares to Ray's scheduler.
    """

    dataset: str
    src: str
    out: str
    splits: tuple[str, ...] = ()
    short_side: int | None = 128
    quality: int = 90
    shard_size: int | None = None
    decoder: str = "av"
    max_failed: float = 0.05
    timeout_s: float = 600.0
    max_frames: int = 108_000  # 1 h at 30 stored frames/s
    task_memory_mb: int = 1024
    address: str | None = None
    num_cpus: int | None = None
    progress: bool = True
    force_unlock: bool = False  # take over a stale lease on ``out`` (see shards.lease)

    def __post_init__(self):
        if self.short_side is not None and self.short_side < 16:
            raise ValueError(f"short_side must be >= 16 pixels, got {self.short_side}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.shard_size is not None and self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if not 0.0 <= self.max_failed <= 1.0:
            raise ValueError(f"max_failed must be a fraction in [0, 1], got {self.max_failed}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout_s}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.task_memory_mb < 64:
            raise ValueError(f"task_memory_mb must be >= 64 MiB, got {self.task_memory_mb}")

    def output_fields(self) -> dict:
        """The fields that determine the shards' bytes (saved in dataset.json; run-only fields left out)."""
        d = dataclasses.asdict(self)
        for k in ("src", "out", "splits", "address", "num_cpus", "progress", "max_failed", "timeout_s",
                  "task_memory_mb", "force_unlock"):
            d.pop(k)
        if d["max_frames"] == PreprocessConfig.max_frames:
            d.pop("max_frames")  # outputs written before the cap existed keep matching
        return d
