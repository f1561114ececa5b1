"""The main job on its embedded default: synthetic datasets → Ray preprocessing → verify → summary →
Ray Train (2 CPU workers, a small model at reduced size) → evaluation → result table.

``make demo`` runs this on a fresh machine. It uses one embedded local Ray for everything.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipeline.logs import quiet_ray
from preprocess.config import PreprocessConfig
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate
from shards.manifest import verify
from shards.raycluster import init_ray
from training.errors import InputError

#: A file in the work directory saying the demo created it: ``--fresh`` deletes only such a directory.
DEMO_MARKER = ".e3d-demo"

DEMO_SYNTH = {
    "kinetics600": SynthConfig(num_classes=4, videos_per_class=6, seconds=3.0, seed=0),
    "jester": SynthConfig(num_classes=4, videos_per_class=12, seed=0),
    "ucf101": SynthConfig(num_classes=4, videos_per_class=8, seconds=3.0, seed=0),
}
# The synthetic sets deliberately hold a few broken files among few videos; real runs keep the 5 % default.
DEMO_MAX_FAILED = 0.5

# Training stage: a larger synthetic Jester (its classes differ only by motion direction) so that a small model
# has enough distinct videos to learn motion rather than memorise appearances; CPU-sized model and clips.
# The data of tests/test_learns.py (which trains on them with a constant lr 0.08, the demo's earlier recipe).
TRAIN_SYNTH = SynthConfig(num_classes=4, videos_per_class=60, seed=3, bad_inputs=False)
TRAIN_SHORT_SIDE = 48
TRAIN_WORKERS = 2
# Full-short-side training crops (``crop_scales``): at 48 px a half-side crop of the wide Jester frames often
# misses the moving patch; the paper's five scales stay the default elsewhere.
TRAIN_BASE = {"model": "shufflenetv2_0.25x", "clip_len": 16, "size": 48, "batch_size": 16, "crop_scales": (1.0,),
              "loader_workers": 0, "log_every": 5}
# The stable recipe (bench/README.md, "Learning (multi-seed)"): constant lr 0.08 with precise BatchNorm over 8
# batches before each validation and an EMA of the weights (decay 0.99) for validation and evaluation, 80 epochs,
# validating every 3rd (validation, precise BN and its checkpoint cost ~0.9 s on 2 CPU workers, against ~1.6 s
# for an epoch of training; when it validates changes nothing about the weights). On these data every recipe
# sits near chance for the first ~15-25 epochs (when it leaves varies by seed) and then climbs for ~35 more;
# 45 epochs left seeds mid-climb (0.825-0.921), 80 finish it.
STABLE_RECIPE = {"lr": 0.08, "schedule": "constant", "precise_bn": 8, "ema": 0.99, "epochs": 80, "val_every": 3}
TRAIN_OVERRIDES = {**TRAIN_BASE, **STABLE_RECIPE}


def prepare_workdir(work: Path, *, fresh: bool) -> Path:
    """Create ``work``; with ``fresh`` delete it first, but only when this demo created it (its
    :data:`DEMO_MARKER` is there) or it is empty: a mistyped ``--workdir`` never costs someone's files."""
    if fresh and work.exists():
        if any(work.iterdir()) and not (work / DEMO_MARKER).exists():
            raise InputError(f"--fresh would delete {work}, which e3d demo did not create (no {DEMO_MARKER} file "
                             "in it); delete it yourself or pick another --workdir")
        shutil.rmtree(work)
    if not work.exists() or not any(work.iterdir()):
        # only a folder this demo creates (or finds empty) is marked as deletable by a later --fresh
        work.mkdir(parents=True, exist_ok=True)
        (work / DEMO_MARKER).write_text("created by e3d demo; `e3d demo --fresh` may delete this folder\n")
    return work


def run_demo(workdir: str, *, fresh: bool = False, train: bool = True, seed: int = 0) -> int:
    work = prepare_workdir(Path(workdir), fresh=fresh)  # before Ray: a refused --fresh costs nothing
    quiet_ray()
    started = init_ray()
    rows = []
    exit_code = 0
    training = None
    try:
        for dataset, scfg in DEMO_SYNTH.items():
            src, out = work / "data" / dataset, work / "shards" / dataset
            t0 = time.monotonic()
            if not (src / ".synth-done").exists():
                generate(dataset, src, scfg, overwrite=True)
                (src / ".synth-done").write_text("ok\n")
            t_synth = time.monotonic() - t0
            cfg = PreprocessConfig(dataset=dataset, src=str(src), out=str(out), max_failed=DEMO_MAX_FAILED,
                                   shard_size=8)
            summary = preprocess(cfg)
            print(summary.format(), flush=True)
            check = verify(str(out))
            for p in check.problems:
                print(f"  verify MISMATCH {p}")
            exit_code = max(exit_code, summary.exit_code, 0 if check.ok else 1)
            rows.append((dataset, summary, check, t_synth))
        if train:
            training = _train_and_eval(work, seed)
    finally:
        if started:
            import ray

            ray.shutdown()
    print("\n== demo summary ==")
    print(f"{'dataset':<12}{'split':<9}{'ok':>5}{'failed':>7}{'missing':>8}{'shards':>7}{'MB':>8}{'frames':>8}"
          f"{'frames/s':>10}{'verify':>8}")
    for dataset, s, check, _ in rows:
        fps = s.frames_decoded / s.wall_s if s.wall_s > 0 else 0.0
        for i, sp in enumerate(s.splits):
            print(f"{dataset if i == 0 else '':<12}{sp.split:<9}{sp.ok:>5}{sp.failed:>7}{sp.missing:>8}"
                  f"{sp.shards:>7}{sp.bytes / 1e6:>8.2f}{sp.frames:>8}"
                  f"{(f'{fps:.0f}' if i == 0 else ''):>10}{(('OK' if check.ok else 'FAIL') if i == 0 else ''):>8}")
    print(f"shards under {work / 'shards'}; rerunning resumes (finished shards are skipped)")
    if training is not None:
        _print_training(*training)
    return exit_code


