"""The training loop: one function, :func:`train_loop`, read top to bottom.

It runs unchanged inside Ray Train workers (``training.ray_train`` passes a :class:`Session` that talks to
Ray) and in a plain process with world size 1 (tests; the default :class:`LocalSession` keeps checkpoints
under ``out/checkpoints``). Nothing here imports Ray: distributed state comes from ``torch.distributed``,
which TorchTrainer initialises before calling the loop.

Order of business (the same on every rank)::

    distributed setup → data → model (+ pretrained weights, freezing) → optimizer, schedule
      → restore the latest checkpoint → epochs: train steps (checkpoint every N steps) → validate →
        schedule step → checkpoint → final evaluation → metrics JSON

A checkpoint is one ``checkpoint.pt`` (:func:`training.checkpoints.save_checkpoint` format) holding model,
optimizer, scheduler, loader position, step, best score, RNG state, the :class:`TrainConfig`, class names,
normalisation preset and the model's input convention.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shards import storage
from shards.manifest import read_dataset_info
from training.checkpoints import load_checkpoint, load_released_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data import ClipLoader, ClipNormalizer, ClipStream, LoaderConfig, normalization_for, shard_specs
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


def train_loop(config: dict[str, Any] | TrainConfig, session: Session | None = None) -> dict[str, Any]:
    """Train (and evaluate) one run on this rank. Returns the final metrics (the same on every rank), with
    ``status`` ``"finished"`` or ``"nonfinite"`` (NaN/inf loss: stopped, last good checkpoint kept)."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
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
    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's weights)
    obs = Observer(cfg.out, enabled=master)

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

    # -- model, frozen layers, input normalisation on the device
    model, pretrained_norm = build_model(cfg, len(classes))
    frozen_norms: list[nn.Module] = []
    if cfg.finetune == "last-layer":
        frozen_norms = freeze_all_but(model, head_keys(cfg.model, **_builder_kwargs(cfg)))
    norm_name = cfg.normalization or pretrained_norm
    normalizer = ClipNormalizer(normalization_for(cfg.dataset, checkpoint=norm_name),
                                channels_last=cfg.channels_last).to(device)
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    raw_model = model
    if ddp:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)

    # -- optimizer and schedule (only the trainable parameters: frozen ones get no weight decay either)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    scheduler = make_scheduler(cfg, optimizer)

    # -- restore: model, optimizer, scheduler, loader position, step, best score, RNG
    step, best = 0, -math.inf
    resumed_at: int | None = None
    last_train: dict[str, float] | None = None
    last_val: dict[str, float] | None = None
    resume_path = session.restore()
    if resume_path is not None:
        _, ckpt = load_checkpoint(resume_path)
        extra = ckpt["extra"]
        raw_model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and extra.get("scheduler") is not None:
            scheduler.load_state_dict(extra["scheduler"])
        train_loader.load_state_dict(extra["loader"])
        step, best = int(extra["step"]), float(extra["best"])
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
            extra = {"train_config": cfg.to_dict(), "step": step, "best": best, "loader": train_loader.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "rng": torch.get_rng_state(), "normalization": norm_name, "classes": classes}
            save_checkpoint(ckpt_dir / CHECKPOINT_FILE, raw_model, epoch=train_loader.epoch, optimizer=optimizer,
                            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))}, extra=extra)
        session.report({**metrics, "score": score, "step": step}, ckpt_dir, tag)

    def stop_nonfinite(loss_value: float, epoch: int) -> dict[str, Any]:
        msg = (f"non-finite loss ({loss_value}) at step {step + 1} (epoch {epoch + 1}); training stopped. The last "
               "good checkpoint is kept; lower the lr or check the data, then resume from it.")
        if master:
            print(f"ERROR: {msg}", flush=True)
        result = {"status": "nonfinite", "message": msg, "step": step, "epoch": epoch}
        obs.write_json("metrics.json", result)
        session.report(result, None, None)
        obs.close()
        return result

    fault_kind, _, fault_step = (cfg.fault or "").partition("@")
    use_amp = cfg.amp and on_gpu
    prof_stack = contextlib.ExitStack()
    prof = prof_stack.enter_context(maybe_profile(obs.dir, cfg.profile_steps, enabled=master and step == 0,
                                                  cuda=on_gpu))

    # -- epochs
    for epoch in range(train_loader.epoch, cfg.epochs):
        train_loader.set_epoch(epoch)  # keeps a restored mid-epoch position
        set_train_mode(raw_model, frozen_norms)
        meter, window = Meter(), Meter()
        batches = iter(train_loader)
        while cfg.max_steps_per_epoch is None or train_loader.batches_done < cfg.max_steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            t1 = time.perf_counter()
            x = normalizer(batch["clips"].to(device, non_blocking=True))
            y = batch["labels"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if fault_kind == "nan" and step + 1 == int(fault_step):
                loss = loss * float("nan")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # NaN/inf: decided jointly (one tiny all-reduce) before the update, so every rank stops at the
            # same step and no bad update reaches the weights or the checkpoints.
            bad = (~torch.isfinite(loss.detach())).float()
            if ddp:
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            if bad.item():
                batches.close()
                prof_stack.close()
                return stop_nonfinite(loss.item(), epoch)
            optimizer.step()
            step += 1
            if fault_kind == "raise" and step == int(fault_step) and master:
                fs, base = storage.resolve(cfg.out)
                marker = storage.join(base, f".fault-{cfg.fault}")
                if not storage.exists(fs, marker):  # once per run directory, so the restarted run gets past it
                    storage.write_bytes_atomic(fs, marker, b"")
                    raise RuntimeError(f"injected fault at step {step} (TrainConfig.fault={cfg.fault!r})")
            top1, top5 = _topk_hits(logits.detach(), y, 5)
            loss_v, top1_v, top5_v = torch.stack([loss.detach(), top1.float(), top5.float()]).tolist()
            t2 = time.perf_counter()
            for m in (meter, window):
                m.add(loss_v, int(top1_v), int(top5_v), y.shape[0], t1 - t0, t2 - t0)
            if prof is not None:
                prof.step()
                if step >= cfg.profile_steps + 1:  # warm-up + active steps recorded: write the trace now
                    prof_stack.close()
                    prof = None
            if master and step % cfg.log_every == 0:
                w = window.reduced(1)  # rank 0's recent steps; clips/s scaled to all workers
                obs.scalars(step, {"train/loss": w["loss"], "train/top1": w["top1"], "train/top5": w["top5"],
                                   "train/lr": optimizer.param_groups[0]["lr"],
                                   "train/clips_per_s": w["clips_per_s"] * world,
                                   "train/data_wait_frac": w["data_wait_frac"]})
                window.reset()
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                checkpoint(f"epoch{epoch:04d}-step{step:08d}", {"epoch": epoch, "kind": "step"}, score=-1.0)
        batches.close()
        train_loader.set_epoch(epoch + 1)  # the saved loader position is "start of the next epoch"
        train = last_train = meter.reduced(world)

        # -- validate (one centre clip per video), step the schedule, checkpoint
        val = None
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            loader, expected = eval_loader("val")
            r = evaluate(raw_model, loader, normalizer, device, num_classes=len(classes), expected=expected,
                         amp=use_amp)
            val = {"loss": r.loss, "top1": r.clip_top1, "top5": r.clip_top5}
            last_val = val
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(r.loss)
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
        lr = optimizer.param_groups[0]["lr"]
        obs.epoch_line(epoch, cfg.epochs, step, train, val, lr)
        obs.scalars(step, {"epoch/loss": train["loss"], "epoch/top1": train["top1"], "epoch/top5": train["top5"],
                           "epoch/clips_per_s": train["clips_per_s"], "epoch/data_wait_frac": train["data_wait_frac"],
                           "epoch/lr": lr})
        if val is not None:
            obs.scalars(step, {"val/loss": val["loss"], "val/top1": val["top1"], "val/top5": val["top5"]})
        obs.flush()
        score = val["top1"] if val is not None else -1.0
        best = max(best, score)
        metrics = {"epoch": epoch, "kind": "epoch", "train_loss": train["loss"], "train_top1": train["top1"],
                   "clips_per_s": train["clips_per_s"], "data_wait_frac": train["data_wait_frac"], "lr": lr}
        if val is not None:
            metrics.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]})
        checkpoint(f"epoch{epoch:04d}-step{step:08d}", metrics, score=score)
    prof_stack.close()

    # -- final evaluation: every window of every validation video, video-level accuracy, predictions
    result: dict[str, Any] = {"status": "finished", "epochs": cfg.epochs, "step": step, "best_val_top1": best,
                              "world_size": world, "model": cfg.model, "dataset": cfg.dataset,
                              "resumed_at_step": resumed_at}
    if last_train is not None:  # the last epoch trained in this session (absent when resumed at the end)
        result.update({"train_loss": last_train["loss"], "train_top1": last_train["top1"],
                       "clips_per_s": last_train["clips_per_s"], "data_wait_frac": last_train["data_wait_frac"]})
    if last_val is not None:
        result.update({f"val_{k}": v for k, v in last_val.items()})
    if cfg.final_eval:
        loader, expected = eval_loader("eval")
        r = evaluate(raw_model, loader, normalizer, device, num_classes=len(classes), expected=expected,
                     amp=use_amp, with_predictions=master)
        result.update(r.metrics("eval_"))
        result["eval_split"] = val_split
        obs.scalars(step, {"eval/video_top1": r.video_top1, "eval/video_top5": r.video_top5,
                           "eval/clip_top1": r.clip_top1})
        if master:
            result["predictions"] = write_predictions(storage.join(cfg.out, f"predictions_{val_split}.parquet"),
                                                      r.predictions, classes)
            print(f"eval {val_split}: {r.videos} videos / {r.clips} clips: video top1 {r.video_top1:.3f} "
                  f"top5 {r.video_top5:.3f}, clip top1 {r.clip_top1:.3f}", flush=True)
    obs.write_json("metrics.json", result)
    session.report(result, None, None)
    obs.close()
    return result
