"""The training loop as a short driver over small named steps, in the spirit of nanoGPT's ``train.py`` and timm's
``train_one_epoch``/``validate``::

    train_group: setup → restore (→ finish a pending validation) → per epoch: train_one_epoch → end_of_epoch
                 (checkpoint "validation pending" → precise_bn → validate → schedule → checkpoint) → precise_bn
                 → final_evaluation (per member)

The stable recipe's parts (issue 12) sit at these points: a step-wise schedule (``cosine``) and the weights'
EMA advance in :meth:`Member.after_step`; :func:`precise_bn` recomputes BatchNorm statistics before
validation and the final evaluation; validation, evaluation and a checkpoint's loadable model use
:attr:`Member.eval_model` (the EMA when on); :func:`checkpoint_score` decides which checkpoint is best.

A :class:`Member` owns one model and what belongs to it alone: forward/backward/optimizer step, lr schedule,
best score, meters, TensorBoard writer and ``state_dict``/``load_state_dict``. :func:`train_loop` trains one
member; a group of several (``e3d sweep --shared-decode``) feeds each batch the loader decodes to every
member in turn, so K models cost one decode pass. :class:`Hooks` lets callers (tests: fault injection) act at
fixed points of the hot loop without the config knowing.

It runs unchanged inside Ray Train workers (``training.ray_train`` passes a :class:`Session` that talks to
Ray) and in a plain process with world size 1 (tests; the default :class:`LocalSession` keeps checkpoints
under ``out/checkpoints``). Nothing here imports Ray: distributed state comes from ``torch.distributed``,
which TorchTrainer initialises before calling the loop.

A checkpoint is one ``checkpoint.pt`` (:func:`training.checkpoints.save_checkpoint` format, so the first
member's model loads and evaluates on its own) whose ``extra`` is the group's state, format version 2::

    {"version": 2, "members": [Member.state_dict(), ...], "loader": ..., "step": ..., "rng": ...,
     "train_config": first member's config, "normalization": ..., "classes": [...],
     "validation_pending": epoch or None}

At an epoch end the loop checkpoints *before* validating (``validation_pending`` = that epoch, scored -1 so it
is never "best"), so a crash during validation costs the validation, not the epoch: a run resumed from such a
checkpoint validates that epoch, steps the schedule and checkpoints again before training on. Validation uses
no global RNG, so either way the run stays bit-identical to an uninterrupted one.

(torch.save stores the first member's tensors once although both the top level and ``members[0]`` name them).
Version 1 (first member at the top level, the others in ``extra["members"]``) still loads:
:func:`checkpoint_members` reads both.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shards import storage
from shards.datasets import DATASET_SPECS
from shards.manifest import read_dataset_info
from training.checkpoints import load_checkpoint, load_released_checkpoint, save_checkpoint
from training.config import DATA_FIELDS, TrainConfig, resume_differences
from training.data import ClipLoader, ClipNormalizer, ClipStream, normalization_for, shard_specs
from training.data.normalize import InputConvention
from training.ddp import wrap_ddp
from training.ema import ModelEMA
from training.evaluate import NonFiniteEvalError, evaluate, expected_clips, stored_convention, write_predictions
from training.models import get_entry, get_model
from training.observe import Meter, Observer, maybe_profile
from training.precise_bn import update_bn_stats
from training.schedule import scaled_lr, warmup_cosine
from training.sync_bn import convert_sync_bn

CHECKPOINT_FILE = "checkpoint.pt"
#: ``kind`` of the checkpoint an epoch end writes before validating (reported with :data:`PENDING_SCORE`, below
#: every real score and the -1 of unvalidated step checkpoints, so Ray never prefers it as "best").
PENDING_KIND = "epoch-trained"
PENDING_SCORE = -2.0


class NonFiniteLossError(RuntimeError):
    """The training or validation loss (or the evaluated logits) became NaN/inf; the run stopped, and no such
    checkpoint was kept as "best"."""


# -- where checkpoints go: Ray (training.ray_train.RaySession) or a local folder -------------------------


class Session:
    """How the loop saves and restores checkpoints and reports metrics. Subclasses: :class:`LocalSession`
    here, ``RaySession`` in :mod:`training.ray_train`."""

    def device(self, use_gpu: bool) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")

    def restore(self) -> Path | None:
        """Path of the latest checkpoint file to resume from, or None to start fresh."""
        raise NotImplementedError

    def where(self, path: Path) -> str:
        """Where the checkpoint :meth:`restore` returned lives in the run directory (for messages)."""
        return str(path)

    def release(self, path: Path) -> None:
        """Called once the restored checkpoint is loaded: delete any private copy :meth:`restore` made."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str | None) -> None:
        """Called on every rank with the same metrics. At a checkpoint ``name`` is its tag (the same on every
        rank) and rank 0 passes ``checkpoint_dir`` (holding ``checkpoint.pt``), which the session may move or
        delete; other reports have ``name`` None."""
        raise NotImplementedError


class LocalSession(Session):
    """Checkpoints under ``root``: ``last/`` (latest) and ``best/`` (highest ``score``); world size 1 only."""

    def __init__(self, root: str | Path):
        if storage.is_remote(root):
            raise ValueError(f"{root}: a plain-process run keeps checkpoints on local disk; train through Ray "
                             "(training.ray_train.run_training, `e3d train`) to write them to object storage")
        self.root = Path(root)
        self.best_score = -math.inf
        self.reports: list[dict[str, Any]] = []

    def restore(self) -> Path | None:
        path = self.root / "last" / CHECKPOINT_FILE
        return path if path.exists() else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        src = Path(checkpoint_dir) / CHECKPOINT_FILE
        # A checkpoint taken before its epoch's validation is never "best" (its weights are not yet scored).
        if metrics.get("kind") != PENDING_KIND and float(metrics.get("score", -math.inf)) > self.best_score:
            self.best_score = float(metrics["score"])
            shutil.copyfile(src, self.root / "best.tmp")
            (self.root / "best").mkdir(exist_ok=True)
            (self.root / "best.tmp").replace(self.root / "best" / CHECKPOINT_FILE)
        (self.root / "last").mkdir(exist_ok=True)
        src.replace(self.root / "last" / CHECKPOINT_FILE)  # same filesystem: an atomic rename
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


