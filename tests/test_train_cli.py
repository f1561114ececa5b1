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
                 "--batch-size", "3"]) == 0
    assert "validation: 15 videos" in capsys.readouterr().out
    result = json.loads((ev / "eval_validation.json").read_text())
    assert result["eval_videos"] == 15 and result["eval_incomplete_videos"] == 0
    preds = pq.read_table(ev / "predictions_validation.parquet").to_pylist()
    assert len(preds) == 15 and {"key", "label", "pred", "top5", "label_name", "pred_name"} <= preds[0].keys()
