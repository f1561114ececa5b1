"""Loader configuration: one frozen dataclass, with the per-dataset policies of the paper (section 3.2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shards.datasets import DATASET_SPECS, DATASETS

MODES = ("train", "val", "eval")
#: ``DatasetSpec.eval_windows`` -> the loader mode that reads those windows: every non-overlapping window
#: (``eval``) or the middle one (``val``, the same clip validation scores).
WINDOW_MODES = {"all": "eval", "center": "val"}


def evaluation_mode(dataset: str) -> str:
    """The loader mode of ``dataset``'s evaluation protocol (``eval`` or ``val``; see ``DatasetSpec``)."""
    return WINDOW_MODES[DATASET_SPECS[dataset].eval_windows]

#: Crop scales of the multi-scale crop, as fractions of the short side: 1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2.
MULTISCALE = tuple(2.0 ** (-i / 4) for i in range(5))

# Per-dataset policies (flip safety, source stride) come from shards.datasets.DATASET_SPECS. Jester's classes
# depend on left/right (``Swiping_Left``/``Swiping_Right``), so a flipped Jester clip would carry the wrong
# label (the released code flips Jester anyway, a bug); Jester clips take 16 frames out of 32 (source stride
# 2), and as its shards are stored at stride 2 the step left at load time is ``source_stride / meta["stride"]``.