# -- model helpers ---------------------------------------------------------------------------------------


def head_keys(name: str, **model_kwargs: Any) -> set[str]:
    """State-dict keys of the classifier: those whose shape depends on the class count (probed on 'meta')."""
    with torch.device("meta"):
        one = get_model(name, num_classes=1, **model_kwargs).state_dict()
        two = get_model(name, num_classes=2, **model_kwargs).state_dict()
    return {k for k in one if one[k].shape != two[k].shape}


def _builder_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    kwargs = dict(cfg.model_kwargs)
    if cfg.dropout is not None and "dropout" in get_entry(cfg.model).free_kwargs():
        kwargs["dropout"] = cfg.dropout
    return kwargs


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, InputConvention | None, str | None]:
    """The model of ``cfg`` with ``num_classes`` outputs; with ``cfg.pretrained`` every tensor except the
    classifier comes from that checkpoint (ours or a released one) and the classifier is new.

    Returns ``(model, input convention of the pretrained weights or None, a one-line description of what was
    loaded (file, format, input convention) or None)``.
    """
    kwargs = _builder_kwargs(cfg)
    model = get_model(cfg.model, num_classes=num_classes, **kwargs)
    if not cfg.pretrained:
        return model, None, None
    fmt = cfg.pretrained_format
    if fmt == "auto":
        raw = torch.load(cfg.pretrained, map_location="cpu", weights_only=True)
        fmt = "ours" if isinstance(raw, dict) and raw.get("format") == "e3d-checkpoint" else "released"
        del raw
    if fmt == "ours":
        src, ckpt = load_checkpoint(cfg.pretrained)
        if src.config.name != cfg.model:
            raise ValueError(f"pretrained checkpoint holds {src.config.name!r}, not {cfg.model!r}")
        conv = stored_convention(src, ckpt)
        origin = f"our checkpoint of {src.config.name} ({src.config.num_classes} classes)"
    else:
        plain = {k: v for k, v in cfg.model_kwargs.items() if k != "dropout"}
        src, info = load_released_checkpoint(cfg.pretrained, cfg.model, **plain)
        conv = src.input_convention
        origin = (f"released checkpoint, arch {info.arch!r}, {info.num_classes} classes "
                  f"({info.dataset or 'unknown dataset'})")
    head = head_keys(cfg.model, **kwargs)
    backbone = {k: v for k, v in src.state_dict().items() if k not in head}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or set(missing) - head:
        raise ValueError(f"pretrained weights do not fit {cfg.model}: missing {sorted(set(missing) - head)}, "
                         f"unexpected {sorted(unexpected)}")
    model.input_convention = conv
    described = (f"pretrained {cfg.pretrained}: format {fmt} ({origin}); input convention {conv.channel_order}, "
                 f"pixels ×{conv.value_scale / 255:g}, mean {list(conv.mean)}, std {list(conv.std)}")
    return model, conv, described


def freeze_all_but(model: nn.Module, trainable: set[str]) -> list[nn.Module]:
    """Set ``requires_grad = False`` on every parameter not named in ``trainable``.

    Returns the normalisation layers whose parameters are all frozen: :func:`set_train_mode` keeps them in
    eval mode, so their running statistics stay frozen too (the released code's freezing froze neither).
    """
    names = {n for n, _ in model.named_parameters()}
    if not trainable <= names:
        raise ValueError(f"unknown trainable parameter(s) {sorted(trainable - names)}")
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


def set_train_mode(model: nn.Module, frozen_norms: list[nn.Module]) -> None:
    model.train()
    for m in frozen_norms:
        m.eval()


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int = 1):
    """The lr schedule: stepped once per epoch (plateau: with the validation loss), except ``cosine``, which
    is stepped after every optimizer step (``steps_per_epoch`` of them per epoch on each worker)."""
    if cfg.schedule == "cosine":
        return warmup_cosine(optimizer, total_steps=cfg.epochs * steps_per_epoch,
                             warmup_steps=round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "plateau":
        # "Reduced ×gamma at most N times" = a floor at lr·gamma^N; the tiny slack absorbs rounding in the
        # repeated multiplications so the N-th reduction is not refused.
        floor = [g["lr"] * cfg.lr_gamma ** cfg.plateau_max_reductions * (1 - 1e-9) for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_gamma,
                                                          patience=cfg.plateau_patience, min_lr=floor)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.lr_gamma)
    return None


def _topk_hits(logits: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (topk[:, 0] == y).sum(), (topk == y[:, None]).any(dim=1).sum()


# -- hooks: fixed points where a caller may act (tests inject faults here) ---------------------------------


class Hooks:
    """Callbacks the loop makes; this base does nothing. Pass a subclass as ``train_group(..., hooks=)`` (or
    ``run_training(..., hooks=)``: under Ray Train it is pickled to every worker, so keep it picklable)."""

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Each member's loss (scalar float32) of global optimizer step ``step`` (1-based), before backward;
        returns the loss to use."""
        return loss

    def on_step(self, step: int, cfg: TrainConfig, master: bool) -> None:
        """After global optimizer step ``step`` (1-based) of every member; ``cfg`` is the group's first config,
        ``master`` whether this is rank 0. An exception raised here ends the run (as a crash would)."""

    def on_validate(self, epoch: int, model: nn.Module, cfg: TrainConfig, master: bool) -> None:
        """Before each member's validation of 0-based ``epoch`` (after the epoch's checkpoint); ``model`` is the
        member's model, ``cfg`` its config. An exception raised here ends the run (as a crash would)."""


