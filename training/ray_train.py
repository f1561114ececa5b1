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
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from shards import storage, strict_json
from shards.raycluster import init_ray
from training.config import TrainConfig
from training.errors import NON_RETRYABLE, InputError
from training.loop import (
    CHECKPOINT_FILE,
    PENDING_KIND,
    Hooks,
    NonFiniteLossError,
    Session,
    check_resume,
    finished_metrics,
    train_group,
)
from training.result import EvaluationResult, RunResult


class RaySession(Session):
    """The loop's checkpoint I/O inside a Ray Train worker."""

    def device(self, use_gpu: bool) -> torch.device:
        if use_gpu:
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cpu")

    def __init__(self) -> None:
        self._where: str | None = None

    def restore(self) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        self._where = _checkpoint_uri(ckpt)
        # A private local copy (deleted by release() once loaded): works for remote storage too, and survives
        # Ray deleting old checkpoints while the loop reads it.
        local = Path(tempfile.mkdtemp(prefix="e3d-restore-"))
        try:
            ckpt.to_directory(str(local))
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        return local / CHECKPOINT_FILE

    def where(self, path: Path) -> str:
        return self._where or str(path)

    def release(self, path: Path) -> None:
        shutil.rmtree(Path(path).parent, ignore_errors=True)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Every rank passes the same folder name so Ray files rank 0's checkpoint under it.
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # uploaded synchronously by report()


def _console(config: dict[str, Any]) -> None:
    """In a worker: the driver's progress mode (training.progress), and plain ``print``. Ray Train's print
    patch sends each printed line both to stdout and through a logger, so every line reached the console
    twice; the driver turns it off with ``RAY_TRAIN_ENABLE_PRINT_PATCH=0`` for local workers, and this undoes
    it on workers of a cluster that did not inherit that variable."""
    import builtins
    import sys

    if config.get("progress"):
        os.environ["E3D_PROGRESS"] = config["progress"]
    if config.get("label"):  # concurrent runs (a sweep's trials) name their console lines
        os.environ["E3D_RUN_LABEL"] = config["label"]
    module = sys.modules.get(getattr(builtins.print, "__module__", None) or "")
    original = getattr(module, "_original_print", None) if module is not None else None
    if callable(original) and module.__name__.startswith("ray."):
        builtins.print = original


def _train_worker(config: dict[str, Any]) -> None:
    _console(config)
    train_group(config["members"], RaySession(), config.get("hooks"), config.get("overrides") or ())


def has_run_state(out: str) -> bool:
    """True when ``out`` (local path or URI) already holds a run: a checkpoint (Ray's run state or one of the
    loop's checkpoint folders) or a final ``metrics.json``."""
    fs, base = storage.resolve(out)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    return (any(i.base_name.startswith(("checkpoint_", "checkpoint-")) or i.base_name == "metrics.json"
                for i in infos)
            or any(_CKPT_DIR.match(i.base_name) for i in infos))


def _checkpoint_uri(ckpt) -> str:
    return storage.join(storage.to_uri(ckpt.filesystem, ckpt.path), CHECKPOINT_FILE)


_CKPT_DIR = re.compile(r"^epoch(\d+)-step(\d+)(-trained)?$")


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest loop checkpoint file in a run directory (by step; at equal steps the one written after
    validation), or None. Folder names are the loop's tags: ``epochEEEE-stepSSSSSSSS[-trained]``."""
    fs, base = storage.resolve(run_dir)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True)):
        m = _CKPT_DIR.match(info.base_name)
        if m and storage.exists(fs, storage.join(info.path, CHECKPOINT_FILE)):
            found.append(((int(m.group(2)), int(m.group(1)), m.group(3) is None), info.path))
    return storage.to_uri(fs, storage.join(max(found)[1], CHECKPOINT_FILE)) if found else None


