"""Architecture sweeps over one set of shards: every configuration trains and evaluates on the same
preprocessed data (no re-decoding of videos), trials run concurrently as the Ray cluster's resources allow,
and results come out as a Parquet table, a Table-8-style Markdown report and an accuracy/MFLOPs plot.

Each trial is one Ray Train run (``training.ray_train.run_training``) under this single driver; trials
are started from a thread pool sized to the cluster (trial workers × concurrent trials ≤ CPUs or GPUs),
and Ray places their workers. A rerun skips finished trials (their ``trial.json``) and resumes unfinished
ones from their last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.report import TrialResult, build_report, write_results
from shards import storage, strict_json

TRIAL_FILE = "trial.json"


@dataclass(frozen=True)
class TrialSpec:
    """One configuration: a registry model name, its builder kwargs and TrainConfig overrides."""

    name: str
    model: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the dataset's shards, the trials, the recipe shared by all trials, and placement.

    ``base`` holds TrainConfig overrides applied to every trial (e.g. epochs, clip_len, size, batch_size);
    ``workers_per_trial`` Ray Train workers each; ``max_concurrent`` trials at once (None: as many as the
    cluster's CPUs, or GPUs with ``use_gpu``, allow). ``shared_decode`` trains trials that read the same clips
    together, up to ``max_group`` models fed by one decode pass (:func:`training.loop.train_group`); a group
    takes one slot.
    """

    dataset: str
    shards: str
    out: str
    trials: tuple[TrialSpec, ...]
    base: Mapping[str, Any] = field(default_factory=dict)
    workers_per_trial: int = 1
    max_concurrent: int | None = None
    use_gpu: bool = False
    address: str | None = None
    num_cpus: int | None = None
    speed_iters: int = 5
    shared_decode: bool = False
    max_group: int = 8


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def table8_grid() -> list[TrialSpec]:
    """The 17 Table 8 configurations, by their registry names."""
    from training.models.table8 import TABLE8

    return [TrialSpec(e.name, e.name, dict(e.kwargs)) for e in TABLE8]


def load_grid(path: str) -> tuple[list[TrialSpec], dict[str, Any]]:
    """Read a user grid (YAML or JSON): models × widths × recipe overrides, plus explicit trials.

    ::

        base: {epochs: 30, clip_len: 16}            # applied to every trial
        models: [shufflenetv2, mobilenetv2_1.0x]    # registry names
        widths: [0.5, 1.0]                          # width_mult for models that take it (optional)
        overrides: [{lr: 0.1}, {lr: 0.05, dropout: 0.5}]   # recipe variants (optional)
        trials: [{model: squeezenet1_1, lr: 0.05}]  # extra explicit trials (optional)

    Returns the trials and the ``base`` overrides.
    """
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a grid is a mapping with models/widths/overrides/trials/base")
    unknown = set(spec) - {"base", "models", "widths", "overrides", "trials"}
    if unknown:
        raise ValueError(f"{path}: unknown grid keys {sorted(unknown)}")
    trials: list[TrialSpec] = []
    widths = spec.get("widths") or [None]
    variants = spec.get("overrides") or [{}]
    for model in spec.get("models") or []:
        for w in widths:
            for i, ov in enumerate(variants):
                kwargs = {} if w is None else {"width_mult": float(w)}
                name = model + (f"_w{w}" if w is not None else "") + (f"_v{i}" if len(variants) > 1 else "")
                trials.append(TrialSpec(_slug(name), model, kwargs, dict(ov)))
    for t in spec.get("trials") or []:
        if not isinstance(t, dict) or not isinstance(t.get("model"), str):
            raise ValueError(f"{path}: each entry of trials needs a model name, got {t!r}")
        t = dict(t)
        model = t.pop("model")
        kwargs = dict(t.pop("model_kwargs", {}) or {})
        name = t.pop("name", None) or _slug(model + "".join(f"_{k}{v}" for k, v in sorted(t.items())))
        trials.append(TrialSpec(name, model, kwargs, t))
    if not trials:
        raise ValueError(f"{path}: the grid defines no trial")
    names = [t.name for t in trials]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate trial names {dup}")
    return trials, dict(spec.get("base") or {})


def _train_config(cfg: SweepConfig, trial: TrialSpec):
    from training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    over = {**cfg.base, **trial.overrides}
    bad = sorted(set(over) - fields)
    if bad:
        raise ValueError(f"trial {trial.name}: unknown training settings {bad}")
    return TrainConfig(dataset=cfg.dataset, shards=cfg.shards, out=_trial_dir(cfg, trial),
                       model=trial.model, model_kwargs=dict(trial.model_kwargs), use_gpu=cfg.use_gpu, **over)


def _trial_dir(cfg: SweepConfig, trial: TrialSpec) -> str:
    """``out/trials/<name>``: the trial's Ray Train run directory (local path or URI, like ``out``)."""
    return storage.join(storage.canonical(cfg.out), "trials", trial.name)