def _train_and_eval(work: Path, seed: int = 0):
    """Synthetic Jester → Ray preprocessing → Ray Train on 2 workers → evaluation of the best checkpoint."""
    from training.config import TrainConfig
    from training.ray_train import run_evaluation, run_training

    src, shards = work / "data" / "jester-train", work / "shards" / "jester-train"
    t0 = time.monotonic()
    if not (src / ".synth-done").exists():
        generate("jester", src, TRAIN_SYNTH, overwrite=True)
        (src / ".synth-done").write_text("ok\n")
    summary = preprocess(PreprocessConfig(dataset="jester", src=str(src), out=str(shards),
                                          splits=("train", "validation"), short_side=TRAIN_SHORT_SIDE,
                                          shard_size=16, progress=False))
    t_data = time.monotonic() - t0
    name = "jester-shufflenetv2" + (f"-seed{seed}" if seed else "")
    cfg = TrainConfig.for_dataset("jester", str(shards), str(work / "runs" / name), **{**TRAIN_OVERRIDES, "seed": seed})
    print(f"\n== training {cfg.model} on {TRAIN_WORKERS} Ray Train workers "
          f"({cfg.clip_len}x{cfg.size}x{cfg.size} clips, global batch {cfg.batch_size}, {cfg.epochs} epochs, seed "
          f"{cfg.seed}; stable recipe: {cfg.schedule} lr {cfg.lr}, precise BN over {cfg.precise_bn} batches, "
          f"EMA {cfg.ema}) ==",
          flush=True)
    t0 = time.monotonic()
    run = run_training(cfg, workers=TRAIN_WORKERS, resume_if_exists=True)  # a rerun continues (or reports)
    t_train = time.monotonic() - t0
    t0 = time.monotonic()
    ev = run_evaluation(run.best_checkpoint, str(shards), out=str(work / "eval"), workers=1)
    t_eval = time.monotonic() - t0
    return cfg, summary, run, ev, (t_data, t_train, t_eval)


def _print_training(cfg, summary, m, ev, times) -> None:
    t_data, t_train, t_eval = times
    n_train = next(sp.ok for sp in summary.splits if sp.split == "train")
    chance = 1.0 / TRAIN_SYNTH.num_classes
    print("\n== training and evaluation summary ==")
    print(f"{'model':<20}{'train videos':>13}{'workers':>8}{'epochs':>7}{'steps':>7}{'train s':>9}"
          f"{'last clips/s':>13}{'data-wait':>10}")
    print(f"{cfg.model:<20}{n_train:>13}{m.world_size:>8}{m.epochs:>7}{m.step:>7}{t_train:>9.0f}"
          f"{m.metrics.get('clips_per_s', float('nan')):>13.1f}{m.metrics.get('data_wait_frac', float('nan')):>10.0%}")
    print(f"{'checkpoint':<12}{'split':<12}{'videos':>7}{'clips':>7}{'video top1':>11}{'video top5':>11}"
          f"{'clip top1':>10}{'chance':>8}")
    rows = (("last", m.eval_videos, m.metrics["eval_clips"], m.eval_video_top1, m.eval_video_top5, m.eval_clip_top1),
            ("best", ev.videos, ev.clips, ev.video_top1, ev.video_top5, ev.clip_top1))
    for name, videos, clips, top1, top5, clip_top1 in rows:
        print(f"{name:<12}{ev.split:<12}{videos:>7}{clips:>7}{top1:>11.3f}{top5:>11.3f}{clip_top1:>10.3f}{chance:>8.2f}")
    print(f"last: {m.metrics.get('eval_weights')}; best: epoch {m.metrics.get('best_epoch')} of {m.epochs} by "
          f"validation video top-1 {m.metrics.get('best_val_top1', float('nan')):.3f} ({m.best_checkpoint})")
    print(f"data {t_data:.0f} s, training {t_train:.0f} s, evaluation {t_eval:.0f} s; run directory {cfg.out} "
          f"(tensorboard --logdir {cfg.out}/tensorboard); predictions {ev.predictions}")