def check_resumable(cfg: TrainConfig, run_dir: str, *, workers: int, overrides: Sequence[str] = ()) -> None:
    """Driver-side checks before a resumed run starts Ray (ValueError, i.e. exit 2, instead of a failure
    inside every worker): the latest checkpoint's config agrees with ``cfg`` (see
    :func:`training.loop.check_resume`), its classes with the shards', and a mid-epoch position is resumed
    with the worker count that saved it (at an epoch boundary any count works)."""
    from shards.manifest import read_dataset_info
    from training.checkpoints import load_checkpoint

    path = latest_checkpoint(run_dir)
    if path is None:
        return
    extra = load_checkpoint(path)[1].get("extra") or {}
    if "train_config" in extra:
        check_resume(extra["train_config"], cfg, overrides, path)
    classes = list(read_dataset_info(cfg.shards)["classes"])
    if extra.get("classes") is not None and list(extra["classes"]) != classes:
        raise ValueError(f"{path}: the checkpoint was trained on classes {list(extra['classes'])}, {cfg.shards} "
                         f"has {classes}; a resumed run cannot change its classes")
    loader = extra.get("loader") or {}
    if int(loader.get("batches_done", 0)) > 0 and loader.get("world_size") not in (None, workers):
        raise ValueError(f"{path} is a mid-epoch checkpoint (epoch {int(loader['epoch']) + 1}, batch "
                         f"{loader['batches_done']}) saved by {loader['world_size']} workers; resume it with "
                         f"--workers {loader['world_size']} (the worker count may change at an epoch boundary)")


def input_error_of(exc: BaseException) -> BaseException | None:
    """The bad-input exception (:data:`training.errors.NON_RETRYABLE`) behind a Ray Train failure, if any.

    A ``WorkerGroupError`` maps ranks to ``RayTaskError`` wrappers that are also instances of the worker's
    exception type; when one rank fails on bad input the others often fail with collateral errors (a closed
    connection), so any rank's bad-input error decides."""
    failures = getattr(exc, "worker_failures", None) or {}
    for _, err in sorted(failures.items()):
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, NON_RETRYABLE) or isinstance(err, NON_RETRYABLE):
            return cause if isinstance(cause, BaseException) else err
    return None


def _failure_policy(policy):
    """Ray Train's default failure policy, except that a bad-input error (retrying cannot help) is raised at
    once instead of restarting the workers ``max_failures`` times."""
    from ray.train.v2._internal.execution.failure_handling import FailureDecision

    class InputAwarePolicy(type(policy)):
        def make_decision(self, training_failed_error):
            if input_error_of(training_failed_error) is not None:
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    policy.__class__ = InputAwarePolicy
    return policy


def _trainer_class():
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        # The controller is built from these keyword arguments; the private hook is pinned with ray==2.60.0.
        def _initialize_and_run_controller(self, **kwargs):
            if "failure_policy" in kwargs:
                kwargs["failure_policy"] = _failure_policy(kwargs["failure_policy"])
            return super()._initialize_and_run_controller(**kwargs)

    return Trainer


def _fit(trainer, what: str):
    """``trainer.fit()``; a bad-input failure in a worker comes back as one :class:`InputError` line."""
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        cause = input_error_of(exc)
        if cause is not None:
            raise InputError(" ".join(f"{what} failed on a worker: {type(cause).__name__}: {cause}".split())
                             ) from None
        raise RuntimeError(f"{what} failed: {exc}") from exc


def _trainer(fn, loop_config: dict[str, Any], *, workers: int, use_gpu: bool, run_dir: str, max_failures: int,
             keep_best: bool):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    ckpt_cfg = (CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="max")
                if keep_best else CheckpointConfig(num_to_keep=1))
    return _trainer_class()(
        fn,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        # num_to_keep=1 with a score keeps the best checkpoint; Ray always keeps the latest one as well.
        run_config=RunConfig(name=run_dir.rsplit("/", 1)[1], storage_path=run_dir.rsplit("/", 1)[0],
                             failure_config=FailureConfig(max_failures=max_failures), checkpoint_config=ckpt_cfg,
                             # Ray Train's own INFO lines (TrainingReport dumps, ...) only with `e3d -v`
                             logging_config=LoggingConfig(
                                 log_level="INFO" if os.environ.get("E3D_VERBOSE", "0") != "0" else "WARNING")),
    )


