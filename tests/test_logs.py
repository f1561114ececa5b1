"""Readable logs (issue 15 item 3): the driver's filter of Ray's forwarded lines, the in-epoch progress line
protocol (fuzzed), the final summary, DDP gradients laid out like their parameters, and one real 2-worker run
whose whole console output is counted."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from pipeline.logs import filter_lines, lines_kept, train_summary
from tests.test_train import tiny_shards  # noqa: F401  (session fixture)
from training.progress import PROGRESS_TAG, Progress, StepProgress, format_progress, parse_progress, render_bar

REPO = Path(__file__).resolve().parents[1]

# What Ray 2.60 forwarded from a 4-step 2-worker run before this change (trimmed), as its dispatcher sees it.
RAY_BATCHES = [
    {"actor_name": "TrainController", "is_err": False, "pid": 1,
     "lines": ["Requesting resources: {'CPU': 1} * 2",
               "Attempting to start training worker group of size 2 with the following resources: [{'CPU': 1}] * 2",
               "Started training worker group of size 2: ",
               "- (ip=192.0.2.2, pid=8113) world_rank=0, local_rank=0, node_rank=0"]},
    {"actor_name": "PlacementGroupCleaner", "is_err": True, "pid": 2,
     "lines": ["Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
               "Continuing to monitor."] * 4},
    {"actor_name": "TrainController", "is_err": True, "pid": 1,
     "lines": ["[2026-11-30 23:08:17,745 E 8005 8036] core_worker.cc:2465: Actor with class name: "
               "'PreemptionWatcher' and ID: '3439353d9d58' has constructor arguments in the object store and "
               "max_restarts > 0."]},
    {"actor_name": "RayTrainWorker", "is_err": False, "pid": 3,
     "lines": ["Setting up process group for: env:// [rank=0, world_size=2]",
               f"{PROGRESS_TAG}1/2 1/2 1.25",
               "epoch 1/2 step 2: loss 1.2296 top1 0.375 lr 1.00e-02 53.3 clips/s data-wait 2%",
               "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/run/epoch0000)",
               "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'epoch': 0})"]},
    {"actor_name": "RayTrainWorker", "is_err": True, "pid": 4,
     "lines": ["Error in training function:", "Traceback (most recent call last):",
               '  File "/work/training/loop.py", line 405, in train_group',
               "    logits = m.model(m.normalizer(clips))", "             ^^^^^^^^^^^^^^^^^^^^^^",
               "ValueError: no split 'x'",
               "/venv/torch/autograd/graph.py:979: UserWarning: something worth knowing"]},
    {"actor_name": "TrainController", "is_err": False, "pid": 1,
     "lines": ["[FailurePolicy] RETRY", "  Source: worker group",
               "Failed to send resource request for train-95e0. If this only happens transiently ...",
               "Traceback (most recent call last):", "ray.exceptions.GetTimeoutError: Get timed out"]},
]


def test_driver_filter_keeps_our_lines_and_errors_and_drops_ray_internals():
    kept = lines_kept(RAY_BATCHES)
    assert kept == ["epoch 1/2 step 2: loss 1.2296 top1 0.375 lr 1.00e-02 53.3 clips/s data-wait 2%",
                    "ValueError: no split 'x'",
                    "/venv/torch/autograd/graph.py:979: UserWarning: something worth knowing", "[FailurePolicy] RETRY"]
    keep, plain, progress = filter_lines(RAY_BATCHES[3])
    assert plain == [kept[0]] and not keep  # the loop's line loses Ray's "(RayTrainWorker pid=...)" prefix
    assert progress == [Progress(1, 2, 1, 2, 1.25)]


def test_progress_lines_round_trip_and_the_parser_survives_garbage():
    p = Progress(3, 45, 12, 40, 1.2345678, "trial-a b")
    assert parse_progress(format_progress(p)) == Progress(3, 45, 12, 40, 1.23457, "trial-a b")
    assert render_bar(Progress(2, 45, 10, 40, 1.5)).startswith("epoch 2/45 [" + "#" * 8 + "." * 22 + "] 10/40")
    assert "loss" not in render_bar(Progress(1, 1, 0, 0, float("nan")))
    rng = random.Random(0)
    good = format_progress(p)
    alphabet = "0123456789/ .-+eEnaifx@\x00\n"
    for _ in range(3000):
        s = list(good)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(s))
            op = rng.random()
            if op < 0.4:
                s[i] = rng.choice(alphabet)
            elif op < 0.7:
                del s[i]
            else:
                s.insert(i, rng.choice(alphabet))
        text = "".join(s) if rng.random() < 0.8 else PROGRESS_TAG + "".join(rng.choices(alphabet, k=20))
        got = parse_progress(text)  # never raises
        if got is not None:
            assert 0 <= got.epoch <= got.epochs and got.batch >= 0 and got.batches >= 0
            render_bar(got)


def test_step_progress_tags_lines_for_the_driver_and_stays_silent_off_rank_0(monkeypatch):
    monkeypatch.setenv("E3D_PROGRESS", "tag")
    out = io.StringIO()
    sp = StepProgress(enabled=True, interval_s=3600, stream=out)
    sp.update(Progress(1, 2, 1, 4, 0.5))
    sp.update(Progress(1, 2, 2, 4, 0.4))  # within the interval: skipped
    sp.update(Progress(1, 2, 4, 4, 0.3), force=True)
    assert [parse_progress(line).batch for line in out.getvalue().splitlines()] == [1, 4]
    quiet = io.StringIO()
    StepProgress(enabled=False, stream=quiet).update(Progress(1, 2, 1, 4, 0.5), force=True)
    monkeypatch.delenv("E3D_PROGRESS")
    StepProgress(enabled=True, stream=quiet).update(Progress(1, 2, 1, 4, 0.5), force=True)  # not a terminal
    assert quiet.getvalue() == ""


def test_summary_names_the_checkpoint_behind_each_figure_and_never_prints_nan():
    m = {"epochs": 2, "step": 4, "eval_video_top1": 0.5, "eval_video_top5": 1.0, "eval_clip_top1": 0.4,
         "eval_videos": 15, "eval_split": "validation", "best_val_top1": 0.6, "checkpoint": "run/last/checkpoint.pt",
         "best_checkpoint": "run/best/checkpoint.pt", "predictions": "run/p.parquet"}
    text = train_summary("net", "jester", m, "run/metrics.json")
    assert "video top1 0.500 top5 1.000, clip top1 0.400 -- weights of the last checkpoint run/last/checkpoint.pt" \
        in text
    assert "best validation video top1 0.600" in text and "best checkpoint run/best/checkpoint.pt" in text
    bare = train_summary("net", "jester", {"epochs": 1, "step": 3, "best_val_top1": float("nan")}, "m.json")
    assert "not evaluated" in bare and "nan" not in bare
    from training.result import RunResult  # what run_training returns

    run = RunResult.from_metrics({k: v for k, v in m.items() if "checkpoint" not in k},
                                 checkpoint="run/last/checkpoint.pt", best_checkpoint="run/best/checkpoint.pt")
    assert train_summary("net", "jester", run, "run/metrics.json") == text


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    from training.ddp import wrap_ddp
    from training.models import get_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = get_model("shufflenetv2_0.25x", num_classes=3).to(memory_format=torch.channels_last_3d)
    ddp = wrap_ddp(model, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            x = torch.randn(2, 3, 8, 32, 32).contiguous(memory_format=torch.channels_last_3d)
            loss = torch.nn.functional.cross_entropy(ddp(x), torch.tensor([0, 1]))
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
    wrong = [n for n, p in model.named_parameters() if p.grad.stride() != p.stride()]
    stride_warnings = [str(w.message) for w in caught if "stride" in str(w.message)]
    Path(out, f"rank{rank}.txt").write_text(f"{len(wrong)} {len(stride_warnings)} {sum(1 for _ in model.parameters())}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_are_laid_out_like_channels_last_parameters(tmp_path):
    from tests.helpers import free_port

    torch.multiprocessing.spawn(_ddp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        wrong, warned, total = map(int, (tmp_path / f"rank{rank}.txt").read_text().split())
        assert total > 100 and wrong == 0 and warned == 0


@pytest.mark.slow
@pytest.mark.ray
def test_a_short_training_run_prints_one_line_per_epoch_and_one_summary(tiny_shards, tmp_path):  # noqa: F811
    """A 4-step 2-worker run as a user starts it (its own embedded Ray): before this change 46 lines."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline", "train", "--dataset", "jester", "--shards", tiny_shards, "--out",
           str(out), "--model", "shufflenetv2_0.25x", "--workers", "2", "--epochs", "2", "--max-steps-per-epoch", "2",
           "--batch-size", "4", "--clip-len", "8", "--size", "32", "--loader-workers", "0", "--lr", "0.01",
           "--num-cpus", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    print(f"\n{len(lines)} lines:\n" + "\n".join(lines))
    assert proc.returncode == 0, proc.stderr
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(" step")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]  # once each, no prefix
    for noise in ("PlacementGroupCleaner", "TrainingReport(", "Grad strides", "Checkpoint successfully created",
                  "Started a local Ray instance", PROGRESS_TAG):
        assert not any(noise in line for line in lines), noise
    assert sum("2 epochs, 4 steps" in line for line in lines) == 1
    from tests.test_docs import CHECKPOINT_PATH

    last = next(line for line in lines if "weights of the last checkpoint" in line).rsplit(" ", 1)[1]
    assert CHECKPOINT_PATH.search(last), last  # the layout the README documents
    assert len(lines) <= 8
