"""Honest resume and NaN-safe validation/evaluation (issues 11 and 15): the epoch checkpoint comes before
validation, a resumed run checks its config, non-finite validation stops the run, JSON is always valid,
unlabelled splits are predicted without accuracy, and finished runs are reported, not redone.

Uses the tiny Jester shards of ``tests/test_train.py`` (3 steps per epoch at batch 4 on one worker).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from shards import strict_json
from tests.helpers import free_port
from tests.test_train import TINY, _weights, tiny_cfg, tiny_shards  # noqa: F401  (session fixture)
from training.checkpoints import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.evaluate import NonFiniteEvalError, evaluate, evaluate_checkpoint, expected_clips
from training.loop import Hooks, LocalSession, train_loop
from training.models import get_model


def _strict_load(text: str):
    """json.loads that refuses NaN/Infinity (what any non-Python JSON reader does)."""
    def refuse(word):
        raise ValueError(f"invalid JSON constant {word}")
    return json.loads(text, parse_constant=refuse)


class PoisonValidation(Hooks):
    """Before validating epoch ``epoch``: set one BatchNorm's running variance to NaN (diverged statistics:
    the training loss stays finite, eval-mode logits do not)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validate(self, epoch, model, cfg, master):
        if epoch == self.epoch:
            bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))
            bn.running_var.fill_(math.nan)


class CrashInValidation(Hooks):
    """Raise once (a marker file in ``out`` remembers it) when validation of ``epoch`` starts; record the
    optimizer steps this process ran."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.steps: list[int] = []

    def on_step(self, step, cfg, master):
        self.steps.append(step)

    def on_validate(self, epoch, model, cfg, master):
        marker = Path(cfg.out) / f".crash-validate@{epoch}"
        if epoch == self.epoch and not marker.exists():
            marker.write_text("")
            raise RuntimeError(f"injected crash in validation of epoch {epoch}")


# -- valid JSON everywhere ------------------------------------------------------------------------------------


def test_strict_json_writes_null_for_every_non_finite_number(tmp_path):
    from training.observe import Observer

    doc = {"a": math.nan, "b": [math.inf, np.float32("nan"), np.float64(-math.inf)], "c": (1.5, np.int64(3)),
           "d": torch.tensor(float("nan")), "e": "NaN", "f": True}
    text = strict_json.dumps(doc, sort_keys=True)
    assert _strict_load(text) == {"a": None, "b": [None, None, None], "c": [1.5, 3], "d": None, "e": "NaN",
                                  "f": True}
    obs = Observer(str(tmp_path / "run"), enabled=True)
    obs.write_json("metrics.json", {"val_loss": float("nan"), "eval_video_top1": 0.5})
    obs.close()
    assert _strict_load((tmp_path / "run" / "metrics.json").read_text()) == {"val_loss": None, "eval_video_top1": 0.5}


# -- evaluation: NaN refused, unlabelled splits predicted -----------------------------------------------------


def _loader(shards, split, mode="val"):
    from training.data import ClipLoader, ClipStream, LoaderConfig, shard_specs

    lcfg = LoaderConfig.for_dataset("jester", mode, clip_len=8, size=32, batch_size=4)
    specs = shard_specs(shards, split, videos=True)
    return ClipLoader(ClipStream(specs, lcfg)), expected_clips(specs, lcfg)


def test_evaluation_refuses_nan_logits_with_a_clear_error(tiny_shards):  # noqa: F811
    from training.data import ClipNormalizer, normalization_for

    model = get_model("shufflenetv2_0.25x", num_classes=3)
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)).running_var.fill_(math.nan)
    loader, expected = _loader(tiny_shards, "validation")
    with pytest.raises(NonFiniteEvalError, match=r"non-finite \(NaN/inf\) logits for 15 of 15 clips"):
        evaluate(model, loader, ClipNormalizer(normalization_for("jester")), torch.device("cpu"), num_classes=3,
                 expected=expected)


def _checkpoint_for_eval(shards: str, path: Path, diverged: bool = False) -> None:
    """A checkpoint of an untrained tiny model, with the training config and class list eval needs
    (``diverged``: one BatchNorm's running variance NaN)."""
    from shards.manifest import read_dataset_info

    torch.manual_seed(0)
    model = get_model("shufflenetv2_0.25x", num_classes=3)
    if diverged:
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)).running_var.fill_(math.nan)
    cfg = TrainConfig.for_dataset("jester", shards, str(path.parent), **TINY)
    save_checkpoint(path, model, extra={"train_config": cfg.to_dict(), "normalization": None,
                                        "classes": list(read_dataset_info(shards)["classes"])})