def run_training(cfg: TrainConfig, *, workers: int = 2, max_failures: int = 1, address: str | None = None,
                 resume: bool = False, num_cpus: int | None = None, hooks: Hooks | None = None,
                 resume_if_exists: bool = False, overrides: Sequence[str] = ()) -> RunResult:
    """Train ``cfg`` on ``workers`` Ray Train workers (DDP: gloo on CPU, NCCL with ``cfg.use_gpu``).

    ``cfg.out`` is the run directory (Ray's ``storage_path/name``; local path or object-store URI). An existing
    run is refused unless ``resume``; with ``resume`` the run continues from its latest checkpoint, and a
    directory without a run is refused (``resume_if_exists``: resume when there is a run, start otherwise).
    A resumed run must keep the saved settings except those in
    :data:`training.config.RESUME_MAY_CHANGE` and the fields named in ``overrides``. A run that already
    finished what ``cfg`` asks is not trained or evaluated again: its saved result is returned.

    Returns a :class:`training.result.RunResult`: the final metrics (see :func:`training.loop.train_loop`)
    with ``checkpoint`` (latest) and ``best_checkpoint`` paths (URIs when ``cfg.out`` is one). ``hooks`` go
    to the loop on every worker (picklable). Raises :class:`NonFiniteLossError` when the loss
    went NaN/inf (the last good checkpoint stays in the run directory) and ``RuntimeError`` when the run failed
    beyond ``max_failures``.
    """
    result = run_group([cfg], cfg.out, workers=workers, max_failures=max_failures, address=address,
                       resume=resume, num_cpus=num_cpus, hooks=hooks, resume_if_exists=resume_if_exists,
                       overrides=overrides)[0]
    if result.status == "nonfinite":
        raise NonFiniteLossError(f"{result.message} Latest checkpoint: {result.checkpoint}; best: "
                                 f"{result.best_checkpoint or 'none'}")
    return result


def run_group(cfgs: Sequence[TrainConfig], run_dir: str, *, workers: int = 2, max_failures: int = 1,
              address: str | None = None, resume: bool = False, num_cpus: int | None = None,
              hooks: Hooks | None = None, resume_if_exists: bool = False,
              overrides: Sequence[str] = (), label: str | None = None) -> list[RunResult]:
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
    exists = has_run_state(run_dir)
    if exists and not (resume or resume_if_exists):
        raise ValueError(f"{run_dir} already holds a run; pass resume=True (--resume) to continue it or choose "
                         "another --out")
    if resume and not exists and not resume_if_exists:
        raise ValueError(f"{run_dir}: nothing to resume (no checkpoint or metrics.json there); drop --resume to "
                         "start a new run, or pass --resume-if-exists to resume only when there is one")
    if exists:
        check_resumable(cfgs[0], run_dir, workers=workers, overrides=overrides)  # a finished run too: honest
        done = [finished_metrics(c) for c in cfgs]
        if all(d is not None for d in done):
            print(f"{run_dir}: already finished ({cfgs[0].epochs} epochs, step {done[0].get('step')}); "
                  "nothing trained or evaluated again", flush=True)
            return [RunResult.from_metrics(d, checkpoint=d.get("checkpoint"), best_checkpoint=d.get("best_checkpoint"),
                                           group_checkpoint=d.get("group_checkpoint")) for d in done]
    started = init_ray(address, num_cpus=num_cpus)
    try:
        trainer = _trainer(_train_worker, {"members": [c.to_dict() for c in cfgs], "hooks": hooks,
                                           "overrides": list(overrides), "progress": os.environ.get("E3D_PROGRESS", ""),
                                           "label": label or ""},
                           workers=workers,
                           use_gpu=cfgs[0].use_gpu, run_dir=run_dir, max_failures=max_failures, keep_best=True)
        result = _fit(trainer, "training")
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    latest = _checkpoint_uri(result.checkpoint) if result.checkpoint else None
    best = getattr(result, "best_checkpoints", None) or []
    # A checkpoint taken before its epoch's validation is never "best".
    scored = [(m.get("score", -1.0), _checkpoint_uri(c)) for c, m in best if m.get("kind") != PENDING_KIND]
    out = []
    for c in cfgs:
        # Ray's Result keeps the metrics of checkpoint reports; the loop's final summary is rank 0's metrics.json.
        fs, summary = storage.resolve(storage.join(c.out, "metrics.json"))
        metrics = (json.loads(storage.read_bytes(fs, summary)) if storage.exists(fs, summary)
                   else dict(result.metrics or {}))
        if len(cfgs) == 1:
            paths = {"checkpoint": latest, "best_checkpoint": max(scored)[1] if scored else None}
        else:
            own = metrics.get("final_checkpoint")
            paths = {"checkpoint": own, "best_checkpoint": own, "group_checkpoint": latest}
        if metrics.get("status") == "finished" and storage.exists(fs, summary):
            # Remembered for a later --resume of the finished run, which returns this without starting Ray.
            metrics.update(paths)
            storage.write_bytes_atomic(fs, summary, (strict_json.dumps(metrics, indent=1, sort_keys=True) + "\n")
                                       .encode())
        out.append(RunResult.from_metrics(metrics, **paths))
    return out


