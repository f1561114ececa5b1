"""Streaming clip loader (issue 4): shards → uint8 clip batches for DDP training and evaluation.

Typical use on each rank::

    from training.data import (ClipLoader, ClipNormalizer, ClipStream, LoaderConfig, normalization_for,
                               shard_specs)

    cfg = LoaderConfig.for_dataset("kinetics600", "train", batch_size=64, num_workers=8, seed=1)
    loader = ClipLoader(ClipStream(shard_specs(root, "train", videos=False), cfg), pin_memory=True)
    norm = ClipNormalizer(normalization_for("kinetics600")).to(device)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:                       # len(loader) batches, identical on every rank
            x = norm(batch["clips"].to(device, non_blocking=True))
            ...
        # checkpoint: {"loader": loader.state_dict(), ...}; resume: loader.load_state_dict(...)
"""

from training.data.config import MULTISCALE, LoaderConfig
from training.data.normalize import PRESETS, ClipNormalizer, InputConvention, normalization_for
from training.data.plan import ShardSpec
from training.data.stream import (
    ClipLoader,
    ClipStream,
    CorruptDataError,
    CorruptSampleWarning,
    EpochStream,
    scan_shard_specs,
    shard_specs,
)

__all__ = [
    "MULTISCALE",
    "ClipLoader",
    "ClipNormalizer",
    "ClipStream",
    "CorruptDataError",
    "CorruptSampleWarning",
    "EpochStream",
    "InputConvention",
    "LoaderConfig",
    "PRESETS",
    "ShardSpec",
    "normalization_for",
    "scan_shard_specs",
    "shard_specs",
]