# -- one model of a run ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Member:
    """One model of a run and everything that belongs to it alone. A run trains one member; a shared-decode
    group (:func:`train_group`) trains several from the same batches."""

    cfg: TrainConfig
    raw: nn.Module  # the model itself (what checkpoints hold)
    model: nn.Module  # the model the step calls: ``raw``, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: Any
    normalizer: ClipNormalizer
    norm_name: str | None
    frozen_norms: list[nn.Module]
    obs: Observer
    best: float = -math.inf
    last_train: dict[str, float] | None = None
    last_val: dict[str, float] | None = None
    result: dict[str, Any] | None = None  # final metrics; set early when the member stopped (non-finite loss)
    meter: Meter = field(default_factory=Meter)
    window: Meter = field(default_factory=Meter)
    ema: ModelEMA | None = None  # the weights validation and evaluation use when ``cfg.ema`` is on
    best_epoch: int | None = None  # 0-based epoch of the best validation score
    history: list[dict[str, float]] = field(default_factory=list)  # per validation: epoch, video_top1, loss

    @classmethod
    def build(cls, cfg: TrainConfig, num_classes: int, device: torch.device, *, ddp: bool, master: bool,
              steps_per_epoch: int = 1) -> Member:
        """Model (+ pretrained weights, freezing) on ``device``, input normalisation, optimizer (lr scaled by
        ``cfg.lr_scaling``), schedule and, with ``cfg.ema``, the moving average of the weights."""
        torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)
        raw, pretrained_conv, described = build_model(cfg, num_classes)
        if cfg.sync_bn:
            convert_sync_bn(raw)  # before freezing: frozen_norms must name the layers that stay in the model
        frozen_norms: list[nn.Module] = []
        if cfg.finetune == "last-layer":
            head = head_keys(cfg.model, **_builder_kwargs(cfg))
            frozen_norms = freeze_all_but(raw, head)
            if master:
                frozen = [p for p in raw.parameters() if not p.requires_grad]
                shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in raw.state_dict().items() if k in head)
                described = (f"{described}\nfine-tuning {cfg.finetune}: froze {sum(p.numel() for p in frozen):,} "
                             f"parameters in {len(frozen)} tensors (and the statistics of {len(frozen_norms)} "
                             f"BatchNorm layers); new head {shapes}, freshly initialised, trained")
        if described and master:
            print(described, flush=True)
        norm_name = cfg.normalization
        conv = (pretrained_conv if norm_name is None and pretrained_conv is not None
                else normalization_for(cfg.dataset, checkpoint=norm_name))
        raw.input_convention = conv  # saved with the weights: the one record of what the model expects
        channels_last = cfg.uses_channels_last(device.type)
        normalizer = ClipNormalizer(conv, channels_last=channels_last).to(device)
        memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        raw = raw.to(device, memory_format=memory_format)
        model = wrap_ddp(raw, device) if ddp else raw  # gradients laid out like their parameters
        # only the trainable parameters: frozen ones get no weight decay either
        lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling)
        optimizer = torch.optim.SGD([p for p in raw.parameters() if p.requires_grad], lr=lr,
                                    momentum=cfg.momentum, dampening=cfg.dampening,
                                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        return cls(cfg, raw, model, optimizer, make_scheduler(cfg, optimizer, steps_per_epoch), normalizer,
                   norm_name, frozen_norms, Observer(cfg.out, enabled=master),
                   ema=ModelEMA(raw, cfg.ema) if cfg.ema else None)

    @property
    def name(self) -> str:
        """The member's label in a group: the last part of its ``out`` (a sweep's trial name)."""
        return self.cfg.out.rstrip("/").rsplit("/", 1)[-1]

    @property
    def active(self) -> bool:
        return self.result is None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation, the final evaluation and a checkpoint's loadable model use: the EMA when
        on, else the model itself."""
        return self.ema.module if self.ema is not None else self.raw

    def frozen_norms_of(self, model: nn.Module) -> list[nn.Module]:
        """``frozen_norms`` as the same-named layers of ``model`` (the EMA copy has its own modules)."""
        names = {id(mod): n for n, mod in self.raw.named_modules()}
        wanted = {names[id(mod)] for mod in self.frozen_norms}
        return [mod for n, mod in model.named_modules() if n in wanted]

    def after_step(self) -> None:
        """After each optimizer step: a step-wise schedule steps, the EMA takes in the new weights."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.raw)

    def start_epoch(self) -> None:
        set_train_mode(self.raw, self.frozen_norms)
        self.meter, self.window = Meter(), Meter()

    def forward_backward(self, clips: torch.Tensor, y: torch.Tensor, step: int, hooks: Hooks
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Loss and gradients of one batch (uint8 ``clips`` (N, 3, T, H, W), int64 ``y`` (N,)) for global step
        ``step`` (1-based). Returns the detached loss and the (top-1, top-5) hit counts; no update yet."""
        with torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp and clips.is_cuda):
            logits = self.model(self.normalizer(clips))
        loss = hooks.loss(step, F.cross_entropy(logits.float(), y))
        self.optimizer.zero_grad(set_to_none=False)  # in place: DDP's gradients are views of its buckets
        loss.backward()
        return loss.detach(), _topk_hits(logits.detach(), y, 5)

    def record(self, step: int, loss: torch.Tensor, hits: tuple[torch.Tensor, torch.Tensor], clips: int,
               wait_s: float, step_s: float, world: int, log: bool) -> None:
        """Add one step to the epoch meter; with ``log``, write rank 0's recent steps to TensorBoard."""
        loss_v, top1_v, top5_v = torch.stack([loss, hits[0].float(), hits[1].float()]).tolist()
        for meter in (self.meter, self.window):
            meter.add(loss_v, int(top1_v), int(top5_v), clips, wait_s, step_s)
        if log:
            w = self.window.reduced(1)  # clips/s scaled to all workers
            self.obs.scalars(step, {"train/loss": w["loss"], "train/top1": w["top1"], "train/top5": w["top5"],
                                    "train/lr": self.lr, "train/clips_per_s": w["clips_per_s"] * world,
                                    "train/data_wait_frac": w["data_wait_frac"]})
            self.window.reset()

    def schedule(self, val_loss: float | None) -> None:
        """Step the lr schedule once per epoch (plateau: only with a validation loss)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if val_loss is not None:
                self.scheduler.step(val_loss)
        elif self.scheduler is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            self.scheduler.step()

    def stop_nonfinite(self, loss_value: float, step: int, epoch: int, master: bool, msg: str | None = None) -> None:
        msg = msg or (f"non-finite loss ({loss_value}) at step {step + 1} (epoch {epoch + 1}); training stopped. "
                      "The last good checkpoint is kept; lower the lr or check the data, then resume from it.")
        if master:
            print(f"ERROR: {self.name}: {msg}", flush=True)
        self.result = {"status": "nonfinite", "message": msg, "step": step, "epoch": epoch}
        self.obs.write_json("metrics.json", self.result)
        self.obs.close()

    def state_dict(self) -> dict[str, Any]:
        """Everything of this member a checkpoint holds (plain values and tensors)."""
        return {"model": self.cfg.model, "out": self.cfg.out, "state_dict": self.raw.state_dict(),
                "optimizer": self.optimizer.state_dict(), "best": self.best, "normalization": self.norm_name,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "last_train": self.last_train,
                "ema": self.ema.state_dict() if self.ema is not None else None, "best_epoch": self.best_epoch,
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any], what: str) -> None:
        if state["model"] != self.cfg.model:
            raise ValueError(f"{what} holds {state['model']!r} where this run has {self.cfg.model!r}; "
                             "resume a group with the same members in the same order")
        self.raw.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{what} holds no EMA weights; this run has ema={self.cfg.ema}")
            self.ema.load_state_dict(state["ema"])
        self.best = float(state["best"])
        self.best_epoch = state.get("best_epoch")
        self.history = list(state.get("history") or [])
        self.last_train = state.get("last_train")  # the pending validation's epoch line needs it

    def set_lr(self, lr: float) -> None:
        """Make ``lr`` the optimizer's lr from now on (``--resume --override lr``): every parameter group, and
        the schedule's reference points (multistep's base lr, plateau's floor) move with it."""
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] = lr
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            floor = lr * self.cfg.lr_gamma ** self.cfg.plateau_max_reductions * (1 - 1e-9)
            self.scheduler.min_lrs = [floor] * len(self.optimizer.param_groups)
        elif self.scheduler is not None:
            self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
            self.scheduler._last_lr = [lr] * len(self.optimizer.param_groups)


CHECKPOINT_VERSION = 2


def checkpoint_members(ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-member states (:meth:`Member.state_dict`) of a loop checkpoint (the dict
    :func:`training.checkpoints.load_checkpoint` returns), version 2 or version 1."""
    extra = ckpt["extra"]
    if extra.get("version", 1) == CHECKPOINT_VERSION:
        return list(extra["members"])
    if extra.get("version", 1) != 1:
        raise ValueError(f"loop checkpoint version {extra['version']} is not one this code reads (1, 2)")
    first = {"model": ckpt["model"]["name"], "state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer"],
             "best": extra["best"], "scheduler": extra.get("scheduler")}
    return [first, *(extra.get("members") or [])]


# -- the run: state shared by the members, and the steps of the driver -----------------------------------


@dataclass(eq=False)
class RunState:
    """What the steps of one run share: the group's configs, session and hooks, the distributed setting,
    the class names, the loaders' inputs, the members, the global step and the profiler."""

    cfgs: list[TrainConfig]
    session: Session
    hooks: Hooks
    device: torch.device
    ddp: bool
    world: int
    master: bool
    classes: list[str]
    train_loader: ClipLoader
    val_specs: list
    members: list[Member]
    train_specs: list = field(default_factory=list)
    step: int = 0
    precise_bn_step: int | None = None  # the step at which BatchNorm statistics were last recomputed
    resumed_at: int | None = None
    pending: int | None = None  # restored from a checkpoint whose epoch still needs its validation
    prof_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    prof: Any = None

    @property
    def cfg(self) -> TrainConfig:
        """The data settings of the whole group (the first config's)."""
        return self.cfgs[0]

    @property
    def grouped(self) -> bool:
        return len(self.members) > 1

    def active(self) -> list[Member]:
        return [m for m in self.members if m.active]

    def eval_loader(self, mode: str) -> tuple[ClipLoader, dict[str, int]]:
        lcfg = self.cfg.loader_config(mode, batch_size=self.cfg.per_worker_batch(self.world),
                                      num_classes=len(self.classes))
        loader = ClipLoader(ClipStream(self.val_specs, lcfg), pin_memory=self.device.type == "cuda",
                            generator=torch.Generator())
        return loader, expected_clips(self.val_specs, lcfg)


def _check_group(cfgs: list[TrainConfig]) -> None:
    if not cfgs:
        raise ValueError("train_group needs at least one config")
    for other in cfgs[1:]:
        diff = [f for f in DATA_FIELDS if getattr(other, f) != getattr(cfgs[0], f)]
        if diff:
            raise ValueError(f"{other.out}: a shared-decode group must agree on {diff} with {cfgs[0].out}")


def setup(cfgs: list[TrainConfig], session: Session, hooks: Hooks) -> RunState:
    """Distributed setup (TorchTrainer has initialised the process group; a direct call has none), the
    training loader (per-worker share of the global batch) and one :class:`Member` per config."""
    cfg = cfgs[0]
    ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if ddp else 1
    master = (torch.distributed.get_rank() if ddp else 0) == 0
    device = session.device(cfg.use_gpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune conv algorithms once
    classes = list(read_dataset_info(cfg.shards)["classes"])
    train_split, val_split = cfg.splits
    train_specs = shard_specs(cfg.shards, train_split, videos=False)
    train_loader = ClipLoader(
        ClipStream(train_specs, cfg.loader_config("train", batch_size=cfg.per_worker_batch(world),
                                                  num_classes=len(classes))),
        # Each DataLoader iterator draws a seed; from its own generator it leaves the global RNG (dropout) alone,
        # so a mid-epoch resume replays exactly the dropout masks of an uninterrupted run.
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    val_specs = shard_specs(cfg.shards, val_split, videos=True)
    steps = len(train_loader)
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    members = [Member.build(c, len(classes), device, ddp=ddp, master=master, steps_per_epoch=steps) for c in cfgs]
    return RunState(cfgs, session, hooks, device, ddp, world, master, classes, train_loader, val_specs, members,
                    train_specs)


def check_resume(saved: dict[str, Any], cfg: TrainConfig, overrides: Sequence[str], where: str) -> list[str]:
    """Refuse (ValueError listing every difference) to resume a checkpoint's run (``saved``: its
    ``train_config``) with a config that changes the run's meaning, unless each such field is in
    ``overrides``; the class list can never change. Returns the differences that are taken."""
    refused, taken = resume_differences(TrainConfig.from_dict(saved), cfg, tuple(overrides))
    if refused:
        raise ValueError(f"{where}: resuming would change the run's meaning: {'; '.join(refused)}. Resume with "
                         "the saved settings, or name each field with --override FIELD to change it anyway")
    return taken


def restore(run: RunState, overrides: Sequence[str] = ()) -> None:
    """Resume from the session's latest checkpoint, if any: every member (model, optimizer, schedule, best
    score), the loader position, the step and the RNG. The saved config must agree with this run's
    (:func:`check_resume`); ``overrides`` name fields that may change anyway (a new ``lr`` is applied to the
    optimizers). At an epoch boundary the loader starts the next epoch afresh, so the worker count may change."""
    path = run.session.restore()
    if path is None:
        return
    where = run.session.where(path)
    try:
        _, ckpt = load_checkpoint(path)
    finally:
        run.session.release(path)  # no private copy outlives the load
    extra = ckpt["extra"]
    classes = extra.get("classes")
    if classes is not None and list(classes) != run.classes:
        raise ValueError(f"{where}: the checkpoint was trained on classes {list(classes)}, the shards have "
                         f"{run.classes}; a resumed run cannot change its classes")
    states = checkpoint_members(ckpt)
    if len(states) != len(run.members):
        raise ValueError(f"{where} holds {len(states)} model(s), this run has {len(run.members)}")
    for m, state in zip(run.members, states, strict=True):  # a group: before the config check, clearer
        if run.grouped and state["model"] != m.cfg.model:
            raise ValueError(f"{where} holds {state['model']!r} where this run has {m.cfg.model!r}; resume a "
                             "group with the same members in the same order")
    taken = check_resume(extra["train_config"], run.cfg, overrides, where)
    for m, state in zip(run.members, states, strict=True):
        m.load_state_dict(state, where)
        if "lr" in overrides:
            m.set_lr(m.cfg.lr)
    loader = extra["loader"]
    if int(loader["batches_done"]) == 0:
        # An epoch boundary: nothing of the epoch was read, so the position is just the epoch number and the
        # loader re-derives its plan for this run's world size, loader workers and batch.
        run.train_loader.set_epoch(int(loader["epoch"]))
    else:
        run.train_loader.load_state_dict(loader)  # mid-epoch: only with the same world size, workers, batch
    run.step = run.resumed_at = int(extra["step"])
    run.pending = extra.get("validation_pending")
    torch.set_rng_state(extra["rng"])
    if run.master:
        pos = (f"epoch {run.train_loader.epoch + 1} of {run.cfg.epochs}" if run.train_loader.batches_done == 0
               else f"epoch {run.train_loader.epoch + 1}, batch {run.train_loader.batches_done}")
        pending = f"; validation of epoch {run.pending + 1} first" if run.pending is not None else ""
        print(f"resumed from {where}: step {run.step}, next {pos}{pending}", flush=True)
        if taken:
            print(f"resume: changed settings taken: {'; '.join(taken)}", flush=True)


def checkpoint(run: RunState, tag: str, metrics: dict[str, Any], score: float, pending: int | None = None) -> None:
    """Rank 0 writes checkpoint.pt (format version 2) into a fresh folder; every rank reports (Ray needs all).
    ``pending``: the epoch whose validation has not run yet (the checkpoint before validation)."""
    ckpt_dir = None
    if run.master:
        lead = run.members[0]
        ckpt_dir = Path(tempfile.mkdtemp(prefix="e3d-ckpt-"))
        extra = {"version": CHECKPOINT_VERSION, "members": [m.state_dict() for m in run.members],
                 "train_config": run.cfg.to_dict(), "step": run.step, "loader": run.train_loader.state_dict(),
                 "rng": torch.get_rng_state(), "normalization": lead.norm_name, "classes": run.classes,
                 "validation_pending": pending}
        # the loadable model is the one validation scored (the EMA when on); members[0] holds the raw weights
        save_checkpoint(ckpt_dir / CHECKPOINT_FILE, lead.eval_model, epoch=run.train_loader.epoch,
                        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))}, extra=extra)
    run.session.report({**metrics, "score": score, "step": run.step}, ckpt_dir, tag)


def _train_step(run: RunState, batch: dict[str, torch.Tensor], epoch: int, wait_s: float, t0: float) -> bool:
    """One optimizer step of every active member on one batch. Returns False when no member is left."""
    clips = batch["clips"].to(run.device, non_blocking=True)
    y = batch["labels"].to(run.device, non_blocking=True)
    stepping = run.active()
    outs = [m.forward_backward(clips, y, run.step + 1, run.hooks) for m in stepping]  # one batch, every model
    # NaN/inf: decided jointly (one tiny all-reduce) before the update, so every rank stops a model at the same
    # step and no bad update reaches its weights or the checkpoints.
    bad = (~torch.isfinite(torch.stack([loss for loss, _ in outs]))).float()
    if run.ddp:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    for m, is_bad, (loss, _) in zip(stepping, bad.tolist(), outs, strict=True):
        if is_bad:
            m.stop_nonfinite(loss.item(), run.step, epoch, run.master)
        else:
            m.optimizer.step()
            m.after_step()
    if not run.active():
        return False
    run.step += 1
    run.hooks.on_step(run.step, run.cfg, run.master)
    step_s = time.perf_counter() - t0
    log = run.master and run.step % run.cfg.log_every == 0
    for m, (loss, hits) in zip(stepping, outs, strict=True):
        if m.active:
            m.record(run.step, loss, hits, y.shape[0], wait_s, step_s, run.world, log)
    return True


def train_one_epoch(run: RunState, epoch: int) -> bool:
    """Train ``epoch`` from the loader's position (mid-epoch after a restore), checkpointing every
    ``checkpoint_every_steps``. Returns False when every member stopped (non-finite loss)."""
    cfg = run.cfg
    run.train_loader.set_epoch(epoch)  # keeps a restored mid-epoch position
    for m in run.active():
        m.start_epoch()
    batches = iter(run.train_loader)
    per_epoch = min(len(run.train_loader), cfg.max_steps_per_epoch or len(run.train_loader))
    lead = run.members[0]
    try:
        while cfg.max_steps_per_epoch is None or run.train_loader.batches_done < cfg.max_steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            if not _train_step(run, batch, epoch, time.perf_counter() - t0, t0):
                return False
            lead.obs.step_progress(epoch, cfg.epochs, run.train_loader.batches_done, per_epoch,
                                   lead.meter.loss_sum / max(lead.meter.clips, 1))
            if run.prof is not None:
                run.prof.step()
                if run.step >= cfg.profile_steps + 1:  # warm-up + active steps recorded: write the trace now
                    run.prof_stack.close()
                    run.prof = None
            if cfg.checkpoint_every_steps and run.step % cfg.checkpoint_every_steps == 0:
                checkpoint(run, f"epoch{epoch:04d}-step{run.step:08d}", {"epoch": epoch, "kind": "step"}, score=-1.0)
    finally:
        batches.close()
    run.train_loader.set_epoch(epoch + 1)  # the saved loader position is "start of the next epoch"
    return True


def precise_bn(run: RunState, epoch: int) -> None:
    """With ``precise_bn`` N: every active member's evaluation weights get BatchNorm statistics averaged over
    N training batches of ``epoch`` (this worker's share; the ranks' averages are combined), one decode pass
    for the whole group. Skipped when already done at this step (the final evaluation right after the last
    validation; a resume at the end, whose checkpoint holds the recomputed statistics)."""
    n = run.cfg.precise_bn
    if not n or run.precise_bn_step == run.step:
        return
    members = run.active()
    loader = ClipLoader(ClipStream(run.train_specs, run.cfg.loader_config(
        "train", batch_size=run.cfg.per_worker_batch(run.world))), generator=torch.Generator().manual_seed(
            run.cfg.seed + 1))
    loader.set_epoch(epoch)
    batches = iter(loader)
    try:
        update_bn_stats([m.eval_model for m in members],
                        (b["clips"].to(run.device, non_blocking=True) for b in batches), n,
                        prepare=[m.normalizer for m in members],
                        skip=[bn for m in members for bn in m.frozen_norms_of(m.eval_model)])
    finally:
        batches.close()
    run.precise_bn_step = run.step


def _validate(run: RunState, m: Member, epoch: int) -> dict[str, float] | None:
    """One centre clip per validation video (the evaluation weights): loss, clip top-1/top-5 and video top-1
    (the same videos; a video whose clip was corrupt is left out of the video figure). Returns None (and stops
    the member, as a non-finite training loss would) when the logits or the loss are not finite."""
    run.hooks.on_validate(epoch, m.eval_model, m.cfg, run.master)
    loader, expected = run.eval_loader("val")
    try:
        r = evaluate(m.eval_model, loader, m.normalizer, run.device, num_classes=len(run.classes),
                     expected=expected, amp=m.cfg.amp and run.device.type == "cuda")
        problem = None if r.loss is None or math.isfinite(r.loss) else f"validation loss {r.loss}"
    except NonFiniteEvalError as exc:  # raised on every rank alike
        problem = str(exc)
    if problem is not None:
        m.stop_nonfinite(math.nan, run.step, epoch, run.master, msg=(
            f"non-finite validation after epoch {epoch + 1} (step {run.step}): {problem}; training stopped. "
            "This epoch's checkpoint is not kept as best; lower the lr or check the data, then resume from an "
            "earlier checkpoint."))
        return None
    return {"loss": r.loss, "top1": r.clip_top1, "top5": r.clip_top5, "video_top1": r.video_top1}


def checkpoint_score(val: dict[str, float] | None) -> float:
    """What makes a checkpoint "best": validation video top-1 over the centre clips, ties broken by the lower
    validation loss. The loss enters as ``1e-9 · min(loss, 1000)`` (at most 1e-6), below the smallest step of
    top-1 for fewer than a million videos, so it never outweighs one video. -1 without validation."""
    if val is None:
        return -1.0
    loss = val["loss"] if math.isfinite(val["loss"]) else 1e3
    return val["video_top1"] - 1e-9 * min(loss, 1e3)


def end_of_epoch(run: RunState, epoch: int) -> None:
    """The epoch's checkpoint, then (when this epoch validates) per member: validate, step the schedule, log
    and keep the best score, and one more checkpoint for the group, scored by the members' mean validation
    score (:func:`checkpoint_score`, which Ray keeps as "best"). With ``precise_bn`` the
    BatchNorm statistics are recomputed before validation, so validation and the checkpoint use them.

    The first checkpoint comes before validation (``validation_pending``, never best), so a crash during
    validation does not cost the epoch; the second holds the stepped schedules and best scores, and its
    score is this epoch's validation. A run resumed from the first runs :func:`validate_and_schedule` first."""
    cfg = run.cfg
    for m in run.active():
        m.last_train = m.meter.reduced(run.world)
    validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
    if validate:
        checkpoint(run, f"epoch{epoch:04d}-step{run.step:08d}-trained", {"epoch": epoch, "kind": PENDING_KIND},
                   score=PENDING_SCORE, pending=epoch)
    validate_and_schedule(run, epoch, validate)


def validate_and_schedule(run: RunState, epoch: int, validate: bool) -> None:
    """The second half of an epoch end (see :func:`end_of_epoch`): validation, schedule, epoch line and
    TensorBoard, best score, and the epoch's checkpoint (unless every member stopped)."""
    cfg = run.cfg
    scores, metrics = [], {"epoch": epoch, "kind": "epoch"}
    if validate:
        precise_bn(run, epoch)  # before validation, hence before the checkpoint it scores
    for m in run.active():
        train = m.last_train or Meter().reduced(1)
        val = _validate(run, m, epoch) if validate else None
        if not m.active:  # non-finite validation: stopped, scored nowhere
            continue
        if val is not None:  # an epoch without validation keeps the last figures for the final metrics
            m.last_val = val
        m.schedule(val["loss"] if val is not None else None)
        m.obs.epoch_line(epoch, cfg.epochs, run.step, train, val, m.lr, name=m.name if run.grouped else None)
        m.obs.scalars(run.step, {"epoch/loss": train["loss"], "epoch/top1": train["top1"],
                                 "epoch/top5": train["top5"], "epoch/clips_per_s": train["clips_per_s"],
                                 "epoch/data_wait_frac": train["data_wait_frac"], "epoch/lr": m.lr})
        if val is not None:
            m.obs.scalars(run.step, {"val/loss": val["loss"], "val/top1": val["top1"], "val/top5": val["top5"]})
        m.obs.flush()
        score = checkpoint_score(val)
        if val is not None:
            m.history.append({"epoch": epoch, "video_top1": val["video_top1"], "loss": val["loss"]})
        if score > m.best:  # m.best: the best checkpoint score so far
            m.best, m.best_epoch = score, epoch
        scores.append(score)
        mine = {"train_loss": train["loss"], "train_top1": train["top1"], "clips_per_s": train["clips_per_s"],
                "data_wait_frac": train["data_wait_frac"], "lr": m.lr}
        if val is not None:
            mine.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]})
        metrics.update(mine if m is run.members[0] else {f"{k}/{m.name}": v for k, v in mine.items()})
    if run.active():
        checkpoint(run, f"epoch{epoch:04d}-step{run.step:08d}", metrics, score=sum(scores) / max(len(scores), 1))


