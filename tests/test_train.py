"""Training, evaluation and fine-tuning (issue 5): config presets, the loop called directly (world size 1),
exact-once distributed evaluation (2 gloo processes), Ray Train with 2 workers (failure restart, resume),
TensorBoard/profiler output, NaN handling and frozen fine-tuning.

Data: tiny synthetic Jester shards (3 classes × 5 videos per split, 32 px short side) made once per session
with the real preprocessing code; models run at 8 frames × 32 px so a step takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import NanAt, RaiseAt, free_port, jester_shards
from training.checkpoints import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data import ClipLoader, ClipNormalizer, ClipStream, LoaderConfig, normalization_for, shard_specs
from training.evaluate import EvalCountError, evaluate, expected_clips
from training.loop import LocalSession, head_keys, make_scheduler, train_group, train_loop
from training.models import get_model

TINY = {"model": "shufflenetv2_0.25x", "clip_len": 8, "size": 32, "batch_size": 4, "loader_workers": 0,
        "lr": 0.01, "log_every": 1}


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> str:
    return jester_shards(tmp_path_factory.mktemp("train-data"), num_classes=3, videos_per_class=5, seed=1,
                         shard_size=4)


def tiny_cfg(shards: str, out: Path, **kw) -> TrainConfig:
    return TrainConfig.for_dataset("jester", shards, str(out), **{**TINY, **kw})


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[1]["state_dict"]


# -- config and schedule ------------------------------------------------------------------------------------


def test_paper_defaults_and_finetune_preset():
    cfg = TrainConfig.for_dataset("kinetics600", "/s", "/o")
    assert (cfg.lr, cfg.momentum, cfg.dampening, cfg.weight_decay) == (0.1, 0.9, 0.9, 1e-3)
    assert (cfg.batch_size, cfg.dropout, cfg.schedule, cfg.lr_gamma, cfg.plateau_max_reductions) == (
        128, 0.2, "plateau", 0.1, 3)
    assert cfg.per_worker_batch(4) == 32
    with pytest.raises(ValueError, match="split evenly"):
        cfg.per_worker_batch(3)
    ft = TrainConfig.finetune_preset("ucf101", "/s", "/o", pretrained="k600.pth", epochs=5)
    assert (ft.finetune, ft.dropout, ft.lr, ft.schedule, ft.milestones, ft.epochs) == (
        "last-layer", 0.9, 0.01, "multistep", (30, 45), 5)
    assert ft.splits == ("train1", "test1")
    assert TrainConfig.from_dict(ft.to_dict()) == ft
    with pytest.raises(ValueError, match="needs a pretrained"):
        TrainConfig.for_dataset("ucf101", "/s", "/o", finetune="last-layer")
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({**cfg.to_dict(), "lr_steps": [1]})


def test_plateau_schedule_steps_and_stops_after_three_reductions():
    cfg = TrainConfig.for_dataset("jester", "/s", "/o", plateau_patience=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(cfg, opt)
    lrs = []
    for _ in range(6):  # the validation loss never improves
        sched.step(1.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[1:4] == pytest.approx([1e-2, 1e-3, 1e-4])
    assert lrs[4:] == pytest.approx([1e-4, 1e-4])  # never a fourth reduction
    ft = TrainConfig.finetune_preset("ucf101", "/s", "/o", pretrained="x")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ft.lr)
    sched = make_scheduler(ft, opt)
    seen = {}
    for epoch in range(60):
        seen[epoch] = opt.param_groups[0]["lr"]
        sched.step()
    assert seen[29] == pytest.approx(0.01) and seen[30] == pytest.approx(1e-3) and seen[45] == pytest.approx(1e-4)


# -- the loop, called directly --------------------------------------------------------------------------------


@pytest.mark.slow
def test_direct_run_writes_checkpoints_tensorboard_profile_and_predictions(tiny_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = train_loop(tiny_cfg(tiny_shards, out, epochs=2, profile_steps=2))
    assert result["status"] == "finished" and result["resumed_at_step"] is None
    assert result["eval_videos"] == 15 and result["eval_incomplete_videos"] == 0
    assert (out / "checkpoints" / "last" / "checkpoint.pt").exists()
    assert (out / "checkpoints" / "best" / "checkpoint.pt").exists()
    _, ckpt = load_checkpoint(out / "checkpoints" / "last" / "checkpoint.pt")
    extra = ckpt["extra"]
    assert extra["loader"]["epoch"] == 2 and extra["loader"]["batches_done"] == 0
    assert extra["version"] == 2 and len(extra["members"]) == 1  # format version 2: a list of members
    assert extra["members"][0]["scheduler"] is not None and extra["members"][0]["optimizer"]["state"]
    assert TrainConfig.from_dict(extra["train_config"]).epochs == 2
    assert ckpt["input_convention"] is not None and extra["classes"]

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/top1", "train/top5", "train/lr", "train/clips_per_s", "train/data_wait_frac",
                "val/loss", "val/top1", "val/top5", "eval/video_top1"):
        assert tag in tags, tag
    assert len(acc.Scalars("train/loss")) == result["step"]  # log_every=1
    assert 0 <= acc.Scalars("train/data_wait_frac")[-1].value <= 1
    traces = list((out / "profile").glob("*.pt.trace.json"))
    assert traces and json.loads(traces[0].read_text())["traceEvents"]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["eval_video_top1"] == result["eval_video_top1"]
    preds = pq.read_table(result["predictions"]).to_pylist()
    assert len(preds) == 15 and min(p["clips"] for p in preds) >= 1
    assert sum(p["pred"] == p["label"] for p in preds) / 15 == pytest.approx(result["eval_video_top1"])
    # Jester's protocol (the paper's): the middle window of each video, the clip the last validation scored
    assert result["eval_windows"] == "center" and all(p["clips"] == 1 for p in preds)
    assert result["eval_video_top1"] == result["val_video_top1"]


@pytest.mark.slow
def test_shared_decode_group_trains_each_model_exactly_as_alone(tiny_shards, tmp_path):
    # No dropout: then nothing random depends on the other models of the group, and the group's first
    # member must end bit-identical to the same config trained alone from its own decode pass.
    a = tiny_cfg(tiny_shards, tmp_path / "alone", epochs=2, dropout=0.0)
    alone = train_loop(a)
    members = [a.replace(out=str(tmp_path / "g" / "a")),
               tiny_cfg(tiny_shards, tmp_path / "g" / "b", model="mobilenetv2_0.2x", lr=0.02, epochs=2, dropout=0.0)]
    first = train_group([m.replace(epochs=1) for m in members], LocalSession(tmp_path / "g" / "ckpt"))
    assert [r["status"] for r in first] == ["finished"] * 2 and first[1]["model"] == "mobilenetv2_0.2x"
    group = train_group(members, LocalSession(tmp_path / "g" / "ckpt"))  # resumes both from the epoch-1 checkpoint
    assert [r["resumed_at_step"] for r in group] == [3, 3] and [r["step"] for r in group] == [6, 6]

    own = _weights(tmp_path / "g" / "a" / "checkpoint.pt")
    reference = _weights(tmp_path / "alone" / "checkpoints" / "last" / "checkpoint.pt")
    assert own.keys() == reference.keys() and all(torch.equal(own[k], reference[k]) for k in own)
    assert group[0]["eval_video_top1"] == alone["eval_video_top1"]
    for name, result in zip("ab", group, strict=True):
        out = tmp_path / "g" / name
        assert json.loads((out / "metrics.json").read_text())["status"] == "finished"
        assert len(pq.read_table(out / "predictions_validation.parquet")) == 15
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        model, ckpt = load_checkpoint(out / "checkpoint.pt")
        assert model.config.name == result["model"] and ckpt["extra"]["step"] == 6

    with pytest.raises(ValueError, match="clip_len"):  # one decode pass needs the same clips for every model
        train_group([members[0], members[1].replace(clip_len=4)])
    # epochs=3: a finished group is reported, not resumed, so ask for more to reach the member-order check
    with pytest.raises(ValueError, match="same members in the same order"):
        train_group([m.replace(epochs=3) for m in members[::-1]], LocalSession(tmp_path / "g" / "ckpt"))


def _as_version1(src: Path, dst: Path) -> None:
    """Rewrite a loop checkpoint in the layout of format version 1 (before issue 10), as that code wrote it:
    the first member is the checkpoint proper (weights, optimizer, ``extra`` best and scheduler), the others
    are in ``extra["members"]``, and the training config still has the retired ``fault`` field."""
    model, ckpt = load_checkpoint(src)
    extra = dict(ckpt["extra"])
    first, *others = extra.pop("members")
    del extra["version"]
    extra.update(best=first["best"], scheduler=first["scheduler"],
                 train_config={**extra["train_config"], "fault": None})
    if others:
        extra["members"] = [{k: m[k] for k in ("model", "out", "state_dict", "optimizer", "best", "scheduler")}
                            for m in others]
    dst.parent.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    optimizer.load_state_dict(first["optimizer"])
    save_checkpoint(dst, model, epoch=ckpt["epoch"], optimizer=optimizer, metrics=ckpt["metrics"], extra=extra)


@pytest.mark.slow
def test_version1_group_checkpoint_resumes_exactly_like_version2(tiny_shards, tmp_path):
    members = [tiny_cfg(tiny_shards, tmp_path / "a", epochs=2, final_eval=False),
               tiny_cfg(tiny_shards, tmp_path / "b", model="mobilenetv2_0.2x", lr=0.02, epochs=2, final_eval=False)]
    train_group([m.replace(epochs=1) for m in members], LocalSession(tmp_path / "v2"))
    _as_version1(tmp_path / "v2" / "last" / "checkpoint.pt", tmp_path / "v1" / "last" / "checkpoint.pt")
    old = load_checkpoint(tmp_path / "v1" / "last" / "checkpoint.pt")[1]
    assert "version" not in old["extra"] and len(old["extra"]["members"]) == 1 and old["optimizer"]["state"]

    moved = [m.replace(out=str(tmp_path / "v1-out" / n)) for m, n in zip(members, "ab", strict=True)]
    from_v1 = train_group(moved, LocalSession(tmp_path / "v1"))
    from_v2 = train_group(members, LocalSession(tmp_path / "v2"))
    assert [r["resumed_at_step"] for r in from_v1] == [r["resumed_at_step"] for r in from_v2] == [3, 3]
    for n in "ab":  # every member continues bit-identically from either format
        one, two = _weights(tmp_path / "v1-out" / n / "checkpoint.pt"), _weights(tmp_path / n / "checkpoint.pt")
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), n
    assert load_checkpoint(tmp_path / "v1" / "last" / "checkpoint.pt")[1]["extra"]["version"] == 2  # saved anew


def test_one_translation_from_train_to_loader_config():
    cfg = TrainConfig.for_dataset("jester", "/s", "/o", clip_len=8, size=32, crop_scales=(1.0, 0.5), loader_workers=3,
                                  seed=7)
    train = cfg.loader_config("train", batch_size=2)
    assert (train.mode, train.clip_len, train.size, train.scales, train.num_workers, train.seed, train.batch_size) == (
        "train", 8, 32, (1.0, 0.5), 3, 7, 2)
    assert train == LoaderConfig.for_dataset("jester", "train", clip_len=8, size=32, scales=(1.0, 0.5), num_workers=3,
                                             seed=7, batch_size=2)
    assert cfg.loader_config("eval").batch_size == cfg.batch_size and not cfg.loader_config("val").flip
    assert TrainConfig.for_dataset("jester", "/s", "/o").loader_config("train").scales == LoaderConfig("jester").scales
    # the crop placement reaches the loader (the released code's corner crops are one flag away)
    assert cfg.loader_config("train").crop_position == "random"
    assert cfg.replace(crop_position="corner").loader_config("train").crop_position == "corner"
    with pytest.raises(ValueError, match="crop_position"):
        cfg.replace(crop_position="centre")


def test_run_result_is_a_typed_record_of_the_final_metrics():
    from training.result import RunResult

    done = RunResult.from_metrics({"status": "finished", "epochs": 2, "step": 6, "world_size": 2, "model": "m",
                                   "dataset": "jester", "resumed_at_step": None, "eval_video_top1": 0.5,
                                   "eval_videos": 15, "train_loss": 1.0}, checkpoint="c", best_checkpoint="b")
    assert (done.status, done.epochs, done.step, done.world_size, done.resumed_at_step) == ("finished", 2, 6, 2, None)
    assert (done.eval_video_top1, done.eval_videos, done.checkpoint, done.best_checkpoint) == (0.5, 15, "c", "b")
    assert math.isnan(done.eval_video_top5) and done.metrics["train_loss"] == 1.0
    stopped = RunResult.from_metrics({"status": "nonfinite", "message": "non-finite loss", "step": 4, "epoch": 1})
    assert (stopped.status, stopped.message, stopped.step, stopped.epochs) == ("nonfinite", "non-finite loss", 4, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.step = 7


def test_evaluation_result_reads_what_evaluate_checkpoint_returns():
    from training.evaluate import EvalResult
    from training.result import EvaluationResult

    r = EvalResult(videos=15, clips=40, video_top1=0.6, video_top5=1.0, clip_top1=0.5, clip_top5=0.9, loss=1.2,
                   incomplete_videos=1)
    d = {**r.metrics("eval_"), "split": "validation", "checkpoint": "c.pt", "predictions": "p.parquet"}
    ev = EvaluationResult.from_dict(json.loads(json.dumps(d)))  # as read back from eval_<split>.json
    assert (ev.split, ev.checkpoint, ev.videos, ev.clips, ev.incomplete_videos) == ("validation", "c.pt", 15, 40, 1)
    assert (ev.video_top1, ev.video_top5, ev.clip_top1, ev.clip_top5, ev.loss) == (0.6, 1.0, 0.5, 0.9, 1.2)
    assert ev.predictions == "p.parquet" and ev.metrics == d
    assert EvaluationResult.from_dict({k: v for k, v in d.items() if k != "predictions"}).predictions is None
    with pytest.raises(ValueError, match="eval_clips"):
        EvaluationResult.from_dict({k: v for k, v in d.items() if k != "eval_clips"})


@pytest.mark.ray
def test_init_ray_shortens_ray_trains_report_poll_unless_the_user_set_it(ray_local, monkeypatch):
    """Ray Train's controller takes each worker's report every health check (2 s by default); the loop reports
    twice per validating epoch, and on short epochs every second report waited for the next poll (~1.2 s).
    ``init_ray`` sets 0.5 s for the Ray it starts (its workers inherit the environment), a user's value wins."""
    from shards.raycluster import init_ray

    key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(key, raising=False)
    assert init_ray() is False  # Ray is already up in this process: nothing started, the default set anyway
    assert os.environ[key] == "0.5"
    monkeypatch.setenv(key, "3")
    init_ray()
    assert os.environ[key] == "3"