def counts_classes(cfg: SweepConfig) -> int:
    """The class count of the sweep's data (what the trained models' classifiers have)."""
    from shards.manifest import read_dataset_info

    return len(read_dataset_info(cfg.shards)["classes"])


def _counts(trial: TrialSpec, num_classes: int) -> tuple[int, float, float]:
    """Parameters for ``num_classes`` and (paper MFLOPs, exact MMACs) at the paper's 3x16x112x112 input."""
    import torch

    from training.flops import count_ops, count_params
    from training.models import get_model

    with torch.device("meta"):
        model = get_model(trial.model, num_classes=num_classes, **dict(trial.model_kwargs))
    macs, ops = count_ops(model, (1, 3, 16, 112, 112))
    return count_params(model), ops / 1e6, (macs or 0) / 1e6


def _speed(trial: TrialSpec, iters: int, use_gpu: bool) -> float:
    """Inference clips/s at batch 8 (the paper's speed setting) on this machine's device."""
    import torch

    from training.models import get_model

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    model = get_model(trial.model, num_classes=600, **dict(trial.model_kwargs)).eval().to(device)
    model = model.to(memory_format=torch.channels_last_3d)
    x = torch.randn(8, 3, 16, 112, 112, device=device).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 8 * iters / (time.perf_counter() - t0)


def decode_cost(tcfg, clips: int = 64) -> float:
    """CPU seconds the training loader spends per clip (read, decode, crop, resize), measured here.

    Every trial of a sweep reads the same shards with the same clip settings (``tcfg``: any trial's
    TrainConfig), so one measurement gives the data cost of each trained clip.
    """
    from training.data import ClipLoader, ClipStream, shard_specs

    loader = ClipLoader(ClipStream(shard_specs(tcfg.shards, tcfg.splits[0], videos=False),
                                   decode_loader_config(tcfg), rank=0, world_size=1))
    loader.set_epoch(0)
    n, c0 = 0, _cpu()
    for batch in loader:
        n += len(batch["labels"])
        if n >= clips:
            break
    return (_cpu() - c0) / max(n, 1)


def decode_loader_config(tcfg):
    """The training loader's config (:meth:`training.config.TrainConfig.loader_config`: clip length, size,
    crop scales, seed) at batch 8, decoding in this process: ``getrusage(RUSAGE_SELF)`` counts only this
    process's CPU time, so DataLoader worker processes would hide the cost being measured."""
    return tcfg.loader_config("train", batch_size=8, num_workers=0)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run_trials(cfg: SweepConfig, trials: Sequence[TrialSpec], counts: Mapping[str, tuple[int, float, float]],
                decode_s: float) -> list[TrialResult]:
    """Run one trial (its own Ray Train run) or a shared-decode group (one Ray Train run whose loader feeds
    every trial's model; checkpoints under ``out/groups/<id>``). Returns one result per trial."""
    from training.ray_train import run_group

    tcfgs = [_train_config(cfg, t) for t in trials]
    grouped = len(trials) > 1
    run_dir = _group_dir(cfg, trials) if grouped else tcfgs[0].out
    t0 = time.monotonic()
    try:
        # An unfinished trial (or group) continues from its last checkpoint, a new one starts fresh, and one
        # whose run finished (metrics.json) but whose trial.json is missing is reported, not trained again.
        runs = run_group(tcfgs, run_dir, workers=cfg.workers_per_trial, resume_if_exists=True, address=cfg.address,
                         label=run_dir.rstrip("/").rsplit("/", 1)[-1])
    except Exception as exc:  # noqa: BLE001 - one failed trial must not end the sweep
        from training.result import RunResult

        runs = [RunResult(status=f"failed: {_cause(exc)}") for _ in trials]
    wall = time.monotonic() - t0
    results = []
    for trial, tcfg, run in zip(trials, tcfgs, runs, strict=True):
        params, mflops, macs, params_600, mflops_600 = counts[trial.name]
        status = run.status
        result = TrialResult(
            trial=trial.name, model=trial.model, dataset=cfg.dataset, status=status, params=params, mflops=mflops,
            macs_m=macs, clips_per_s=_speed(trial, cfg.speed_iters, cfg.use_gpu),
            video_top1=run.eval_video_top1, video_top5=run.eval_video_top5,
            clip_top1=run.eval_clip_top1, epochs=run.epochs,
            train_clips=run.step * int(tcfg.batch_size), wall_s=wall,
            # one decode pass feeds every model of a group: each trained clip costs a share of a decode
            decode_cpu_s_per_clip=decode_s / len(trials),
            overrides=",".join(f"{k}={v}" for k, v in sorted({**trial.model_kwargs, **trial.overrides}.items())),
            decode_group=run_dir.rsplit("/", 1)[-1] if grouped else "",
            num_classes=counts_classes(cfg), params_600=params_600, mflops_600=mflops_600,
        )
        if status == "finished":
            storage.write_bytes_atomic(*storage.resolve(storage.join(tcfg.out, TRIAL_FILE)),
                                       strict_json.dumps(dataclasses.asdict(result), indent=1, sort_keys=True).encode())
        results.append(result)
    return results