@dataclass(frozen=True)
class LoaderConfig:
    """Everything that determines which clips a rank gets, and how they look.

    Temporal units are **stored frames** (what a shard holds). ``downsample`` is the step between the
    frames of a clip in stored frames; when ``source_stride`` is set it overrides ``downsample`` per video
    as ``source_stride // meta["stride"]``, so the same config reads Jester shards stored at stride 2
    (step 1) or at full rate (step 2).

    Attributes:
        dataset: ``kinetics600``, ``jester`` or ``ucf101``; sets the flip policy.
        mode: ``train`` (random clip, multi-scale crop, flip where allowed, shuffled), ``val`` (centre
            clip, centre crop) or ``eval`` (every non-overlapping window of every video, centre crop).
        clip_len: frames per clip (T).
        downsample: step between clip frames, in stored frames.
        source_stride: step in source frames; None uses ``downsample`` as is.
        size: output side in pixels (H = W).
        scales: multi-scale crop scales (fractions of the short side).
        crop_position: ``random`` (any position) or ``corner`` (one of c/tl/tr/bl/br, the released code's
            ``MultiScaleCornerCrop``).
        hflip: flip with p = 0.5 in training; None takes the dataset policy, True is refused for Jester.
        batch_size: clips per batch (per rank; the loader batches inside its workers).
        num_workers: DataLoader worker processes per rank (0: iterate in the main process).
        drop_last: drop the samples that do not fill a last batch; None means True in training (no
            short batches) and False in val/eval (every video counted; the last batches are shorter).
        shuffle_buffer: training shuffle buffer in clips (each holds only its clip's JPEG bytes).
        seed: base seed; every random choice is a function of (seed, epoch, sample).
        max_corrupt: corrupt samples a worker tolerates per epoch before failing, at least ...
        max_corrupt_fraction: ... or this fraction of the worker's samples, whichever is larger.
        fast_decode: libjpeg-turbo's fast IDCT and chroma upsampling (~7 % faster, slightly lower quality).
        sequential_io: stream shards instead of seeking; None: seek on local disks, stream elsewhere.
        num_classes: labels must lie in ``[-1, num_classes)``; a sample outside is corrupt (None: unchecked).
        use_index: read clips from object storage by ranges through the shard's index when it has one.
        io_threads: ranged requests in flight per DataLoader worker (object storage).
        io_window: clip reads issued ahead of the consumer per worker; None: ``4 × io_threads``.
        cache_dir: local shard cache directory (object storage; shared by the processes of a node); None: off.
        cache_gb: the cache's size cap in GB (10^9 bytes); a cache too small for a shard is bypassed.
        verify_shards: check each shard against the manifest's sha256 the first time a process opens it;
            None: on for object storage, off for local disks (see :mod:`shards.access`).
        io_retries: attempts per object-store read on transient errors (backoff with jitter between them),
            after which the sample counts as corrupt.
    """

    dataset: str
    mode: str = "train"
    clip_len: int = 16
    downsample: int = 1
    source_stride: int | None = None
    size: int = 112
    scales: tuple[float, ...] = MULTISCALE
    crop_position: str = "random"
    hflip: bool | None = None
    batch_size: int = 32
    num_workers: int = 0
    drop_last: bool | None = None
    shuffle_buffer: int = 1000
    seed: int = 0
    max_corrupt: int = 8
    max_corrupt_fraction: float = 0.001
    fast_decode: bool = False
    sequential_io: bool | None = None
    num_classes: int | None = None
    use_index: bool = True
    io_threads: int = 8
    io_window: int | None = None
    cache_dir: str | None = None
    cache_gb: float = 100.0
    verify_shards: bool | None = None
    io_retries: int = 5

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.hflip and not DATASET_SPECS[self.dataset].flip_safe:
            raise ValueError(f"hflip=True is refused for {self.dataset}: its classes include left/right "
                             "gestures, so a flipped clip would carry the wrong label")
        for name in ("clip_len", "downsample", "size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.source_stride is not None and self.source_stride < 1:
            raise ValueError(f"source_stride must be >= 1, got {self.source_stride}")
        if self.num_workers < 0 or self.shuffle_buffer < 0 or self.max_corrupt < 0:
            raise ValueError("num_workers, shuffle_buffer and max_corrupt must be >= 0")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")
        if self.crop_position not in ("random", "corner"):
            raise ValueError(f"crop_position must be 'random' or 'corner', got {self.crop_position!r}")
        if not 0 <= self.max_corrupt_fraction <= 1:
            raise ValueError("max_corrupt_fraction must be within [0, 1]")
        if self.io_threads < 1 or (self.io_window is not None and self.io_window < 1) or self.cache_gb < 0 \
                or self.io_retries < 1:
            raise ValueError("io_threads, io_window and io_retries must be >= 1 and cache_gb >= 0")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def access_config(self, dataset_bytes: int | None = None):
        """The :class:`shards.access.AccessConfig` of these settings (``dataset_bytes``: the shards' total)."""
        from shards.access import AccessConfig
        from shards.ranged import RetryPolicy

        return AccessConfig(threads=self.io_threads, window=self.io_window, cache_dir=self.cache_dir,
                            cache_bytes=int(self.cache_gb * 1e9), verify=self.verify_shards,
                            dataset_bytes=dataset_bytes, retry=RetryPolicy(attempts=self.io_retries))

    @classmethod
    def for_dataset(cls, dataset: str, mode: str = "train", **overrides) -> LoaderConfig:
        """The paper's settings for a dataset: 16-frame clips at the dataset's source stride, 112 px."""
        spec = DATASET_SPECS.get(dataset)
        overrides.setdefault("source_stride", spec.source_stride if spec else None)
        return cls(dataset=dataset, mode=mode, **overrides)

    def replace(self, **changes) -> LoaderConfig:
        return dataclasses.replace(self, **changes)

    @property
    def flip(self) -> bool:
        """Whether training clips are flipped with p = 0.5 (never outside training, never for Jester)."""
        if self.mode != "train":
            return False
        return DATASET_SPECS[self.dataset].flip_safe if self.hflip is None else self.hflip

    @property
    def workers(self) -> int:
        """Streams per rank: ``num_workers``, or 1 when the main process iterates."""
        return max(1, self.num_workers)

    @property
    def drops_last(self) -> bool:
        return self.mode == "train" if self.drop_last is None else self.drop_last

    def step_for(self, stored_stride: int) -> int:
        """Step between clip frames in stored frames, for a video stored at ``stored_stride``."""
        if self.source_stride is None:
            return self.downsample
        if stored_stride < 1 or self.source_stride % stored_stride:
            raise ValueError(f"a video stored at stride {stored_stride} cannot give clips at source stride "
                             f"{self.source_stride}; set source_stride=None and choose downsample")
        return self.source_stride // stored_stride