def _final_checkpoint(run: RunState, m: Member) -> str:
    """A plain checkpoint of one group member in ``out/checkpoint.pt``, loadable and evaluable on its own."""
    local = Path(tempfile.mkdtemp(prefix="e3d-final-")) / CHECKPOINT_FILE
    save_checkpoint(local, m.eval_model, epoch=run.cfg.epochs, optimizer=None, metrics={},
                    extra={"train_config": m.cfg.to_dict(), "step": run.step, "normalization": m.norm_name,
                           "classes": run.classes})
    fs, path = storage.resolve(storage.join(m.cfg.out, CHECKPOINT_FILE))
    storage.write_bytes_atomic(fs, path, local.read_bytes())
    shutil.rmtree(local.parent, ignore_errors=True)
    return storage.to_uri(fs, path)


def final_evaluation(run: RunState, m: Member) -> dict[str, Any]:
    """One member's final metrics: the validation videos scored with the dataset's evaluation protocol (every
    non-overlapping window averaged; Jester: the middle window) when ``final_eval``, with video-level accuracy
    and predictions, plus the last epoch's training and validation figures."""
    cfg, val_split = run.cfg, run.cfg.splits[1]
    best = next((h for h in m.history if h["epoch"] == m.best_epoch), None)
    # which weights the final evaluation below used: always the last step's (the best checkpoint is
    # best_epoch's; `e3d evaluate` scores it), as the EMA or not, with recomputed BN statistics or not
    stats = f"precise over {cfg.precise_bn} batches" if cfg.precise_bn else "running"
    weights = (f"last (epoch {cfg.epochs}, step {run.step}; {f'EMA {m.cfg.ema}' if m.ema else 'raw'} weights; "
               f"BN statistics {stats})")
    result: dict[str, Any] = {"status": "finished", "epochs": cfg.epochs, "step": run.step,
                              "best_val_top1": best["video_top1"] if best else -1.0,
                              "best_epoch": None if m.best_epoch is None else m.best_epoch + 1,
                              "eval_weights": weights, "val_history": list(m.history),
                              "world_size": run.world, "model": m.cfg.model, "dataset": cfg.dataset,
                              "resumed_at_step": run.resumed_at}
    if run.grouped:
        result["shared_decode_group"] = [c.out for c in run.cfgs]
    if m.last_train is not None:  # the last epoch trained in this session (absent when resumed at the end)
        result.update({"train_loss": m.last_train["loss"], "train_top1": m.last_train["top1"],
                       "clips_per_s": m.last_train["clips_per_s"], "data_wait_frac": m.last_train["data_wait_frac"]})
    if m.last_val is not None:
        result.update({f"val_{k}": v for k, v in m.last_val.items()})
    if cfg.final_eval:
        loader, expected = run.eval_loader(cfg.eval_mode)  # the dataset's protocol (Jester: middle window)
        try:
            r = evaluate(m.eval_model, loader, m.normalizer, run.device, num_classes=len(run.classes),
                         expected=expected, amp=m.cfg.amp and run.device.type == "cuda", with_predictions=run.master)
        except NonFiniteEvalError as exc:
            m.stop_nonfinite(math.nan, run.step, cfg.epochs - 1, run.master,
                             msg=f"final evaluation refused: {exc}. The run's checkpoints are kept.")
            return m.result
        result.update(r.metrics("eval_"))
        result["eval_split"] = val_split
        result["eval_windows"] = DATASET_SPECS[cfg.dataset].eval_windows
        m.obs.scalars(run.step, {"eval/video_top1": r.video_top1, "eval/video_top5": r.video_top5,
                                 "eval/clip_top1": r.clip_top1})
        if run.master:
            result["predictions"] = write_predictions(
                storage.join(m.cfg.out, f"predictions_{val_split}.parquet"), r.predictions, run.classes)
            # the figures are printed once, by the driver's summary (with the checkpoint they came from)
    if run.grouped and run.master:
        result["final_checkpoint"] = _final_checkpoint(run, m)
    m.obs.write_json("metrics.json", result)
    return result