def _eval_worker(config: dict[str, Any]) -> None:
    import ray.train

    from training.evaluate import NonFiniteEvalError, evaluate_checkpoint

    try:
        result = evaluate_checkpoint(**config, device=RaySession().device(config.get("use_gpu", False)))
    except NonFiniteEvalError as exc:  # not a failure to retry: told to the driver, which raises it
        ray.train.report({"nonfinite": str(exc)})
        return
    ray.train.report({k: v for k, v in result.items() if isinstance(v, (int, float, str))})


def run_evaluation(checkpoint: str, shards: str, *, out: str, workers: int = 1, split: str | None = None,
                   batch_size: int = 16, use_gpu: bool = False, address: str | None = None,
                   num_cpus: int | None = None, cache_dir: str | None = None,
                   mode: str | None = None) -> EvaluationResult:
    """Evaluate a checkpoint (see :func:`training.evaluate.evaluate_checkpoint`): in this process with one
    worker, on ``workers`` Ray Train workers otherwise (every video still counted once). ``mode``: the
    windows (``eval`` every one, ``val`` the middle one; None: the dataset's protocol)."""
    from training.checkpoints import load_checkpoint
    from training.evaluate import evaluate_checkpoint

    if split is None:  # resolved here so the driver knows which eval_<split>.json the workers write
        extra = load_checkpoint(checkpoint)[1].get("extra") or {}
        split = TrainConfig.from_dict(extra["train_config"]).splits[1] if "train_config" in extra else None
    out = storage.canonical(out)
    kwargs = {"checkpoint": storage.canonical(checkpoint), "shards": storage.canonical(shards), "out": out,
              "split": split, "batch_size": batch_size, "use_gpu": use_gpu, "cache_dir": cache_dir, "mode": mode}
    if workers <= 1:
        return EvaluationResult.from_dict(evaluate_checkpoint(**kwargs))
    started = init_ray(address, num_cpus=num_cpus)
    try:
        run_dir = storage.join(out, "ray-eval")
        fs, path = storage.resolve(run_dir)
        if storage.exists(fs, path):
            fs.delete_dir(path)  # an evaluation is never resumed
        result = _fit(_trainer(_eval_worker, kwargs, workers=workers, use_gpu=use_gpu, run_dir=run_dir,
                               max_failures=0, keep_best=False), "evaluation")
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"evaluation failed: {result.error}") from result.error
    if (result.metrics or {}).get("nonfinite"):
        from training.evaluate import NonFiniteEvalError

        raise NonFiniteEvalError(f"{checkpoint}: {result.metrics['nonfinite']}")
    return EvaluationResult.from_dict(
        json.loads(storage.read_bytes(*storage.resolve(storage.join(out, f"eval_{split}.json")))))
