"""The ``e3d train`` / ``e3d eval`` commands end to end on tiny shards (Ray Train, 2 workers)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.test_train import tiny_shards  # noqa: F401  (session fixture)


@pytest.mark.slow
@pytest.mark.ray
def test_cli_train_then_distributed_eval(ray_local, tiny_shards, tmp_path, capsys, monkeypatch):  # noqa: F811
    # Run where a user would: next to the `shards/` folder, given as a relative path. Ray's workers start in a
    # folder of their own (relative paths must be resolved first) with this one first on their sys.path (the
    # output folder `shards/` must not shadow the package of that name).
    monkeypatch.chdir(Path(tiny_shards).parent)
    assert Path(tiny_shards).name == "shards"
    out = tmp_path / "run"
    args = ["train", "--dataset", "jester", "--shards", "shards", "--out", str(out), "--model",
            "shufflenetv2_0.25x", "--workers", "2", "--epochs", "1", "--batch-size", "4", "--clip-len", "8",
            "--size", "32", "--loader-workers", "0", "--lr", "0.01", "--no-final-eval"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 epochs, 3 steps" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["world_size"] == 2 and "eval_video_top1" not in metrics
    assert main(args) == 2  # the run exists: refused without --resume
    assert "already holds a run" in capsys.readouterr().err

    ckpt = next(out.glob("checkpoint_*/checkpoint.pt"), None) or next(out.glob("*/checkpoint.pt"))
    ev = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(ckpt), "--shards", "shards", "--out", str(ev), "--workers", "2",
                 "--batch-size", "3", "--windows", "all"]) == 0  # Jester's default is its middle window
    assert "validation: 15 videos" in capsys.readouterr().out
    result = json.loads((ev / "eval_validation.json").read_text())
    assert result["eval_videos"] == 15 and result["eval_incomplete_videos"] == 0
    assert result["eval_clips"] > 15  # every window of some videos
    preds = pq.read_table(ev / "predictions_validation.parquet").to_pylist()
    assert len(preds) == 15 and {"key", "label", "pred", "top5", "label_name", "pred_name"} <= preds[0].keys()


def _train_parser(command: str):
    from pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command]


def test_train_flags_are_generated_from_train_config():
    import dataclasses

    from pipeline.cli import _train_config, build_parser
    from training.config import SCHEDULES, TrainConfig

    parse = build_parser().parse_args
    base = ["--dataset", "jester", "--shards", "s", "--out", "o"]
    # No flag given: exactly the preset, whatever TrainConfig's defaults are.
    assert _train_config(parse(["train", *base])) == TrainConfig.for_dataset("jester", "s", "o")
    assert _train_config(parse(["finetune", "--shards", "s", "--out", "o", "--pretrained", "k.pt"])) == (
        TrainConfig.finetune_preset("ucf101", "s", "o", pretrained="k.pt"))
    # Every flag name that existed before the flags were generated still works, with its meaning.
    old = ["--model", "mobilenetv2_0.2x", "--model-arg", "width_mult=0.5", "--epochs", "3", "--batch-size", "8",
           "--lr", "0.5", "--weight-decay", "0", "--schedule", "multistep", "--milestones", "1,2", "--dropout", "0.1",
           "--clip-len", "4", "--size", "32", "--loader-workers", "1", "--seed", "2", "--train-split", "t",
           "--val-split", "v", "--normalization", "paper", "--checkpoint-every", "5", "--max-steps-per-epoch", "2",
           "--no-final-eval", "--profile", "3", "--pretrained", "k.pt", "--pretrained-format", "ours", "--gpu"]
    got = _train_config(parse(["train", *base, *old]))
    assert got == TrainConfig.for_dataset(
        "jester", "s", "o", model="mobilenetv2_0.2x", model_kwargs={"width_mult": 0.5}, epochs=3, batch_size=8, lr=0.5,
        weight_decay=0.0, schedule="multistep", milestones=(1, 2), dropout=0.1, clip_len=4, size=32, loader_workers=1,
        seed=2, train_split="t", val_split="v", normalization="paper", checkpoint_every_steps=5,
        max_steps_per_epoch=2, final_eval=False, profile_steps=3, pretrained="k.pt", pretrained_format="ours",
        use_gpu=True)
    # ... and so do fields that had no flag before (a new TrainConfig field gets one without CLI edits).
    new = _train_config(parse(["train", *base, "--crop-scales", "1,0.5", "--no-amp", "--val-every", "2"]))
    assert (new.crop_scales, new.amp, new.val_every) == ((1.0, 0.5), False, 2)
    # Choices come from the dataclass; help from its docstring, with TrainConfig's default.
    with pytest.raises(SystemExit):
        parse(["train", *base, "--schedule", "cyclic"])
    actions = {a.dest: a for a in _train_parser("train")._actions}
    assert tuple(actions["schedule"].choices) == SCHEDULES
    docs = TrainConfig.field_docs()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("dataset", "shards", "out", "model_kwargs", "finetune"):
            continue
        assert f.name in actions, f.name
        assert docs[f.name] in actions[f.name].help.replace("%%", "%"), f.name
    assert "(default: 0.1)" in actions["lr"].help and "SGD" in actions["lr"].help