def format_accuracy(video_top1: float | None, video_top5: float | None, clip_top1: float | None) -> str:
    """``video top1 … top5 …, clip top1 …``, or ``no labels: not scored`` for an unlabelled split."""
    if video_top1 is None or (isinstance(video_top1, float) and math.isnan(video_top1)):
        return "no labels: not scored"
    return f"video top1 {video_top1:.3f} top5 {video_top5:.3f}, clip top1 {clip_top1:.3f}"


def finished_metrics(cfg: TrainConfig) -> dict[str, Any] | None:
    """The final ``metrics.json`` of a run that already finished what ``cfg`` asks (its model and dataset, its
    epochs, and its final evaluation when ``final_eval``), else None: resuming such a run has nothing left to
    do. (The driver checks the rest of the saved config first: :func:`training.ray_train.check_resumable`.)"""
    fs, path = storage.resolve(storage.join(cfg.out, "metrics.json"))
    if not storage.exists(fs, path):
        return None
    try:
        metrics = json.loads(storage.read_bytes(fs, path))
    except ValueError:
        return None
    done = (isinstance(metrics, dict) and metrics.get("status") == "finished" and metrics.get("epochs") == cfg.epochs
            and metrics.get("model") == cfg.model and metrics.get("dataset") == cfg.dataset
            and (not cfg.final_eval or "eval_videos" in metrics))
    return metrics if done else None