def test_eval_on_an_unlabelled_split_writes_predictions_and_no_accuracy(tiny_shards, tmp_path, capsys):  # noqa: F811
    from pipeline.cli import main

    _checkpoint_for_eval(tiny_shards, tmp_path / "ckpt" / "checkpoint.pt")
    labels = pq.read_table(Path(tiny_shards) / "manifest" / "test" / "videos.parquet").to_pylist()
    ok = [v for v in labels if v["status"] == "ok"]
    assert ok and all(v["label_index"] == -1 for v in ok)  # Jester's test list has no labels
    r = evaluate_checkpoint(str(tmp_path / "ckpt" / "checkpoint.pt"), tiny_shards, out=str(tmp_path / "ev"),
                            split="test")
    assert r["eval_videos"] == len(ok) and r["eval_labelled_videos"] == 0
    assert r["eval_video_top1"] is None and r["eval_clip_top1"] is None and r["eval_loss"] is None
    preds = pq.read_table(tmp_path / "ev" / "predictions_test.parquet").to_pylist()
    assert len(preds) == len(ok) and {p["label"] for p in preds} == {-1} and all(p["pred_name"] for p in preds)
    saved = _strict_load((tmp_path / "ev" / "eval_test.json").read_text())
    assert saved["eval_video_top1"] is None and saved["eval_videos"] == len(ok)
    # The command: exit 0, says there is no accuracy instead of crashing or printing a number.
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt" / "checkpoint.pt"), "--shards", tiny_shards,
                 "--out", str(tmp_path / "ev2"), "--split", "test"]) == 0
    assert "no labels in this split: predictions only, no accuracy" in capsys.readouterr().out
    # A labelled split still gets its accuracy.
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt" / "checkpoint.pt"), "--shards", tiny_shards,
                 "--out", str(tmp_path / "ev3")]) == 0
    assert "validation: 15 videos" in capsys.readouterr().out
    assert 0 <= _strict_load((tmp_path / "ev3" / "eval_validation.json").read_text())["eval_video_top1"] <= 1


def test_eval_command_refuses_a_diverged_checkpoint_with_exit_3(tiny_shards, tmp_path, capsys):  # noqa: F811
    from pipeline.cli import main

    _checkpoint_for_eval(tiny_shards, tmp_path / "ckpt" / "checkpoint.pt", diverged=True)
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt" / "checkpoint.pt"), "--shards", tiny_shards,
                 "--out", str(tmp_path / "ev"), "--windows", "all"]) == 3
    err = capsys.readouterr().err
    assert "e3d eval: error: the model gave non-finite (NaN/inf) logits for 58 of 58 clips" in err  # every window
    assert not (tmp_path / "ev" / "eval_validation.json").exists()  # no NaN scores written anywhere


# -- non-finite validation stops the run ----------------------------------------------------------------------


@pytest.mark.slow
def test_nonfinite_validation_stops_the_run_and_is_never_best(tiny_shards, tmp_path):  # noqa: F811
    out = tmp_path / "nanval"
    session = LocalSession(out / "checkpoints")
    result = train_loop(tiny_cfg(tiny_shards, out, epochs=3), session, hooks=PoisonValidation(1))
    assert result["status"] == "nonfinite"
    assert "non-finite validation after epoch 2" in result["message"] and "NaN/inf" in result["message"]
    assert _strict_load((out / "metrics.json").read_text())["status"] == "nonfinite"
    assert not (out / "predictions_validation.parquet").exists()  # no final evaluation of a diverged model
    # The best checkpoint is epoch 1's (validated, finite); epoch 2's was written before validation only.
    _, best = load_checkpoint(out / "checkpoints" / "best" / "checkpoint.pt")
    assert best["extra"]["step"] == 3 and best["extra"]["validation_pending"] is None
    _, last = load_checkpoint(out / "checkpoints" / "last" / "checkpoint.pt")
    assert last["extra"]["step"] == 6 and last["extra"]["validation_pending"] == 1
    scores = [r["score"] for r in session.reports if "score" in r]
    assert all(math.isfinite(s) for s in scores) and session.best_score == max(scores)
    assert [r["kind"] for r in session.reports if r.get("epoch") == 1 and "kind" in r] == ["epoch-trained"]
    assert session.reports[-1]["status"] == "nonfinite"


