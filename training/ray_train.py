"""Ray at the edge: run :func:`training.loop.train_loop` (or an evaluation) on N workers with Ray Train.

Everything Ray-specific lives here: connecting to Ray (an embedded local instance by default, an existing
cluster with ``address=``/``RAY_ADDRESS``), ``TorchTrainer`` with ``ScalingConfig`` (workers, GPU),
``RunConfig(storage_path, name)`` with ``FailureConfig(max_failures)`` and a ``CheckpointConfig`` keeping the
latest and the best checkpoint (by validation top-1), and :class:`RaySession`, which maps the loop's
checkpoint save/restore onto ``ray.train.report``/``ray.train.get_checkpoint``.

A run directory ``out`` is Ray's ``storage_path/name``: Ray writes ``checkpoint_*/checkpoint.pt`` and its
run state there, the loop's rank 0 writes ``tensorboard/``, ``metrics.json`` and predictions next to them.
``out`` is a path every node can write (local disk for one machine, NFS) or an object-store URI
(``s3://bucket/prefix``, ``gs://...``; Ray and the loop both go through pyarrow.fs, so endpoint and
credentials come from the usual environment variables on every node). Running again with the same ``out``
resumes from the latest checkpoint (``resume=True``), as does Ray itself after a worker failure.

Measured on 2 CPU cores (ray 2.60, Train V2): ~9 s from ``fit()`` to the loop starting; each
``ray.train.report`` costs up to ~2 s (the controller polls every 2 s), so the loop reports only at
checkpoints (epoch ends and every ``checkpoint_every_steps`` steps).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from shards import storage
from shards.raycluster import init_ray
from training.config import TrainConfig
from training.loop import CHECKPOINT_FILE, Hooks, NonFiniteLossError, Session, train_group
from training.result import RunResult


class RaySession(Session):
    """The loop's checkpoint I/O inside a Ray Train worker."""

    def device(self, use_gpu: bool) -> torch.device:
        if use_gpu:
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cpu")

    def restore(self) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        # A private local copy: works for remote storage too, and survives Ray deleting old checkpoints.
        local = Path(tempfile.mkdtemp(prefix="e3d-restore-"))
        ckpt.to_directory(str(local))
        return local / CHECKPOINT_FILE

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Every rank passes the same folder name so Ray files rank 0's checkpoint under it.
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # uploaded synchronously by report()


def _train_worker(config: dict[str, Any]) -> None:
    train_group(config["members"], RaySession(), config.get("hooks"))


def has_run_state(out: str) -> bool:
    """True when ``out`` (local path or URI) already holds a run: a checkpoint or a final ``metrics.json``."""
    fs, base = storage.resolve(out)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    return any(i.base_name.startswith(("checkpoint_", "checkpoint-")) or i.base_name == "metrics.json"
               for i in infos)


def _checkpoint_uri(ckpt) -> str:
    return storage.join(storage.to_uri(ckpt.filesystem, ckpt.path), CHECKPOINT_FILE)


def _trainer(fn, loop_config: dict[str, Any], *, workers: int, use_gpu: bool, run_dir: str, max_failures: int,
             keep_best: bool):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ckpt_cfg = (CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="max")
                if keep_best else CheckpointConfig(num_to_keep=1))
    return TorchTrainer(
        fn,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        # num_to_keep=1 with a score keeps the best checkpoint; Ray always keeps the latest one as well.
        run_config=RunConfig(name=run_dir.rsplit("/", 1)[1], storage_path=run_dir.rsplit("/", 1)[0],
                             failure_config=FailureConfig(max_failures=max_failures), checkpoint_config=ckpt_cfg),
    )


def run_training(cfg: TrainConfig, *, workers: int = 2, max_failures: int = 1, address: str | None = None,
                 resume: bool = False, num_cpus: int | None = None, hooks: Hooks | None = None) -> RunResult:
    """Train ``cfg`` on ``workers`` Ray Train workers (DDP: gloo on CPU, NCCL with ``cfg.use_gpu``).

    ``cfg.out`` is the run directory (Ray's ``storage_path/name``; local path or object-store URI). An existing
    run is refused unless ``resume``; with ``resume`` the run continues from its latest checkpoint.

    Returns a :class:`training.result.RunResult`: the final metrics (see :func:`training.loop.train_loop`)
    with ``checkpoint`` (latest) and ``best_checkpoint`` paths (URIs when ``cfg.out`` is one). ``hooks`` go
    to the loop on every worker (picklable). Raises :class:`NonFiniteLossError` when the loss
    went NaN/inf (the last good checkpoint stays in the run directory) and ``RuntimeError`` when the run failed
    beyond ``max_failures``.
    """
    result = run_group([cfg], cfg.out, workers=workers, max_failures=max_failures, address=address,
                       resume=resume, num_cpus=num_cpus, hooks=hooks)[0]
    if result.status == "nonfinite":
        raise NonFiniteLossError(f"{result.message} Last good checkpoint: {result.checkpoint}")
    return result