# -- the driver ------------------------------------------------------------------------------------------


def train_loop(config: dict[str, Any] | TrainConfig, session: Session | None = None,
               hooks: Hooks | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train (and evaluate) one run on this rank. Returns the final metrics (the same on every rank), with
    ``status`` ``"finished"`` or ``"nonfinite"`` (NaN/inf training or validation loss, or non-finite logits:
    stopped, no such checkpoint kept as best). ``overrides``: see :func:`restore`."""
    return train_group([config], session, hooks, overrides)[0]


def train_group(configs: Sequence[dict[str, Any] | TrainConfig], session: Session | None = None,
                hooks: Hooks | None = None, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train several models from one decode pass: every batch the loader decodes feeds each model in turn.

    The configs must agree on every :data:`training.config.DATA_FIELDS` setting (the first config's data
    settings drive the loader and the schedule of checkpoints); models, recipes and ``out`` differ. Each
    member writes its own TensorBoard events, ``metrics.json`` and predictions under its ``out``; the
    session's checkpoints hold every member, and at the end each member of a group of several also gets a
    plain ``out/checkpoint.pt``. A member whose loss goes non-finite stops alone. With one config this is
    :func:`train_loop`. ``hooks`` (default: none) are called at fixed points of the loop. A run whose members
    all have a finished ``metrics.json`` for these epochs (:func:`finished_metrics`) is not trained or evaluated
    again: those metrics are returned.

    Returns one final-metrics dict per config, in order.
    """
    cfgs = [c if isinstance(c, TrainConfig) else TrainConfig.from_dict(c) for c in configs]
    _check_group(cfgs)
    done = [finished_metrics(c) for c in cfgs]
    if all(d is not None for d in done):  # checked before setup: not even a TensorBoard file is opened
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0:
            print(f"{cfgs[0].out}: already finished ({cfgs[0].epochs} epochs, step {done[0].get('step')}); "
                  "nothing to do", flush=True)
        return done
    run = setup(cfgs, session or LocalSession(storage.join(cfgs[0].out, "checkpoints")), hooks or Hooks())
    restore(run, overrides)
    if run.pending is not None:  # the checkpoint was written before its epoch's validation
        validate_and_schedule(run, run.pending, True)
    run.prof = run.prof_stack.enter_context(maybe_profile(run.members[0].obs.dir, run.cfg.profile_steps,
                                                          enabled=run.master and run.step == 0,
                                                          cuda=run.device.type == "cuda"))
    with run.prof_stack:
        for epoch in range(run.train_loader.epoch, run.cfg.epochs):
            if not run.active() or not train_one_epoch(run, epoch):
                break
            end_of_epoch(run, epoch)
    if run.cfg.final_eval and run.active():
        precise_bn(run, run.cfg.epochs - 1)
    for m in run.active():
        m.result = final_evaluation(run, m)
    run.session.report(run.members[0].result, None, None)
    for m in run.members:
        m.obs.close()
    return [m.result for m in run.members]