def test_retired_fault_field_in_an_old_config_is_dropped():
    d = TrainConfig.for_dataset("jester", "/s", "/o").to_dict()
    assert "fault" not in d
    assert TrainConfig.from_dict({**d, "fault": "raise@5"}) == TrainConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({**d, "faults": None})


@pytest.mark.slow
def test_mid_epoch_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_shards, tmp_path):
    straight = tmp_path / "straight"
    train_loop(tiny_cfg(tiny_shards, straight, epochs=2, checkpoint_every_steps=2, final_eval=False))
    broken = tmp_path / "broken"
    cfg = tiny_cfg(tiny_shards, broken, epochs=2, checkpoint_every_steps=2, final_eval=False)
    with pytest.raises(RuntimeError, match="injected fault at step 5"):
        train_loop(cfg, hooks=RaiseAt(5))
    # The last checkpoint is mid-epoch 2 (step 4 of 3 steps per epoch): resuming must continue from there.
    _, ckpt = load_checkpoint(broken / "checkpoints" / "last" / "checkpoint.pt")
    assert ckpt["extra"]["step"] == 4 and ckpt["extra"]["loader"]["batches_done"] == 1
    result = train_loop(cfg, hooks=RaiseAt(5))  # fired once already: the marker in the run directory says so
    assert result["resumed_at_step"] == 4 and result["step"] == 6
    a = _weights(straight / "checkpoints" / "last" / "checkpoint.pt")
    b = _weights(broken / "checkpoints" / "last" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_nonfinite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_shards, tmp_path):
    out = tmp_path / "nan"
    session = LocalSession(out / "checkpoints")
    result = train_loop(tiny_cfg(tiny_shards, out, epochs=3), session, hooks=NanAt(5))
    assert result["status"] == "nonfinite"
    assert "non-finite loss (nan) at step 5" in result["message"] and "last good checkpoint" in result["message"]
    assert json.loads((out / "metrics.json").read_text())["status"] == "nonfinite"
    _, ckpt = load_checkpoint(out / "checkpoints" / "last" / "checkpoint.pt")
    assert ckpt["extra"]["step"] == 3  # the end of epoch 1; the bad step 5 was never applied or saved
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert [r.get("status") for r in session.reports][-1] == "nonfinite"