def run_group(cfgs: Sequence[TrainConfig], run_dir: str, *, workers: int = 2, max_failures: int = 1,
              address: str | None = None, resume: bool = False, num_cpus: int | None = None,
              hooks: Hooks | None = None) -> list[RunResult]:
    """Train several models from one decode pass (:func:`training.loop.train_group`) as one Ray Train run
    whose checkpoints live in ``run_dir``; each member's metrics, TensorBoard and predictions go to its own
    ``out``. With one config whose ``out`` is ``run_dir`` this is :func:`run_training`.

    Returns each member's :class:`training.result.RunResult` (``status`` ``finished`` or ``nonfinite``) with
    ``checkpoint``: the
    run's latest checkpoint for a single run, the member's own final ``out/checkpoint.pt`` in a group (the
    group's checkpoint, which holds every member, is ``group_checkpoint``).
    """
    run_dir = storage.canonical(run_dir)
    # Absolute paths: Ray's workers run in a directory of their own, where a relative path means nothing.
    cfgs = [c.replace(out=storage.canonical(c.out), shards=storage.canonical(c.shards),
                      pretrained=storage.canonical(c.pretrained) if c.pretrained else None) for c in cfgs]
    if has_run_state(run_dir) and not resume:
        raise ValueError(f"{run_dir} already holds a run; pass resume=True (--resume) to continue it or choose "
                         "another --out")
    started = init_ray(address, num_cpus=num_cpus)
    try:
        trainer = _trainer(_train_worker, {"members": [c.to_dict() for c in cfgs], "hooks": hooks}, workers=workers,
                           use_gpu=cfgs[0].use_gpu, run_dir=run_dir, max_failures=max_failures, keep_best=True)
        result = trainer.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    latest = _checkpoint_uri(result.checkpoint) if result.checkpoint else None
    best = getattr(result, "best_checkpoints", None) or []
    scored = [(m.get("score", -1.0), _checkpoint_uri(c)) for c, m in best]
    out = []
    for c in cfgs:
        # Ray's Result keeps the metrics of checkpoint reports; the loop's final summary is rank 0's metrics.json.
        fs, summary = storage.resolve(storage.join(c.out, "metrics.json"))
        metrics = (json.loads(storage.read_bytes(fs, summary)) if storage.exists(fs, summary)
                   else dict(result.metrics or {}))
        if len(cfgs) == 1:
            paths = {"checkpoint": latest, "best_checkpoint": max(scored)[1] if scored else latest}
        else:
            own = metrics.get("final_checkpoint")
            paths = {"checkpoint": own, "best_checkpoint": own, "group_checkpoint": latest}
        out.append(RunResult.from_metrics(metrics, **paths))
    return out


def _eval_worker(config: dict[str, Any]) -> None:
    import ray.train

    from training.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(**config, device=RaySession().device(config.get("use_gpu", False)))
    ray.train.report({k: v for k, v in result.items() if isinstance(v, (int, float, str))})


def run_evaluation(checkpoint: str, shards: str, *, out: str, workers: int = 1, split: str | None = None,
                   batch_size: int = 16, use_gpu: bool = False, address: str | None = None,
                   num_cpus: int | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint (see :func:`training.evaluate.evaluate_checkpoint`): in this process with one
    worker, on ``workers`` Ray Train workers otherwise (every video still counted once)."""
    from training.checkpoints import load_checkpoint
    from training.evaluate import evaluate_checkpoint

    if split is None:  # resolved here so the driver knows which eval_<split>.json the workers write
        extra = load_checkpoint(checkpoint)[1].get("extra") or {}
        split = TrainConfig.from_dict(extra["train_config"]).splits[1] if "train_config" in extra else None
    out = storage.canonical(out)
    kwargs = {"checkpoint": storage.canonical(checkpoint), "shards": storage.canonical(shards), "out": out,
              "split": split, "batch_size": batch_size, "use_gpu": use_gpu, "cache_dir": cache_dir}
    if workers <= 1:
        return evaluate_checkpoint(**kwargs)
    started = init_ray(address, num_cpus=num_cpus)
    try:
        run_dir = storage.join(out, "ray-eval")
        fs, path = storage.resolve(run_dir)
        if storage.exists(fs, path):
            fs.delete_dir(path)  # an evaluation is never resumed
        result = _trainer(_eval_worker, kwargs, workers=workers, use_gpu=use_gpu, run_dir=run_dir,
                          max_failures=0, keep_best=False).fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"evaluation failed: {result.error}") from result.error
    return json.loads(storage.read_bytes(*storage.resolve(storage.join(out, f"eval_{split}.json"))))
