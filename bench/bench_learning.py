"""Multi-seed learning benchmark: the paper recipe against the stable recipe on the demo-scale motion data.

The data are ``make demo``'s training set (synthetic Jester, 4 motion directions, 60 videos per class per
split, 48 px short side); the model and clips are the demo's (ShuffleNetV2 0.25x, 16x48x48, global batch
16, full-short-side crops: ``pipeline.demo.TRAIN_BASE``). Recipes (every other setting is the paper's,
:meth:`TrainConfig.for_dataset`), all for the same number of epochs (``--epochs``, default the demo's 80):

* ``paper``: lr 0.1, ReduceLROnPlateau on the validation loss (the paper's recipe);
* ``constant``: constant lr 0.08 and nothing else (``tests/test_learns.py``'s recipe);
* ``stable``: precise BN over 8 batches before each validation and the final evaluation, 3 warm-up epochs
  from lr/10 then a step-wise cosine to 0, peak lr 0.16;
* ``stable-ema``: ``stable`` plus an EMA of the weights (decay 0.99) used for validation and evaluation;
* ``constant-pbn-ema``: the demo's recipe (``pipeline.demo.STABLE_RECIPE``): constant lr 0.08 with precise BN
  over 8 batches and the EMA (0.99), validating every 3rd epoch;
* ``constant-pbn-ema-corner``, ``constant-pbn-ema-sync``: the demo's recipe with training crops at the centre
  or a corner (the released code's default placement) / with BatchNorm synchronised over the workers.

Each recipe runs for every seed and every worker count as one Ray Train run (DDP over gloo on CPU) and the
script prints, per recipe and worker count, held-out video top-1 (the final evaluation: Jester's protocol, the
middle window of every validation video; before 2026-12-01 it averaged every window) mean / min / max over the
seeds and the first epoch at which each run's validation video top-1 reached 0.9::

    python bench/bench_learning.py --recipes paper,constant-pbn-ema --workers 2 --seeds 0,1,2
    python bench/bench_learning.py --in-process --recipes constant-pbn-ema --workers 1   # 1 worker, no Ray

The per-run results are appended to ``--out``/results.jsonl, and runs already there are skipped, so an
interrupted benchmark continues where it stopped. Which epochs validate changes nothing about the weights
(validation, precise BN and the EMA only read them), and a run's result does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.demo import STABLE_RECIPE, TRAIN_BASE, TRAIN_SHORT_SIDE, TRAIN_SYNTH
from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from preprocess.synth import generate

COSINE = {"lr": 0.16, "schedule": "cosine", "warmup_epochs": 3, "precise_bn": 8}
DEMO = {k: v for k, v in STABLE_RECIPE.items() if k != "epochs"}  # the budget is --epochs
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"lr": 0.1, "schedule": "plateau"},
    # tests/test_learns.py's recipe: constant lr 0.08, nothing else
    "constant": {"lr": 0.08, "schedule": "constant"},
    "stable": COSINE,
    "stable-ema": {**COSINE, "ema": 0.99},
    # the demo's recipe (pipeline.demo.STABLE_RECIPE): constant lr 0.08, precise BN and the EMA
    "constant-pbn-ema": DEMO,
    # the same with training crops at the centre or a corner (the released code's default placement)
    "constant-pbn-ema-corner": {**DEMO, "crop_position": "corner"},
    # the same with BatchNorm statistics synchronised over the workers (training.sync_bn)
    "constant-pbn-ema-sync": {**DEMO, "sync_bn": True},
}


def make_data(root: Path) -> Path:
    src, shards = root / "src", root / "shards"
    if not (src / ".synth-done").exists():
        generate("jester", src, TRAIN_SYNTH, overwrite=True)
        (src / ".synth-done").write_text("ok\n")
    preprocess(PreprocessConfig(dataset="jester", src=str(src), out=str(shards), splits=("train", "validation"),
                                short_side=TRAIN_SHORT_SIDE, shard_size=16, progress=False),
               executor=run_tasks_local)  # in this process: the runs below start their own Ray
    return shards


def first_epoch_at(history: list[dict[str, float]], level: float) -> int | None:
    """1-based epoch at which validation video top-1 first reached ``level`` (None: never)."""
    return next((int(h["epoch"]) + 1 for h in history if h["video_top1"] >= level), None)


def run_one(shards: Path, out: Path, recipe: str, seed: int, workers: int, epochs: int, in_process: bool = False
            ) -> dict[str, Any]:
    """One run; ``in_process`` (1 worker only) calls the loop directly instead of through Ray Train."""
    from training.config import TrainConfig
    from training.loop import train_loop
    from training.ray_train import run_training

    cfg = TrainConfig.for_dataset("jester", str(shards), str(out / f"{recipe}-w{workers}-s{seed}"),
                                  **{**TRAIN_BASE, **RECIPES[recipe], "epochs": epochs, "seed": seed,
                                     "log_every": 1000})
    t0 = time.monotonic()
    if in_process:
        if workers != 1:
            raise ValueError("--in-process runs one worker")
        m = train_loop(cfg)
    else:
        m = run_training(cfg, workers=workers, resume_if_exists=True).metrics
    return {"recipe": recipe, "workers": workers, "seed": seed, "epochs": epochs, "ray": not in_process,
            "eval_video_top1": m["eval_video_top1"], "first_epoch_0.9": first_epoch_at(m["val_history"], 0.9),
            "best_val_video_top1": m["best_val_top1"], "best_epoch": m["best_epoch"],
            "wall_s": round(time.monotonic() - t0, 1)}


def summarise(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'recipe':<12}{'workers':>8}{'seeds':>6}{'mean':>7}{'min':>7}{'max':>7}  first epoch >= 0.9 per seed"]
    keys = sorted({(r["recipe"], r["workers"]) for r in rows}, key=lambda k: (list(RECIPES).index(k[0]), k[1]))
    for recipe, workers in keys:
        rs = sorted((r for r in rows if r["recipe"] == recipe and r["workers"] == workers), key=lambda r: r["seed"])
        acc = [r["eval_video_top1"] for r in rs]
        firsts = ", ".join(f"s{r['seed']}: {r['first_epoch_0.9'] or '-'}" for r in rs)
        lines.append(f"{recipe:<12}{workers:>8}{len(rs):>6}{statistics.mean(acc):>7.3f}{min(acc):>7.3f}"
                     f"{max(acc):>7.3f}  {firsts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/e3d-bench-learning")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--data", default=None, help="data folder (default: OUT/data); several benchmarks may share one")
    p.add_argument("--in-process", action="store_true",
                   help="1 worker without Ray (train_loop called directly): the same loop, less start-up")
    p.add_argument("--epochs", type=int, default=STABLE_RECIPE["epochs"], help="the same budget for every recipe")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = make_data(Path(args.data) if args.data else out / "data")
    results = out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    for recipe in args.recipes.split(","):
        if recipe not in RECIPES:
            raise SystemExit(f"unknown recipe {recipe!r}; choose from {list(RECIPES)}")
        for workers in (int(w) for w in args.workers.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                done = [r for r in rows if (r["recipe"], r["workers"], r["seed"], r["epochs"])
                        == (recipe, workers, seed, args.epochs)]
                if done:
                    continue
                row = run_one(shards, out / "runs", recipe, seed, workers, args.epochs, args.in_process)
                print(json.dumps(row), flush=True)
                rows.append(row)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(summarise([r for r in rows if r["epochs"] == args.epochs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