# -- the epoch checkpoint comes before validation --------------------------------------------------------------


@pytest.mark.slow
def test_crash_during_validation_resumes_without_retraining_the_epoch(tiny_shards, tmp_path, capsys):  # noqa: F811
    straight = train_loop(tiny_cfg(tiny_shards, tmp_path / "straight", epochs=2))
    out = tmp_path / "crash"
    cfg = tiny_cfg(tiny_shards, out, epochs=2)
    first = CrashInValidation(epoch=0)
    with pytest.raises(RuntimeError, match="injected crash in validation of epoch 0"):
        train_loop(cfg, hooks=first)
    assert first.steps == [1, 2, 3]
    _, ckpt = load_checkpoint(out / "checkpoints" / "last" / "checkpoint.pt")
    assert ckpt["extra"]["validation_pending"] == 0 and ckpt["extra"]["step"] == 3
    capsys.readouterr()
    again = CrashInValidation(epoch=0)  # the marker says it fired: this time validation runs through
    result = train_loop(cfg, hooks=again)
    printed = capsys.readouterr().out
    assert f"resumed from {out / 'checkpoints' / 'last' / 'checkpoint.pt'}: step 3, next epoch 2 of 2; " \
           "validation of epoch 1 first" in printed
    assert "epoch 1/2 step 3" in printed  # the pending validation's epoch line
    assert again.steps == [4, 5, 6]  # epoch 1's steps were not redone
    assert result["resumed_at_step"] == 3 and result["step"] == 6
    # Bit-identical to the uninterrupted run: weights, validation figures, schedule, final evaluation.
    a = _weights(tmp_path / "straight" / "checkpoints" / "last" / "checkpoint.pt")
    b = _weights(out / "checkpoints" / "last" / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k in ("best_val_top1", "val_loss", "val_top1", "eval_video_top1", "eval_clip_top1"):
        assert result[k] == straight[k], k


# -- resume checks its config, applies overrides, changes world size ------------------------------------------


@pytest.mark.slow
def test_resume_refuses_meaning_changes_and_applies_an_overridden_lr(tiny_shards, tmp_path, capsys):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    base = tiny_cfg(tiny_shards, out, epochs=1, final_eval=False, schedule="constant")
    train_loop(base)
    with pytest.raises(ValueError, match=r"lr: 0\.01 → 0\.05; .*weight_decay: 0\.001 → 0\.0.*--override FIELD"):
        train_loop(base.replace(epochs=2, lr=0.05, weight_decay=0.0))
    with pytest.raises(ValueError, match="model: 'shufflenetv2_0.25x' → 'mobilenetv2_0.2x'"):
        train_loop(base.replace(model="mobilenetv2_0.2x"), overrides=("lr",))
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        train_loop(base.replace(epochs=2), overrides=("learning_rate",))
    capsys.readouterr()
    result = train_loop(base.replace(epochs=2, lr=0.05, loader_workers=1), overrides=("lr",))
    assert result["status"] == "finished" and result["resumed_at_step"] == 3 and result["step"] == 6
    assert "changed settings taken: epochs: 1 → 2; lr: 0.01 → 0.05; loader_workers: 0 → 1" in capsys.readouterr().out
    _, ckpt = load_checkpoint(out / "checkpoints" / "last" / "checkpoint.pt")
    assert [g["lr"] for g in ckpt["extra"]["members"][0]["optimizer"]["param_groups"]] == [0.05]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    lrs = {e.step: e.value for e in acc.Scalars("train/lr")}
    assert lrs[3] == pytest.approx(0.01) and [lrs[s] for s in (4, 5, 6)] == pytest.approx([0.05] * 3)
    assert TrainConfig.from_dict(ckpt["extra"]["train_config"]).lr == 0.05  # the next resume compares with 0.05


def _train_rank(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        cfg = TrainConfig.from_dict(cfg_dict)
        try:
            result = train_loop(cfg, LocalSession(Path(cfg.out) / "checkpoints"))
        except ValueError as exc:
            result = {"error": str(exc)}
        if rank == 0:
            Path(out).write_text(strict_json.dumps(result, default=str))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_resume_at_an_epoch_boundary_with_another_world_size(tiny_shards, tmp_path):  # noqa: F811
    from tests.helpers import RaiseAt

    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_shards, out, epochs=1, final_eval=False)
    train_loop(cfg)  # world size 1: 3 steps of 4 clips
    res = tmp_path / "r.json"
    torch.multiprocessing.spawn(_train_rank, args=(2, free_port(), cfg.replace(epochs=2).to_dict(), str(res)),
                                nprocs=2, join=True)
    result = json.loads(res.read_text())
    # Two ranks of 2 clips: the loader re-derived epoch 2's plan for the new world size (3 steps of 2 × 2).
    assert result.get("status") == "finished", result
    assert result["world_size"] == 2 and result["resumed_at_step"] == 3 and result["step"] == 6
    _, ckpt = load_checkpoint(out / "checkpoints" / "last" / "checkpoint.pt")
    assert ckpt["extra"]["loader"]["world_size"] == 2 and ckpt["extra"]["step"] == 6

    # A mid-epoch position saved by 1 rank cannot move to 2: refused with the reason, nothing trained.
    mid = tiny_cfg(tiny_shards, tmp_path / "mid", epochs=2, final_eval=False, checkpoint_every_steps=2)
    with pytest.raises(RuntimeError, match="injected fault at step 5"):
        train_loop(mid, hooks=RaiseAt(5))
    torch.multiprocessing.spawn(_train_rank, args=(2, free_port(), mid.to_dict(), str(res)), nprocs=2, join=True)
    error = json.loads(res.read_text())["error"]
    assert "cannot resume mid-epoch" in error and "world_size 1 → 2" in error


# -- --resume says what it does, refuses an empty directory, leaves finished runs alone ----------------------


@pytest.mark.slow
def test_resume_refuses_nothing_and_reports_a_finished_run_without_redoing_it(tiny_shards, tmp_path, capsys):  # noqa: F811
    from pipeline.cli import main
    from training.ray_train import run_training

    out = tmp_path / "run"
    args = ["train", "--dataset", "jester", "--shards", tiny_shards, "--out", str(out), "--model",
            "shufflenetv2_0.25x", "--epochs", "1", "--batch-size", "4", "--clip-len", "8", "--size", "32",
            "--loader-workers", "0", "--lr", "0.01", "--log-every", "1", "--no-final-eval"]
    assert main([*args, "--resume"]) == 2  # refused on the driver: nothing started
    assert "nothing to resume" in capsys.readouterr().err and not out.exists()

    cfg = tiny_cfg(tiny_shards, out, epochs=1, final_eval=False)
    train_loop(cfg)
    summary = (out / "metrics.json").read_bytes()
    events = sorted((out / "tensorboard").iterdir())
    capsys.readouterr()
    again = train_loop(cfg)  # the loop itself: restored at the end, metrics say finished
    assert "already finished (1 epochs, step 3); nothing to do" in capsys.readouterr().out
    assert again == json.loads(summary)
    r = run_training(cfg, resume=True)  # the driver: answered from metrics.json, Ray never started
    assert "already finished" in capsys.readouterr().out and (r.status, r.step, r.epochs) == ("finished", 3, 1)
    assert main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "already finished" in printed and "final evaluation: not evaluated (--no-final-eval)" in printed
    assert "nan" not in printed
    assert (out / "metrics.json").read_bytes() == summary and sorted((out / "tensorboard").iterdir()) == events
    # Asking for more (a final evaluation) is not "finished": the run resumes at its end and evaluates only.
    more = train_loop(cfg.replace(final_eval=True))
    assert more["step"] == 3 and more["resumed_at_step"] == 3 and more["eval_videos"] == 15


def test_train_summary_says_not_evaluated_instead_of_nan():
    from pipeline.logs import train_summary
    from training.result import RunResult

    r = RunResult.from_metrics({"status": "finished", "epochs": 2, "step": 6, "best_val_top1": 0.5},
                               checkpoint="c", best_checkpoint="b")
    text = train_summary("m", "ucf101", r, "/o/metrics.json", final_eval=False)
    assert "final evaluation: not evaluated (--no-final-eval)" in text and "top1 0.500" in text
    assert "nan" not in text.lower()
    text = train_summary("m", "ucf101", RunResult.from_metrics(
        {"status": "finished", "eval_video_top1": 0.25, "eval_video_top5": 1.0}, checkpoint="c", best_checkpoint=None),
        "/o/metrics.json")
    assert "video top1 0.250 top5 1.000" in text and "best validation: not evaluated" in text
    assert "nan" not in text.lower()


def restore_copies() -> set[str]:
    """The private checkpoint copies a Ray Train worker makes when it restores (see RaySession.restore)."""
    return {p.name for p in Path(tempfile.gettempdir()).glob("e3d-restore-*")}
