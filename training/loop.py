"""The training loop: one function, :func:`train_group`, read top to bottom; :func:`train_loop` is the usual
case of a group of one model. A group of several (``e3d sweep --shared-decode``) feeds each batch the loader
decodes to every model in turn, so K models cost one decode pass.

It runs unchanged inside Ray Train workers (``training.ray_train`` passes a :class:`Session` that talks to
Ray) and in a plain process with world size 1 (tests; the default :class:`LocalSession` keeps checkpoints
under ``out/checkpoints``). Nothing here imports Ray: distributed state comes from ``torch.distributed``,
which TorchTrainer initialises before calling the loop.

Order of business (the same on every rank)::

    distributed setup → data → per model: model (+ pretrained weights, freezing), optimizer, schedule
      → restore the latest checkpoint → epochs: train steps, each model on the same batch (checkpoint every
        N steps) → per model: validate, schedule step → checkpoint → per model: final evaluation → metrics JSON

A checkpoint is one ``checkpoint.pt`` (:func:`training.checkpoints.save_checkpoint` format) holding model,
optimizer, scheduler, loader position, step, best score, RNG state, the :class:`TrainConfig`, class names,
normalisation preset and the model's input convention; a group's holds the other models' weights, optimizer,
schedule and best score in ``extra["members"]``.
"""

from __future__ import annotations

import contextlib
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
from shards.manifest import read_dataset_info
from training.checkpoints import load_checkpoint, load_released_checkpoint, save_checkpoint
from training.config import DATA_FIELDS, TrainConfig
from training.data import ClipLoader, ClipNormalizer, ClipStream, LoaderConfig, normalization_for, shard_specs
from training.ddp import wrap_ddp
from training.evaluate import evaluate, expected_clips, write_predictions
from training.models import get_entry, get_model
from training.observe import Meter, Observer, maybe_profile

CHECKPOINT_FILE = "checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped and its last good checkpoint was kept."""


# -- where checkpoints go: Ray (training.ray_train.RaySession) or a local folder -------------------------


class Session:
    """How the loop saves and restores checkpoints and reports metrics. Subclasses: :class:`LocalSession`
    here, ``RaySession`` in :mod:`training.ray_train`."""

    def device(self, use_gpu: bool) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")

    def restore(self) -> Path | None:
        """Path of the latest checkpoint file to resume from, or None to start fresh."""
        raise NotImplementedError

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
        if float(metrics.get("score", -math.inf)) > self.best_score:
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


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, str | None]:
    """The model of ``cfg`` with ``num_classes`` outputs; with ``cfg.pretrained`` every tensor except the
    classifier comes from that checkpoint (ours or a released one) and the classifier is new.

    Returns ``(model, normalisation preset implied by the pretrained weights or None)``.
    """
    kwargs = _builder_kwargs(cfg)
    model = get_model(cfg.model, num_classes=num_classes, **kwargs)
    if not cfg.pretrained:
        return model, None
    fmt = cfg.pretrained_format
    if fmt == "auto":
        raw = torch.load(cfg.pretrained, map_location="cpu", weights_only=True)
        fmt = "ours" if isinstance(raw, dict) and raw.get("format") == "e3d-checkpoint" else "released"
        del raw
    if fmt == "ours":
        src, ckpt = load_checkpoint(cfg.pretrained)
        if src.config.name != cfg.model:
            raise ValueError(f"pretrained checkpoint holds {src.config.name!r}, not {cfg.model!r}")
        norm = (ckpt.get("extra") or {}).get("normalization")
    else:
        plain = {k: v for k, v in cfg.model_kwargs.items() if k != "dropout"}
        src, info = load_released_checkpoint(cfg.pretrained, cfg.model, **plain)
        norm = {"kinetics": "released-kinetics600", "jester": "released-jester"}.get(info.dataset or "")
    head = head_keys(cfg.model, **kwargs)
    backbone = {k: v for k, v in src.state_dict().items() if k not in head}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or set(missing) - head:
        raise ValueError(f"pretrained weights do not fit {cfg.model}: missing {sorted(set(missing) - head)}, "
                         f"unexpected {sorted(unexpected)}")
    model.input_convention = src.input_convention
    return model, norm


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


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """The lr schedule, stepped once per epoch (plateau: with the validation loss)."""
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


