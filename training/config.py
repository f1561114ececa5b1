"""Training configuration: one frozen dataclass holding the paper's recipe (section 3.2), every field overridable.

Two presets, built from arguments only in the CLI:

* :meth:`TrainConfig.for_dataset` — training from scratch (Kinetics-600, Jester): SGD with momentum 0.9 and
  dampening 0.9 (the released code's optimizer: the momentum buffer is an EMA of gradients, so the effective
  step is ~lr·g, not 10·lr·g), weight decay 1e-3 on every parameter, lr 0.1, ReduceLROnPlateau ×0.1 on the
  validation loss at most three times, global batch 128 split across workers, dropout 0.2 before the
  classifier, cross-entropy.
* :meth:`TrainConfig.finetune` — UCF-101 from a Kinetics-600 checkpoint: every layer frozen except a new
  head, dropout 0.9, lr 0.01 divided by 10 after epochs 30 and 45, 60 epochs.

Units: ``batch_size`` is clips per optimizer step summed over all workers; ``clip_len`` frames; ``size``
pixels (H = W); epochs and milestones count completed epochs (0-based epoch ``e`` runs with the lr after
``e`` scheduler steps).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shards.datasets import DATASET_SPECS, DATASETS  # noqa: F401  (DATASETS re-exported)

#: (train split, validation split) per dataset, as named in the shard manifests.
DEFAULT_SPLITS = {name: (spec.train_split, spec.val_split) for name, spec in DATASET_SPECS.items()}

#: The settings that decide which clips a run reads, in which order, and when it validates and checkpoints.
#: Runs that agree on all of them can share one decode pass (:func:`training.loop.train_group`); model,
#: recipe (lr, schedule, dropout, ...), normalisation, precision and ``out`` may differ.
DATA_FIELDS = ("dataset", "shards", "train_split", "val_split", "epochs", "batch_size", "clip_len", "size",
               "crop_scales", "crop_position", "loader_workers", "seed", "val_every", "final_eval",
               "checkpoint_every_steps", "max_steps_per_epoch", "use_gpu", "log_every", "profile_steps", "precise_bn")

#: Fields older configs (checkpoints) may hold that this code no longer has; :meth:`TrainConfig.from_dict`
#: drops them. ``fault`` was test-only fault injection, now :class:`training.loop.Hooks`.
RETIRED_FIELDS = ("fault",)

#: Fields a resumed run may change freely (``--resume``): how long, how fast, where and how often it reports.
#: Every other field changes what the run means (model, data, recipe) and is refused on resume unless named
#: with ``--override FIELD`` (:func:`resume_differences`). Worker count and Ray address are not TrainConfig
#: fields: they may change too (the loader position is re-derived at an epoch boundary).
RESUME_MAY_CHANGE = ("epochs", "loader_workers", "checkpoint_every_steps", "log_every", "profile_steps",
                     "final_eval", "out", "use_gpu", "amp", "channels_last")

SCHEDULES = ("plateau", "multistep", "constant", "cosine")
LR_SCALINGS = ("none", "linear")
FINETUNE_MODES = ("none", "last-layer")
CROP_POSITIONS = ("random", "corner")
PRETRAINED_FORMATS = ("auto", "ours", "released")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; stored in every checkpoint (``to_dict``) so a run can be rebuilt.

    Attributes:
        dataset: ``kinetics600``, ``jester`` or ``ucf101`` (loader policies: flip, temporal stride).
        shards: root of the preprocessed dataset (``dataset.json`` + manifests), local path or URI.
        out: run directory for TensorBoard events, metrics JSON, predictions and (direct calls) checkpoints.
        model: registry name (``training.models.list_models()``); ``model_kwargs`` go to its builder.
        train_split, val_split: manifest split names; None takes :data:`DEFAULT_SPLITS`.
        epochs: epochs to train (the released default is 250).
        batch_size: global clips per step, divided evenly among the workers.
        lr, momentum, dampening, weight_decay, nesterov: ``torch.optim.SGD`` settings.
        schedule: ``plateau`` (ReduceLROnPlateau on the validation loss), ``multistep`` (×``lr_gamma`` after
            each epoch in ``milestones``), ``constant``, or ``cosine`` (step-wise: linear warm-up from lr/10 over
            ``warmup_epochs``, then a half cosine to 0 at the last step; :mod:`training.schedule`).
        warmup_epochs: epochs of linear warm-up of the ``cosine`` schedule (0: none).
        lr_scaling: ``none`` uses ``lr`` as given; ``linear`` uses ``lr · batch_size / 128`` (the paper's
            global batch), for a recipe run at another batch size.
        lr_gamma: factor per lr reduction (both schedules).
        plateau_patience: epochs without improvement before a reduction (the released ``lr_patience``).
        plateau_max_reductions: the lr is never reduced below ``lr · lr_gamma ** plateau_max_reductions``.
        milestones: epochs after which the multistep schedule reduces the lr.
        dropout: dropout before the classifier; None keeps the builder's default (ResNets take none).
        clip_len, size: frames per clip and side in pixels (16 and 112 in the paper; smaller for CPU runs).
        crop_scales: training multi-scale crop scales (fractions of the short side); None keeps the paper's five
            scales 1 .. 1/2 (:data:`training.data.config.MULTISCALE`). A knob for CPU demos and tests on small
            frames, e.g. ``(1.0,)``: at 48 px a half-side crop often misses the moving object altogether.
        crop_position: where a training crop is placed: ``random`` (any position; what the released training
            scripts ran with, ``--train_crop random``) or ``corner`` (one of the centre and four corners, the
            released code's default ``MultiScaleCornerCrop``).
        loader_workers: DataLoader worker processes per training worker (0: decode in the training process).
        seed: seeds model init, the loader's sampling and dropout.
        val_every: validate (one centre clip per video) every N epochs; the plateau schedule steps on it.
        final_eval: after training, evaluate every non-overlapping window of every validation video.
        checkpoint_every_steps: also checkpoint mid-epoch every N optimizer steps (0: only at epoch ends).
        max_steps_per_epoch: cut epochs short (smoke tests); None runs the loader's full epoch.
        pretrained: checkpoint to start from (ours or one released by the paper's authors).
        pretrained_format: whose checkpoint ``pretrained`` is: ``ours``, ``released``, or ``auto`` (guess from
            the file).
        finetune: ``last-layer`` freezes every layer except a freshly initialised head (``none``: all train).
        normalization: a :mod:`training.data.normalize` preset; None picks the dataset's (or the released
            checkpoint's) convention.
        use_gpu: CUDA (bf16 autocast, cudnn.benchmark, NCCL) instead of CPU (gloo).
        amp: bf16 autocast on GPU (ignored on CPU).
        channels_last: ``channels_last_3d`` memory format for model and input (True) or contiguous (False); None
            picks by device (:meth:`uses_channels_last`): contiguous on CPU, where float32 gradients in
            ``channels_last_3d`` are ~1000x further from float64 (BatchNorm3d's channels-last kernel) and no
            faster, ``channels_last_3d`` on GPU (bench/README.md, "Gradient numerics").
        log_every: steps between TensorBoard training scalars.
        profile_steps: record a torch.profiler trace of this many steps (0: off).
        precise_bn: before each validation, the final evaluation and so before any checkpoint can be marked
            best, recompute BatchNorm running statistics as true averages over this many training batches per
            worker, averaged over the workers (0: off; :mod:`training.precise_bn`).
        ema: decay of an exponential moving average of the weights and BatchNorm buffers, updated every step
            and used for validation and the final evaluation (0: off; :mod:`training.ema`).
        sync_bn: normalise every training step with the BatchNorm statistics of the global batch (all
            workers together) instead of each worker's share; works on CPU/gloo as well as GPUs
            (:mod:`training.sync_bn`). Off by default, as in the paper's code.
        cache_dir: local shard cache for shards on object storage (shared by the processes of a node, least
            recently used shards evicted); None: clips are read by ranges every epoch.
        cache_gb: the cache's size cap in GB; a split larger than the cap is read by ranges (never filled).
    """

    dataset: str = field(metadata={"choices": DATASETS})
    shards: str
    out: str
    model: str = "shufflenetv2_1.0x"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    train_split: str | None = None
    val_split: str | None = None
    epochs: int = 250
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 1e-3
    nesterov: bool = False
    schedule: str = field(default="plateau", metadata={"choices": SCHEDULES})
    warmup_epochs: float = 0
    lr_scaling: str = field(default="none", metadata={"choices": LR_SCALINGS})
    lr_gamma: float = 0.1
    plateau_patience: int = 10
    plateau_max_reductions: int = 3
    milestones: tuple[int, ...] = ()
    dropout: float | None = 0.2
    clip_len: int = 16
    size: int = 112
    crop_scales: tuple[float, ...] | None = None
    crop_position: str = field(default="random", metadata={"choices": CROP_POSITIONS})
    loader_workers: int = 2
    seed: int = 0
    val_every: int = 1
    final_eval: bool = True
    checkpoint_every_steps: int = 0
    max_steps_per_epoch: int | None = None
    pretrained: str | None = None
    pretrained_format: str = field(default="auto", metadata={"choices": PRETRAINED_FORMATS})
    finetune: str = field(default="none", metadata={"choices": FINETUNE_MODES})
    normalization: str | None = None
    use_gpu: bool = False
    amp: bool = True
    channels_last: bool | None = None
    log_every: int = 10
    profile_steps: int = 0
    precise_bn: int = 0
    ema: float = 0.0
    sync_bn: bool = False
    cache_dir: str | None = None
    cache_gb: float = 100.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        if self.finetune != "none" and not self.pretrained:
            raise ValueError(f"finetune={self.finetune!r} needs a pretrained checkpoint")
        for name in ("epochs", "batch_size", "clip_len", "size", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 < self.lr_gamma < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 < lr_gamma < 1")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError("warmup_epochs needs schedule='cosine'")
        if self.precise_bn < 0:
            raise ValueError(f"precise_bn must be >= 0 batches, got {self.precise_bn}")
        if not (self.ema == 0 or 0 < self.ema < 1):
            raise ValueError(f"ema must be 0 (off) or a decay in (0, 1), got {self.ema}")
        if self.nesterov and self.dampening != 0:
            raise ValueError("SGD with nesterov needs dampening 0 (the released code sets it so)")
        # Normalise containers so that to_dict/from_dict round-trips and the object stays comparable.
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if self.crop_scales is not None:
            object.__setattr__(self, "crop_scales", tuple(float(s) for s in self.crop_scales))
            if not self.crop_scales or not all(0 < s <= 1 for s in self.crop_scales):
                raise ValueError(f"crop_scales must be non-empty and in (0, 1], got {self.crop_scales}")
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))

    # -- presets ------------------------------------------------------------------------------------------

    @classmethod
    def for_dataset(cls, dataset: str, shards: str, out: str, **overrides: Any) -> TrainConfig:
        """Training from scratch with the paper's defaults (section 3.2); ``overrides`` replace any field."""
        return cls(dataset=dataset, shards=shards, out=out, **overrides)

    @classmethod
    def finetune_preset(cls, dataset: str, shards: str, out: str, pretrained: str, **overrides: Any
                        ) -> TrainConfig:
        """Fine-tuning from a Kinetics-600 checkpoint (section 3.2): new head only, dropout 0.9, lr 0.01 ÷10
        after epochs 30 and 45, 60 epochs."""
        preset: dict[str, Any] = {"finetune": "last-layer", "dropout": 0.9, "lr": 0.01, "schedule": "multistep",
                                  "milestones": (30, 45), "epochs": 60}
        preset.update(overrides)
        return cls(dataset=dataset, shards=shards, out=out, pretrained=pretrained, **preset)

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Each field's description from the class docstring's ``Attributes:`` section (one line, reST
        markup removed): the help text of the CLI flags generated from this class."""
        docs: dict[str, str] = {}
        names: list[str] = []
        text = inspect.cleandoc(cls.__doc__ or "").split("Attributes:", 1)[-1]
        for line in text.splitlines():
            entry = re.match(r"^    ([a-z_][a-z0-9_, ]*): (.*)$", line)
            if entry:
                names = [n.strip() for n in entry.group(1).split(",")]
                for n in names:
                    docs[n] = entry.group(2).strip()
            elif line.startswith("        ") and names:
                for n in names:
                    docs[n] += " " + line.strip()
        return {n: re.sub(r":\w+:`([^`]+)`", r"\1", d).replace("``", "") for n, d in docs.items()}

    # -- helpers ------------------------------------------------------------------------------------------

    @property
    def splits(self) -> tuple[str, str]:
        train, val = DEFAULT_SPLITS[self.dataset]
        return self.train_split or train, self.val_split or val

    def uses_channels_last(self, device_type: str) -> bool:
        """Whether a run on ``device_type`` (``cpu``, ``cuda``) uses ``channels_last_3d``: ``channels_last`` when
        set, else the per-device default measured in bench/README.md (CPU: contiguous)."""
        return self.channels_last if self.channels_last is not None else device_type != "cpu"

    def per_worker_batch(self, world_size: int) -> int:
        """Clips per step on each worker; the global batch must split evenly so every worker does equal work."""
        if self.batch_size % world_size:
            raise ValueError(f"global batch_size {self.batch_size} does not split evenly over {world_size} "
                             "workers; pick a multiple of the worker count")
        return self.batch_size // world_size

    def loader_config(self, mode: str, **overrides: Any):
        """The :class:`training.data.LoaderConfig` this run reads with in ``mode`` (``train``, ``val``,
        ``eval``): the dataset's policies with this config's clip length, crop size and scales, loader
        processes and seed. ``batch_size`` defaults to the global batch; ``overrides`` replace any field
        (the loop passes the per-worker batch). The one place a TrainConfig becomes a LoaderConfig."""
        from training.data.config import LoaderConfig  # training.data.config imports this module

        kw: dict[str, Any] = {"clip_len": self.clip_len, "size": self.size, "num_workers": self.loader_workers,
                              "seed": self.seed, "batch_size": self.batch_size, "cache_dir": self.cache_dir,
                              "cache_gb": self.cache_gb, "crop_position": self.crop_position}
        if self.crop_scales:
            kw["scales"] = self.crop_scales
        return LoaderConfig.for_dataset(self.dataset, mode, **{**kw, **overrides})

    @property
    def eval_mode(self) -> str:
        """The loader mode of this dataset's evaluation protocol: ``eval`` (every non-overlapping window,
        scores averaged) or ``val`` (Jester: the middle window). See ``DatasetSpec.eval_windows``."""
        from training.data.config import evaluation_mode

        return evaluation_mode(self.dataset)

    def data_key(self) -> tuple[Any, ...]:
        """The :data:`DATA_FIELDS` values: configs with equal keys read the same clips (one decode pass)."""
        return tuple(getattr(self, f) for f in DATA_FIELDS)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only (checkpoints are read with ``weights_only=True``)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["crop_scales"] = None if self.crop_scales is None else list(self.crop_scales)
        d["model_kwargs"] = dict(self.model_kwargs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**{k: (tuple(v) if k in ("milestones", "crop_scales") and v is not None else v)
                      for k, v in d.items()})


def resume_differences(saved: TrainConfig, new: TrainConfig, overrides: tuple[str, ...] | list[str] = ()
                       ) -> tuple[list[str], list[str]]:
    """Compare the config a run was saved with to the one it is resumed with.

    Returns ``(refused, taken)``: human-readable ``"field: old → new"`` lines for the differences that change
    the run's meaning and are not named in ``overrides``, and for those that are taken (fields in
    :data:`RESUME_MAY_CHANGE`, or overridden). Raises ValueError for an override that is not a field.
    """
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"--override: unknown TrainConfig field(s) {unknown}")
    refused, taken = [], []
    for name in names:
        old, now = getattr(saved, name), getattr(new, name)
        if old == now:
            continue
        line = f"{name}: {old!r} → {now!r}"
        (taken if name in RESUME_MAY_CHANGE or name in overrides else refused).append(line)
    return refused, taken
