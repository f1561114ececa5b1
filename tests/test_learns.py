"""End to end on the synthetic motion data: a small model trained on CPU learns the motion *direction*.

Synthetic Jester (4 classes: Swiping Left/Right/Up/Down, which differ only by the direction a randomly
coloured, textured patch moves over a noisy textured background) → the real preprocessing (48 px short side,
stored at stride 2) → ``train_loop`` called directly (no Ray) → held-out validation videos. This recipe (constant
lr 0.08, 45 epochs, 1 worker) gave held-out video top-1 0.913, 0.929, 0.917 for seeds 0, 1, 2 (Jester's protocol,
chance 0.25; ``bench/bench_learning.py --in-process --recipes constant --workers 1 --epochs 45``, 2026-12-01); the
test trains seed 0 (~2 minutes on 2 cores) and asserts 0.75, 0.16 below the smallest of the three. Played
backwards the same validation clips are classified as the opposite direction, so the model uses frame order, not
appearance.
"""

from __future__ import annotations

import pytest
import torch

from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate
from training.checkpoints import load_checkpoint
from training.config import TrainConfig
from training.data import ClipLoader, ClipNormalizer, ClipStream, LoaderConfig, normalization_for, shard_specs
from training.evaluate import evaluate, expected_clips
from training.loop import train_loop

pytestmark = pytest.mark.slow

CLASSES = 4  # Swiping Left, Swiping Right, Swiping Up, Swiping Down (preprocess.synth.CLASSES order)
REVERSED = {0: 1, 1: 0, 2: 3, 3: 2}  # the class a clip played backwards shows
VIDEOS_PER_CLASS = 60  # per split: 240 training and 240 held-out validation videos
SHORT_SIDE = 48
# Budget: EPOCHS × 240 / 16 = 15 steps per epoch; a step of 16 clips of 16 × 48 × 48 takes ~0.1 s on 2 cores.
RUN = {"model": "shufflenetv2_0.25x", "clip_len": 16, "size": SHORT_SIDE, "batch_size": 16, "epochs": 45,
       "lr": 0.08, "schedule": "constant", "crop_scales": (1.0,), "loader_workers": 0, "log_every": 1000,
       "seed": 0}


class _TimeReversed(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        return self.model(x.flip(2))


def test_small_cpu_model_learns_motion_direction_on_held_out_videos(tmp_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    generate("jester", tmp_path / "src", SynthConfig(num_classes=CLASSES, videos_per_class=VIDEOS_PER_CLASS, seed=3,
                                                     bad_inputs=False))
    shards = tmp_path / "shards"
    preprocess(PreprocessConfig(dataset="jester", src=str(tmp_path / "src"), out=str(shards),
                                splits=("train", "validation"), short_side=SHORT_SIDE, shard_size=16, progress=False),
               executor=run_tasks_local)
    cfg = TrainConfig.for_dataset("jester", str(shards), str(tmp_path / "run"), **RUN)
    m = train_loop(cfg)
    assert m["status"] == "finished"
    chance = 1 / CLASSES
    # Held-out videos (Jester's protocol: the middle window of every validation video, centre crop).
    assert m["eval_videos"] == CLASSES * VIDEOS_PER_CLASS
    assert m["eval_video_top1"] >= 0.75, m

    # The same model on the same held-out clips played backwards: it sees the opposite swipe, so it scores far
    # below chance on the true labels and well above chance on the time-reversed ones.
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last" / "checkpoint.pt")
    specs = shard_specs(str(shards), "validation", videos=True)
    lcfg = LoaderConfig.for_dataset("jester", "val", clip_len=cfg.clip_len, size=cfg.size, batch_size=32)
    r = evaluate(_TimeReversed(model), ClipLoader(ClipStream(specs, lcfg)),
                 ClipNormalizer(normalization_for("jester")), torch.device("cpu"), num_classes=CLASSES,
                 expected=expected_clips(specs, lcfg), with_predictions=True)
    preds = r.predictions
    assert len(preds) == CLASSES * VIDEOS_PER_CLASS
    as_labelled = sum(p["pred"] == p["label"] for p in preds) / len(preds)
    as_reversed = sum(p["pred"] == REVERSED[p["label"]] for p in preds) / len(preds)
    print(f"held-out video top-1 {m['eval_video_top1']:.3f} (chance {chance:.2f}) after {m['step']} steps; "
          f"time-reversed clips: {as_labelled:.3f} as labelled, {as_reversed:.3f} as the opposite direction")
    assert as_labelled <= chance / 2, (as_labelled, as_reversed)
    assert as_reversed >= 0.5, (as_labelled, as_reversed)