@pytest.mark.slow
def test_finetuning_last_layer_leaves_frozen_layers_bit_identical(tiny_shards, tmp_path, capsys):
    # A "Kinetics" checkpoint of the same architecture with another class count.
    src = get_model("shufflenetv2_0.25x", num_classes=7)
    with torch.no_grad():  # non-trivial BN statistics, so a BN update would show
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    save_checkpoint(tmp_path / "k.pt", src)
    out = tmp_path / "ft"
    cfg = TrainConfig.finetune_preset("jester", tiny_shards, str(out), pretrained=str(tmp_path / "k.pt"),
                                      **{**TINY, "lr": 0.5}, epochs=2, final_eval=False)
    result = train_loop(cfg)
    assert result["status"] == "finished"
    after = _weights(out / "checkpoints" / "last" / "checkpoint.pt")
    head = head_keys("shufflenetv2_0.25x")
    before = src.state_dict()
    frozen = [k for k in after if k not in head]
    assert len(frozen) > 100
    # It says what it loaded, froze and replaced (issue 15).
    printed = capsys.readouterr().out
    frozen_params = [v for k, v in src.named_parameters() if k not in head]
    assert f"pretrained {tmp_path / 'k.pt'}: format ours (our checkpoint of shufflenetv2_0.25x (7 classes))" in printed
    assert "input convention RGB" in printed
    assert (f"froze {sum(v.numel() for v in frozen_params):,} parameters in {len(frozen_params)} tensors" in printed)
    assert "new head classifier.1.weight (3, " in printed and "classifier.1.bias (3,)" in printed
    for k in frozen:  # parameters and BN buffers (running stats, num_batches_tracked)
        assert torch.equal(before[k], after[k]), k
    assert after["classifier.1.weight"].shape[0] == 3
    model, _ = load_checkpoint(out / "checkpoints" / "last" / "checkpoint.pt")
    assert model.classifier[0].p == 0.9
    # The head did train (it started from a fresh init, so compare with the first step's checkpoint-free init).
    fresh = get_model("shufflenetv2_0.25x", num_classes=3, dropout=0.9)
    torch.manual_seed(cfg.seed)
    fresh = get_model("shufflenetv2_0.25x", num_classes=3, dropout=0.9)
    assert not torch.equal(fresh.state_dict()["classifier.1.weight"], after["classifier.1.weight"])