# -- the loop --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Member:
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
    result: dict[str, Any] | None = None  # set when the member stopped early (non-finite loss)
    meter: Meter = field(default_factory=Meter)
    window: Meter = field(default_factory=Meter)

    @property
    def name(self) -> str:
        """The member's label in a group: the last part of its ``out`` (a sweep's trial name)."""
        return self.cfg.out.rstrip("/").rsplit("/", 1)[-1]

    def state(self) -> dict[str, Any]:
        """What a group checkpoint holds for a member beyond the first (whose state is the checkpoint itself)."""
        return {"model": self.cfg.model, "out": self.cfg.out, "state_dict": self.raw.state_dict(),
                "optimizer": self.optimizer.state_dict(), "best": self.best,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load(self, state: dict[str, Any], what: str) -> None:
        if state["model"] != self.cfg.model:
            raise ValueError(f"{what} holds {state['model']!r} where this run has {self.cfg.model!r}; "
                             "resume a group with the same members in the same order")
        self.raw.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.best = float(state["best"])


def train_loop(config: dict[str, Any] | TrainConfig, session: Session | None = None) -> dict[str, Any]:
    """Train (and evaluate) one run on this rank. Returns the final metrics (the same on every rank), with
    ``status`` ``"finished"`` or ``"nonfinite"`` (NaN/inf loss: stopped, last good checkpoint kept)."""
    return train_group([config], session)[0]


def train_group(configs: Sequence[dict[str, Any] | TrainConfig], session: Session | None = None
                ) -> list[dict[str, Any]]:
    """Train several models from one decode pass: every batch the loader decodes feeds each model in turn.

    The configs must agree on every :data:`training.config.DATA_FIELDS` setting (the first config's data
    settings drive the loader, schedule of checkpoints and fault injection); models, recipes and ``out``
    differ. Each member writes its own TensorBoard events, ``metrics.json`` and predictions under its
    ``out``; the session's checkpoints hold every member (the first as the checkpoint proper, the others in
    ``extra["members"]``), and at the end each member of a group of several also gets a plain
    ``out/checkpoint.pt``. A member whose loss goes non-finite stops alone. With one config this is
    :func:`train_loop`.

    Returns one final-metrics dict per config, in order.
    """
    cfgs = [c if isinstance(c, TrainConfig) else TrainConfig.from_dict(c) for c in configs]
    if not cfgs:
        raise ValueError("train_group needs at least one config")
    cfg = cfgs[0]  # the data settings of the whole group
    for other in cfgs[1:]:
        diff = [f for f in DATA_FIELDS if getattr(other, f) != getattr(cfg, f)]
        if diff:
            raise ValueError(f"{other.out}: a shared-decode group must agree on {diff} with {cfg.out}")
    grouped = len(cfgs) > 1
    session = session or LocalSession(storage.join(cfg.out, "checkpoints"))

    # -- distributed setup: TorchTrainer has initialised the process group; a direct call has none.
    ddp = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if ddp else 0
    world = torch.distributed.get_world_size() if ddp else 1
    master = rank == 0
    device = session.device(cfg.use_gpu)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune conv algorithms once

    # -- data: per-worker share of the global batch; every rank yields the same number of batches.
    info = read_dataset_info(cfg.shards)
    classes = list(info["classes"])
    train_split, val_split = cfg.splits
    per_worker = cfg.per_worker_batch(world)
    common = {"clip_len": cfg.clip_len, "size": cfg.size, "num_workers": cfg.loader_workers, "seed": cfg.seed,
              "batch_size": per_worker}
    train_loader = ClipLoader(
        ClipStream(shard_specs(cfg.shards, train_split, videos=False),
                   LoaderConfig.for_dataset(cfg.dataset, "train", **common,
                                            **({"scales": cfg.crop_scales} if cfg.crop_scales else {}))),
        # Each DataLoader iterator draws a seed; from its own generator it leaves the global RNG (dropout) alone,
        # so a mid-epoch resume replays exactly the dropout masks of an uninterrupted run.
        pin_memory=on_gpu, generator=torch.Generator().manual_seed(cfg.seed))
    val_specs = shard_specs(cfg.shards, val_split, videos=True)

    def eval_loader(mode: str) -> tuple[ClipLoader, dict[str, int]]:
        lcfg = LoaderConfig.for_dataset(cfg.dataset, mode, **common)
        loader = ClipLoader(ClipStream(val_specs, lcfg), pin_memory=on_gpu, generator=torch.Generator())
        return loader, expected_clips(val_specs, lcfg)

    # -- per member: model, frozen layers, input normalisation on the device, optimizer and schedule
    members: list[_Member] = []
    for mcfg in cfgs:
        torch.manual_seed(mcfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)
        raw, pretrained_norm = build_model(mcfg, len(classes))
        frozen_norms: list[nn.Module] = []
        if mcfg.finetune == "last-layer":
            frozen_norms = freeze_all_but(raw, head_keys(mcfg.model, **_builder_kwargs(mcfg)))
        norm_name = mcfg.normalization or pretrained_norm
        normalizer = ClipNormalizer(normalization_for(mcfg.dataset, checkpoint=norm_name),
                                    channels_last=mcfg.channels_last).to(device)
        memory_format = torch.channels_last_3d if mcfg.channels_last else torch.contiguous_format
        raw = raw.to(device, memory_format=memory_format)
        model = wrap_ddp(raw, device) if ddp else raw  # gradients laid out like their parameters
        # only the trainable parameters: frozen ones get no weight decay either
        optimizer = torch.optim.SGD([p for p in raw.parameters() if p.requires_grad], lr=mcfg.lr,
                                    momentum=mcfg.momentum, dampening=mcfg.dampening,
                                    weight_decay=mcfg.weight_decay, nesterov=mcfg.nesterov)
        members.append(_Member(mcfg, raw, model, optimizer, make_scheduler(mcfg, optimizer), normalizer, norm_name,
                               frozen_norms, Observer(mcfg.out, enabled=master)))
    lead = members[0]

    # -- restore: models, optimizers, schedulers, loader position, step, best scores, RNG
    step = 0
    resumed_at: int | None = None
    resume_path = session.restore()
    if resume_path is not None:
        _, ckpt = load_checkpoint(resume_path)
        extra = ckpt["extra"]
        saved = extra.get("members") or []
        if len(saved) != len(members) - 1:
            raise ValueError(f"{resume_path} holds {len(saved) + 1} model(s), this run has {len(members)}")
        lead.load({"model": ckpt["model"]["name"], "state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer"],
                   "best": extra["best"], "scheduler": extra.get("scheduler")}, str(resume_path))
        for m, state in zip(members[1:], saved, strict=True):
            m.load(state, str(resume_path))
        train_loader.load_state_dict(extra["loader"])
        step = int(extra["step"])
        torch.set_rng_state(extra["rng"])
        resumed_at = step
        if master:
            print(f"resumed from {resume_path} at epoch {train_loader.epoch + 1}, "
                  f"batch {train_loader.batches_done}, step {step}", flush=True)

    def checkpoint(tag: str, metrics: dict[str, Any], score: float) -> None:
        """Rank 0 writes checkpoint.pt into a fresh folder; every rank reports (Ray needs all of them)."""
        ckpt_dir = None
        if master:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="e3d-ckpt-"))
            extra = {"train_config": cfg.to_dict(), "step": step, "best": lead.best,
                     "loader": train_loader.state_dict(),
                     "scheduler": lead.scheduler.state_dict() if lead.scheduler is not None else None,
                     "rng": torch.get_rng_state(), "normalization": lead.norm_name, "classes": classes}
            if grouped:
                extra["members"] = [m.state() for m in members[1:]]
            save_checkpoint(ckpt_dir / CHECKPOINT_FILE, lead.raw, epoch=train_loader.epoch,
                            optimizer=lead.optimizer,
                            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))}, extra=extra)
        session.report({**metrics, "score": score, "step": step}, ckpt_dir, tag)

    def stop_nonfinite(m: _Member, loss_value: float, epoch: int) -> None:
        msg = (f"non-finite loss ({loss_value}) at step {step + 1} (epoch {epoch + 1}); training stopped. The last "
               "good checkpoint is kept; lower the lr or check the data, then resume from it.")
        if master:
            print(f"ERROR: {m.name}: {msg}", flush=True)
        m.result = {"status": "nonfinite", "message": msg, "step": step, "epoch": epoch}
        m.obs.write_json("metrics.json", m.result)
        m.obs.close()

    fault_kind, _, fault_step = (cfg.fault or "").partition("@")
    prof_stack = contextlib.ExitStack()
    prof = prof_stack.enter_context(maybe_profile(lead.obs.dir, cfg.profile_steps, enabled=master and step == 0,
                                                  cuda=on_gpu))

    def active() -> list[_Member]:
        return [m for m in members if m.result is None]

    # -- epochs
    for epoch in range(train_loader.epoch, cfg.epochs):
        train_loader.set_epoch(epoch)  # keeps a restored mid-epoch position
        for m in active():
            set_train_mode(m.raw, m.frozen_norms)
            m.meter, m.window = Meter(), Meter()
        batches = iter(train_loader)
        per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
        while cfg.max_steps_per_epoch is None or train_loader.batches_done < cfg.max_steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            t1 = time.perf_counter()
            clips = batch["clips"].to(device, non_blocking=True)
            y = batch["labels"].to(device, non_blocking=True)
            stepping = active()
            losses, hits = [], []
            for m in stepping:  # one decoded batch, every model of the group
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=m.cfg.amp and on_gpu):
                    logits = m.model(m.normalizer(clips))
                loss = F.cross_entropy(logits.float(), y)
                if fault_kind == "nan" and step + 1 == int(fault_step):
                    loss = loss * float("nan")
                m.optimizer.zero_grad(set_to_none=False)  # in place: DDP's gradients are views of its buckets
                loss.backward()
                losses.append(loss.detach())
                hits.append(_topk_hits(logits.detach(), y, 5))
            # NaN/inf: decided jointly (one tiny all-reduce) before the update, so every rank stops a model at
            # the same step and no bad update reaches its weights or the checkpoints.
            bad = (~torch.isfinite(torch.stack(losses))).float()
            if ddp:
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            for m, is_bad, loss in zip(stepping, bad.tolist(), losses, strict=True):
                if is_bad:
                    stop_nonfinite(m, loss.item(), epoch)
                else:
                    m.optimizer.step()
            if not active():
                batches.close()
                prof_stack.close()
                session.report(lead.result, None, None)
                return [m.result for m in members]
            step += 1
            if fault_kind == "raise" and step == int(fault_step) and master:
                fs, base = storage.resolve(cfg.out)
                marker = storage.join(base, f".fault-{cfg.fault}")
                if not storage.exists(fs, marker):  # once per run directory, so the restarted run gets past it
                    storage.write_bytes_atomic(fs, marker, b"")
                    raise RuntimeError(f"injected fault at step {step} (TrainConfig.fault={cfg.fault!r})")
            t2 = time.perf_counter()
            for m, loss, (top1, top5) in zip(stepping, losses, hits, strict=True):
                if m.result is not None:
                    continue
                loss_v, top1_v, top5_v = torch.stack([loss, top1.float(), top5.float()]).tolist()
                for meter in (m.meter, m.window):
                    meter.add(loss_v, int(top1_v), int(top5_v), y.shape[0], t1 - t0, t2 - t0)
                if master and step % cfg.log_every == 0:
                    w = m.window.reduced(1)  # rank 0's recent steps; clips/s scaled to all workers
                    m.obs.scalars(step, {"train/loss": w["loss"], "train/top1": w["top1"], "train/top5": w["top5"],
                                         "train/lr": m.optimizer.param_groups[0]["lr"],
                                         "train/clips_per_s": w["clips_per_s"] * world,
                                         "train/data_wait_frac": w["data_wait_frac"]})
                    m.window.reset()
            lead.obs.step_progress(epoch, cfg.epochs, train_loader.batches_done, per_epoch,
                                   lead.meter.loss_sum / max(lead.meter.clips, 1))
            if prof is not None:
                prof.step()
                if step >= cfg.profile_steps + 1:  # warm-up + active steps recorded: write the trace now
                    prof_stack.close()
                    prof = None
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                checkpoint(f"epoch{epoch:04d}-step{step:08d}", {"epoch": epoch, "kind": "step"}, score=-1.0)
        batches.close()
        train_loader.set_epoch(epoch + 1)  # the saved loader position is "start of the next epoch"

        # -- per member: validate (one centre clip per video), step the schedule, report; then checkpoint
        scores, metrics = [], {"epoch": epoch, "kind": "epoch"}
        validate = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
        for m in active():
            train = m.last_train = m.meter.reduced(world)
            val = None
            if validate:
                loader, expected = eval_loader("val")
                r = evaluate(m.raw, loader, m.normalizer, device, num_classes=len(classes), expected=expected,
                             amp=m.cfg.amp and on_gpu)
                val = m.last_val = {"loss": r.loss, "top1": r.clip_top1, "top5": r.clip_top5}
                if isinstance(m.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    m.scheduler.step(r.loss)
            if m.scheduler is not None and not isinstance(m.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                m.scheduler.step()
            lr = m.optimizer.param_groups[0]["lr"]
            m.obs.epoch_line(epoch, cfg.epochs, step, train, val, lr, name=m.name if grouped else None)
            m.obs.scalars(step, {"epoch/loss": train["loss"], "epoch/top1": train["top1"],
                                 "epoch/top5": train["top5"], "epoch/clips_per_s": train["clips_per_s"],
                                 "epoch/data_wait_frac": train["data_wait_frac"], "epoch/lr": lr})
            if val is not None:
                m.obs.scalars(step, {"val/loss": val["loss"], "val/top1": val["top1"], "val/top5": val["top5"]})
            m.obs.flush()
            score = val["top1"] if val is not None else -1.0
            m.best = max(m.best, score)
            scores.append(score)
            mine = {"train_loss": train["loss"], "train_top1": train["top1"], "clips_per_s": train["clips_per_s"],
                    "data_wait_frac": train["data_wait_frac"], "lr": lr}
            if val is not None:
                mine.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]})
            metrics.update(mine if m is lead else {f"{k}/{m.name}": v for k, v in mine.items()})
        # a group's checkpoint score (which Ray keeps as "best") is its members' mean validation top-1
        checkpoint(f"epoch{epoch:04d}-step{step:08d}", metrics, score=sum(scores) / max(len(scores), 1))
    prof_stack.close()

    # -- final evaluation per member: every window of every validation video, video-level accuracy, predictions
    for m in active():
        result: dict[str, Any] = {"status": "finished", "epochs": cfg.epochs, "step": step,
                                  "best_val_top1": m.best, "world_size": world, "model": m.cfg.model,
                                  "dataset": cfg.dataset, "resumed_at_step": resumed_at}
        if grouped:
            result["shared_decode_group"] = [c.out for c in cfgs]
        if m.last_train is not None:  # the last epoch trained in this session (absent when resumed at the end)
            result.update({"train_loss": m.last_train["loss"], "train_top1": m.last_train["top1"],
                           "clips_per_s": m.last_train["clips_per_s"],
                           "data_wait_frac": m.last_train["data_wait_frac"]})
        if m.last_val is not None:
            result.update({f"val_{k}": v for k, v in m.last_val.items()})
        if cfg.final_eval:
            loader, expected = eval_loader("eval")
            r = evaluate(m.raw, loader, m.normalizer, device, num_classes=len(classes), expected=expected,
                         amp=m.cfg.amp and on_gpu, with_predictions=master)
            result.update(r.metrics("eval_"))
            result["eval_split"] = val_split
            m.obs.scalars(step, {"eval/video_top1": r.video_top1, "eval/video_top5": r.video_top5,
                                 "eval/clip_top1": r.clip_top1})
            if master:
                result["predictions"] = write_predictions(
                    storage.join(m.cfg.out, f"predictions_{val_split}.parquet"), r.predictions, classes)
                # the figures are printed once, by the driver's summary (with the checkpoint they came from)
        if grouped and master:  # a plain checkpoint per member, loadable and evaluable on its own
            local = Path(tempfile.mkdtemp(prefix="e3d-final-")) / CHECKPOINT_FILE
            save_checkpoint(local, m.raw, epoch=cfg.epochs, optimizer=None, metrics={},
                            extra={"train_config": m.cfg.to_dict(), "step": step, "normalization": m.norm_name,
                                   "classes": classes})
            fs, path = storage.resolve(storage.join(m.cfg.out, CHECKPOINT_FILE))
            storage.write_bytes_atomic(fs, path, local.read_bytes())
            shutil.rmtree(local.parent, ignore_errors=True)
            result["final_checkpoint"] = storage.to_uri(fs, path)
        m.result = result
        m.obs.write_json("metrics.json", result)
    session.report(lead.result, None, None)
    for m in members:
        m.obs.close()
    return [m.result for m in members]
