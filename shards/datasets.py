"""Per-dataset facts, defined once: the :data:`DATASET_SPECS` table that preprocessing, training and the CLI read.

In the bottom layer so that every stage (``preprocess/``, ``training/``, ``pipeline/``) can import it.
Units: strides in frames (``stored_stride`` source frames per stored frame; ``source_stride`` source frames
between the frames of a training clip), ``native_fps`` frames per second, ``shard_size`` videos per shard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the datasets the pipeline knows.

    Attributes:
        name: registry key (``kinetics600``, ``jester``, ``ucf101``).
        kind: ``video`` (one file per video) or ``frames`` (one folder of JPEGs per video).
        splits: every split the dataset's list files define, in their usual order.
        train_split, val_split: the splits training uses by default (as named in the shard manifests).
        stored_stride: temporal stride applied when preprocessing (Jester keeps every second frame).
        source_stride: stride in source frames that training clips are sampled at (paper: Jester takes 16
            frames out of 32); the loader turns it into stored frames per video.
        flip_safe: whether a left/right flip keeps the label (Jester's Swiping_Left/Right would swap).
        normalization: normalisation preset for training from scratch (``training.data.normalize``).
        shard_size: default videos per shard.
        native_fps: frame rate of a ``frames`` dataset (it has no container to say it); None for videos.
        classes_file: list file naming the classes, relative to the dataset root.
        list_file: ``split -> path`` (relative to the root) of the list file of a split.
        media_dir: folder (relative to the root) holding every video or frame folder; None when the videos
            sit in per-split folders named like the splits (Kinetics).
        released_classes: class count of the released checkpoints trained on it; None when there are none.
        released_name: what the released-checkpoint loader calls it (``kinetics``, ``jester``).
        released_normalization: preset the released checkpoints expect; None when there are none.
        eval_windows: which windows of a video the evaluation scores (``e3d eval``, a run's final evaluation,
            ``e3d predict``): ``all`` non-overlapping windows with their scores averaged (the paper's
            Kinetics-600 and UCF-101 protocol) or ``center``, the middle window only (the released code's
            Jester protocol: ``n_val_samples 1`` over the middle 32 frames, whose accuracy the paper reports).
    """

    name: str
    kind: str
    splits: tuple[str, ...]
    train_split: str
    val_split: str
    stored_stride: int
    source_stride: int
    flip_safe: bool
    normalization: str
    shard_size: int
    native_fps: float | None
    classes_file: str
    list_file: Callable[[str], str]
    media_dir: str | None = None
    released_classes: int | None = None
    released_name: str | None = None
    released_normalization: str | None = None
    eval_windows: str = "all"


#: The values of ``DatasetSpec.eval_windows`` (what ``--windows`` offers besides ``auto``, the dataset's own).
EVAL_WINDOWS = ("all", "center")

UCF_LISTS = "ucfTrainTestlist"

DATASET_SPECS: dict[str, DatasetSpec] = {
    "kinetics600": DatasetSpec(
        name="kinetics600", kind="video", splits=("train", "val", "test"), train_split="train",
        val_split="val", stored_stride=1, source_stride=1, flip_safe=True, normalization="paper",
        shard_size=100, native_fps=None, classes_file="kinetics-600_train.csv",
        list_file=lambda split: f"kinetics-600_{split}.csv", released_classes=600, released_name="kinetics",
        released_normalization="released-kinetics600"),
    "jester": DatasetSpec(
        name="jester", kind="frames", splits=("train", "validation", "test"), train_split="train",
        val_split="validation", stored_stride=2, source_stride=2, flip_safe=False, normalization="paper",
        shard_size=1000, native_fps=12.0, classes_file="jester-v1-labels.csv",
        list_file=lambda split: f"jester-v1-{split}.csv", media_dir="20bn-jester-v1", released_classes=27,
        released_name="jester", released_normalization="released-jester", eval_windows="center"),
    "ucf101": DatasetSpec(
        name="ucf101", kind="video", splits=("train1", "test1", "train2", "test2", "train3", "test3"),
        train_split="train1", val_split="test1", stored_stride=1, source_stride=1, flip_safe=True,
        normalization="paper", shard_size=64, native_fps=None, classes_file=f"{UCF_LISTS}/classInd.txt",
        list_file=lambda split: f"{UCF_LISTS}/{split[:-1]}list0{split[-1]}.txt", media_dir="UCF-101"),
}

#: Dataset names, in the table's order.
DATASETS: tuple[str, ...] = tuple(DATASET_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return DATASET_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def released_spec(*, num_classes: int | None = None, released_name: str | None = None) -> DatasetSpec | None:
    """The dataset whose released checkpoints have ``num_classes`` outputs or are called ``released_name``."""
    for spec in DATASET_SPECS.values():
        if spec.released_classes is not None and (num_classes == spec.released_classes
                                                  or released_name == spec.released_name):
            return spec
    return None