def _cause(exc: BaseException) -> str:
    """One line saying why a run failed: the innermost ``SomeError: message`` line of Ray's wrapped traceback
    (its first line is only "Training failed due to worker errors:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (errors[-1] if errors else f"{type(exc).__name__}: {lines[0] if lines else ''}")[:300]


def _group_dir(cfg: SweepConfig, trials: Sequence[TrialSpec]) -> str:
    """``out/groups/group-<hash of the member names>``: the Ray Train run directory of a shared-decode group
    (the same members find their checkpoints again on a rerun)."""
    digest = hashlib.sha1("\n".join(t.name for t in trials).encode()).hexdigest()[:10]
    return storage.join(storage.canonical(cfg.out), "groups", f"group-{digest}")


def plan_groups(cfg: SweepConfig, trials: Sequence[TrialSpec]) -> list[list[TrialSpec]]:
    """How the trials run: one per Ray Train run, or with ``cfg.shared_decode`` grouped so that trials that read
    the same clips (equal :data:`training.config.DATA_FIELDS` settings) share one decode pass, at most
    ``cfg.max_group`` models per group. Order follows ``trials``."""
    if not cfg.shared_decode:
        return [[t] for t in trials]
    by_key: dict[tuple, list[TrialSpec]] = {}
    for t in trials:
        by_key.setdefault(_train_config(cfg, t).data_key(), []).append(t)
    size = max(1, cfg.max_group)
    return [same[i:i + size] for same in by_key.values() for i in range(0, len(same), size)]


def run_sweep(cfg: SweepConfig, *, log=print) -> list[TrialResult]:
    """Run (or resume) every trial; write ``results.parquet``, ``report.md`` and the PNG under ``cfg.out``."""
    import ray

    from shards.manifest import read_dataset_info
    from shards.raycluster import init_ray

    out = storage.canonical(cfg.out)  # a local folder or an object-store URI (s3://, gs://)
    fs, base = storage.resolve(out)
    storage.write_bytes_atomic(fs, storage.join(base, "sweep.json"),
                               strict_json.dumps(dataclasses.asdict(cfg), indent=1, default=str).encode())
    num_classes = len(read_dataset_info(cfg.shards)["classes"])
    # Check every trial before starting any: a typo in the grid should not surface hours into a sweep.
    counts, problems = {}, []
    for t in cfg.trials:
        try:
            _train_config(cfg, t)
            counts[t.name] = (*_counts(t, num_classes), *_counts(t, 600)[:2])  # + Table 8's 600-class figures
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{t.name}: {exc}")
    if problems:
        raise ValueError("invalid trial(s):\n  " + "\n  ".join(problems))
    started = init_ray(cfg.address, num_cpus=cfg.num_cpus)
    try:
        resources = ray.cluster_resources()
        unit = resources.get("GPU", 0) if cfg.use_gpu else resources.get("CPU", 1)
        slots = cfg.max_concurrent or max(1, int(unit // max(cfg.workers_per_trial, 1)))
        done: dict[str, TrialResult] = {}
        todo: list[TrialSpec] = []
        for t in cfg.trials:
            f = storage.join(base, "trials", t.name, TRIAL_FILE)
            if storage.exists(fs, f):
                done[t.name] = TrialResult(**json.loads(storage.read_bytes(fs, f)))
                log(f"[sweep] {t.name}: finished earlier, skipped")
            else:
                todo.append(t)
        decode_s = decode_cost(_train_config(cfg, todo[0])) if todo else math.nan
        if todo:
            log(f"[sweep] {len(todo)} trial(s) to run, {slots} at a time; loader decode cost "
                f"{1000 * decode_s:.2f} CPU-ms per clip")
        groups = plan_groups(cfg, todo)
        if cfg.shared_decode:
            log(f"[sweep] shared decode: {len(todo)} trial(s) in {len(groups)} Ray Train run(s) "
                f"({', '.join(str(len(g)) for g in groups)} models each)")
        with ThreadPoolExecutor(max_workers=slots) as pool:
            futures = [pool.submit(_run_trials, cfg, g, counts, decode_s) for g in groups]
            for fut in as_completed(futures):
                for r in fut.result():
                    done[r.trial] = r
                    log(f"[sweep] {r.trial}: {r.status}, video top-1 {r.video_top1:.3f}, {r.mflops:.0f} MFLOPs, "
                        f"{r.wall_s:.0f} s{f' (group {r.decode_group})' if r.decode_group else ''}")
    finally:
        if started:
            ray.shutdown()
    results = [done[t.name] for t in cfg.trials if t.name in done]
    write_results(out, results)
    md, png = build_report(out)
    log(f"[sweep] wrote {md} and {png}")
    return results


def trials_from_args(grid: str, models: Sequence[str] | None = None) -> tuple[list[TrialSpec], dict[str, Any]]:
    if grid == "table8":
        trials = table8_grid()
        if models:
            trials = [t for t in trials if t.name in set(models)]
        return trials, {}
    return load_grid(grid)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: e3d sweep ...")