# -- distributed evaluation: exact once ---------------------------------------------------------------------


def _eval_rank(rank: int, world: int, shards: str, model_path: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = torch.load(model_path, weights_only=False)
        lcfg = LoaderConfig.for_dataset("jester", "eval", clip_len=4, size=32, batch_size=3)
        specs = shard_specs(shards, "validation", videos=True)
        loader = ClipLoader(ClipStream(specs, lcfg))
        norm = ClipNormalizer(normalization_for("jester"))
        r = evaluate(model, loader, norm, torch.device("cpu"), num_classes=3, expected=expected_clips(specs, lcfg),
                     with_predictions=True)
        if rank == 0:
            Path(out).write_text(json.dumps({**r.metrics(), "predictions": r.predictions}))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_eval_counts_every_window_exactly_once(tiny_shards, tmp_path):
    torch.manual_seed(0)
    model = get_model("shufflenetv2_0.25x", num_classes=3).eval()
    torch.save(model, tmp_path / "m.pt")
    results = {}
    for world in (1, 2):
        out = tmp_path / f"r{world}.json"
        torch.multiprocessing.spawn(_eval_rank, args=(world, tiny_shards, str(tmp_path / "m.pt"), free_port(),
                                                      str(out)), nprocs=world, join=True)
        results[world] = json.loads(out.read_text())
    lcfg = LoaderConfig.for_dataset("jester", "eval", clip_len=4, size=32, batch_size=3)
    expected = expected_clips(shard_specs(tiny_shards, "validation", videos=True), lcfg)
    assert sum(expected.values()) > len(expected)  # several windows per video, so windows get split over ranks
    for world, r in results.items():
        assert r["videos"] == len(expected) and r["clips"] == sum(expected.values()), world
        assert r["incomplete_videos"] == 0
        assert {p["key"]: p["clips"] for p in r["predictions"]} == expected
    one, two = ({p["key"]: p for p in results[w]["predictions"]} for w in (1, 2))
    for key in one:
        assert one[key]["pred"] == two[key]["pred"]
        assert one[key]["score"] == pytest.approx(two[key]["score"], abs=1e-5)
    for k in ("video_top1", "video_top5", "clip_top1", "loss"):
        assert results[1][k] == pytest.approx(results[2][k], abs=1e-5)


def test_eval_refuses_a_duplicated_window(tiny_shards):
    lcfg = LoaderConfig.for_dataset("jester", "val", clip_len=4, size=32, batch_size=4)
    specs = shard_specs(tiny_shards, "validation", videos=True)
    expected = expected_clips(specs, lcfg)
    one_less = {**expected, next(iter(expected)): 0}  # as if a video had been yielded once too often
    model = get_model("shufflenetv2_0.25x", num_classes=3)
    loader = ClipLoader(ClipStream(specs, lcfg))
    with pytest.raises(EvalCountError, match="more clips than"):
        evaluate(model, loader, ClipNormalizer(normalization_for("jester")), torch.device("cpu"), num_classes=3,
                 expected=one_less)


# -- Ray Train: 2 workers --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_ray_two_workers_survive_an_injected_failure_and_resume_after_stop(ray_local, tiny_shards, tmp_path):
    from tests.test_resume import restore_copies
    from training.ray_train import run_training

    copies = restore_copies()
    out = tmp_path / "ray-run"
    # 15 videos, 2 workers × 2 clips: 3 steps per epoch; step 5 is in the middle of epoch 2.
    cfg = tiny_cfg(tiny_shards, out, epochs=2)
    result = run_training(cfg, workers=2, max_failures=1, hooks=RaiseAt(5))
    assert result.status == "finished" and result.world_size == 2
    assert (out / ".fault-raise@5").exists()  # the fault did fire ...
    assert result.resumed_at_step == 3  # ... and the restarted workers went on from the epoch-1 checkpoint
    assert result.step == 6 and result.eval_incomplete_videos == 0
    ckpts = sorted(p.name for p in out.glob("checkpoint_*")) or sorted(p.name for p in out.iterdir()
                                                                         if (p / "checkpoint.pt").exists())
    assert Path(result.checkpoint).exists() and Path(result.checkpoint).parent.name.startswith("epoch0001")
    assert 1 <= len(ckpts) <= 2, ckpts  # latest and best only
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"

    # A finished run is not silently overwritten; --resume continues it for one more epoch.
    with pytest.raises(ValueError, match="already holds a run"):
        run_training(cfg.replace(epochs=3), workers=2)
    again = run_training(cfg.replace(epochs=3), workers=2, resume=True)
    assert again.resumed_at_step == 6 and again.step == 9 and again.epochs == 3
    assert math.isfinite(again.eval_video_top1)
    # Two restores (the failure restart, --resume) on 2 workers each: no private checkpoint copy left behind.
    assert restore_copies() - copies == set()
    # Resuming the finished run reports it (same figures and checkpoints) without training or evaluating.
    done = run_training(cfg.replace(epochs=3), workers=2, resume=True)
    assert (done.step, done.resumed_at_step, done.eval_video_top1) == (9, 6, again.eval_video_top1)
    assert done.checkpoint == again.checkpoint and done.best_checkpoint == again.best_checkpoint
